"""The authors' published generators by name: downloaded once (resumed, checked), converted once, then cached.

    from cyclegan_keras import pretrained
    generator = pretrained.load("horse2zebra")  # a keras.Model: [-1, 1] images of any size in and out

The names are the authors' CycleGAN ones as their `scripts/download_cyclegan_model.sh` takes them
(`horse2zebra`), and `pix2pix/NAME`, `cut/NAME`, `fastcut/NAME` for the other methods' generators. The cache
is `$CYCLEGAN_KERAS_CACHE`, else `$XDG_CACHE_HOME/cyclegan_keras`, else `~/.cache/cyclegan_keras`:
`downloads/` holds the files as the server names them (`downloads/cyclegan/pretrained_models/horse2zebra.pth`),
`models/` the converted generators (`models/horse2zebra.keras`). A name in the cache is used without any
network. `$CYCLEGAN_KERAS_PRETRAINED_URL` (e.g. `http://mirror:8000`) replaces the authors' server in every
URL, the path unchanged. Downloading needs only the standard library; converting needs TensorFlow.
"""

import contextlib
import dataclasses
import difflib
import http.client
import os
import re
import shlex
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from cyclegan_keras import __version__, files

AUTHORS_SERVER = "http://efrosgans.eecs.berkeley.edu"
MIRROR_ENV_VAR = "CYCLEGAN_KERAS_PRETRAINED_URL"
CACHE_ENV_VAR = files.CACHE_ENV_VAR
TIMEOUT = 30.0  # seconds to connect, and for each read: urllib's one socket timeout covers both
TRIES = 4  # requests per download, each resuming the last (HTTP Range) while they make progress
MAX_MEMBER_BYTES = 2**31  # a published generator is about 45 MB; a larger tar member is not one
_CHUNK = 2**16

# What each method's published generators are, for listings and for the errors of a converter lacking one.
METHODS = {
    "cyclegan": ("CycleGAN", "resnet_9blocks, instance norm"),
    "pix2pix": ("pix2pix", "unet_256, batch norm"),
    "cut": ("CUT", "resnet_9blocks with anti-aliased down/upsampling"),
    "fastcut": ("FastCUT", "resnet_9blocks with anti-aliased down/upsampling"),
}


@dataclasses.dataclass(frozen=True)
class Generator:
    """One published generator.

    Attributes:
        method: a key of `METHODS`.
        path: the file's path on the authors' server (what a mirror serves under the same path).
        translates: what it does, e.g. `"horse -> zebra"`.
        member: the generator's folder inside the downloaded tar (`latest_net_G.pth` in it), or None.
    """

    method: str
    path: str
    translates: str
    member: str | None = None


def _cyclegan(name, translates):
    return name, Generator("cyclegan", f"/cyclegan/pretrained_models/{name}.pth", translates)


def _pix2pix(name, translates):
    return f"pix2pix/{name}", Generator("pix2pix", f"/pix2pix/models-pytorch/{name}.pth", translates)


def _cut(method, name, translates):
    # All six CUT and FastCUT generators come in one tar; each is DIR/latest_net_G.pth in it.
    return f"{method}/{name}", Generator(
        method, "/CUT/pretrained_models.tar", translates, f"{name}_{method}_pretrained"
    )


PRETRAINED = dict(
    [
        _cyclegan("apple2orange", "apple -> orange"),
        _cyclegan("orange2apple", "orange -> apple"),
        _cyclegan("summer2winter_yosemite", "Yosemite in summer -> in winter"),
        _cyclegan("winter2summer_yosemite", "Yosemite in winter -> in summer"),
        _cyclegan("horse2zebra", "horse -> zebra"),
        _cyclegan("zebra2horse", "zebra -> horse"),
        _cyclegan("monet2photo", "Monet painting -> photo"),
        _cyclegan("style_monet", "photo -> Monet painting"),
        _cyclegan("style_cezanne", "photo -> Cezanne painting"),
        _cyclegan("style_ukiyoe", "photo -> Ukiyo-e print"),
        _cyclegan("style_vangogh", "photo -> Van Gogh painting"),
        _cyclegan("sat2map", "satellite photo -> map"),
        _cyclegan("map2sat", "map -> satellite photo"),
        _cyclegan("cityscapes_photo2label", "street photo -> Cityscapes label map"),
        _cyclegan("cityscapes_label2photo", "Cityscapes label map -> street photo"),
        _cyclegan("facades_photo2label", "facade photo -> facade label map"),
        _cyclegan("facades_label2photo", "facade label map -> facade photo"),
        _cyclegan("iphone2dslr_flower", "iPhone flower photo -> DSLR (shallow depth of field)"),
        _pix2pix("facades_label2photo", "facade label map -> facade photo"),
        _pix2pix("sat2map", "satellite photo -> map"),
        _pix2pix("map2sat", "map -> satellite photo"),
        _pix2pix("edges2shoes", "edge map -> shoe photo"),
        _pix2pix("edges2handbags", "edge map -> handbag photo"),
        _pix2pix("day2night", "daytime scene -> night"),
        *(
            _cut(method, name, translates)
            for name, translates in (
                ("horse2zebra", "horse -> zebra"),
                ("cat2dog", "cat face -> dog face (AFHQ)"),
                ("cityscapes", "Cityscapes label map -> street photo"),
            )
            for method in ("cut", "fastcut")
        ),
    ]
)


class PretrainedError(RuntimeError):
    """A pretrained generator could not be downloaded or converted; the message is one line saying what to do."""


class DownloadError(PretrainedError):
    """The server could not be reached, refused, or sent a cut or damaged file."""


def names():
    """The names `fetch` and `load` take, in the registry's order."""
    return list(PRETRAINED)


def get(name):
    """The `Generator` of `name`; a ValueError lists the names (the closest first) for any other."""
    if name in PRETRAINED:
        return PRETRAINED[name]
    close = difflib.get_close_matches(str(name), PRETRAINED, n=3, cutoff=0.6)
    guess = (
        f" (did you mean {' or '.join([', '.join(close[:-1]), close[-1]] if close[:-1] else close)}?)" if close else ""
    )
    raise ValueError(
        f"unknown pretrained model {name!r}{guess}; the names: {', '.join(PRETRAINED)}. Received: name={name!r}"
    )


def listing():
    """The names, their method and what they translate: one name a line."""
    width = max(map(len, PRETRAINED))
    lines = []
    for name, entry in PRETRAINED.items():
        method, architecture = METHODS[entry.method]
        lines.append(f"{name:{width}}  {method:8}  {entry.translates}  ({architecture})")
    return "\n".join(lines)


def reverse(name):
    """The generator translating the other way (`zebra2horse` for `horse2zebra`), or None."""
    prefix, _, base = name.rpartition("/")
    match = re.fullmatch(r"(.+?)2(.+?)(_[a-z]+)?", base)
    if match is None:
        return None
    a, b, suffix = match.group(1), match.group(2), match.group(3) or ""
    other = f"{prefix}/{b}2{a}{suffix}" if prefix else f"{b}2{a}{suffix}"
    return other if other in PRETRAINED else None


default_cache_dir = files.cache_dir


def server():
    """The authors' server, or the mirror `$CYCLEGAN_KERAS_PRETRAINED_URL` names (without a trailing slash)."""
    mirror = os.environ.get(MIRROR_ENV_VAR, "").strip()
    if not mirror:
        return AUTHORS_SERVER
    if not re.match(r"https?://[^/\s]+", mirror):
        raise ValueError(f"{MIRROR_ENV_VAR} must be an http:// or https:// URL. Received: {mirror!r}")
    return mirror.rstrip("/")


def url(name):
    """Where `name` is downloaded from: `server()` followed by its path on the authors' server."""
    return server() + get(name).path


def paths(name, cache_dir=None):
    """`(download, generator .pth, converted .keras)` of `name` in the cache (the first two differ for a tar)."""
    entry = get(name)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    download = root / "downloads" / entry.path.lstrip("/")
    source = download if entry.member is None else download.with_suffix("") / entry.member / "latest_net_G.pth"
    return download, source, root / "models" / f"{name}.keras"


def fetch(name, *, cache_dir=None, progress=True):
    """The cached `.keras` generator of `name`; downloads and converts it on first use.

    A name already converted is returned without touching the network; a download already cached is
    converted without it. Several processes may fetch the same name at once: one downloads and converts,
    the others wait for it (a lock per file) and then use its files.

    Args:
        name: one of `names()`, e.g. `"horse2zebra"` or `"pix2pix/facades_label2photo"`.
        cache_dir: str or Path. Defaults to `default_cache_dir()`.
        progress: bool. A progress bar on stderr while downloading (when stderr is a terminal; otherwise
            one line before and one after), and a line when converting. Defaults to True.

    Returns:
        Path of the `.keras` file, loadable with `keras.models.load_model` (or `load(name)`).

    Raises:
        ValueError: an unknown name (the message lists the names), or a bad `$CYCLEGAN_KERAS_PRETRAINED_URL`.
        DownloadError: no connection, an HTTP error, or a cut or damaged download; one line with the URL
            and how to download the file by hand.
        PretrainedError: the file does not convert (e.g. a method this version's converter lacks).
        files.DiskFull: no room in the cache.
    """
    entry = get(name)
    download_path, source, model = paths(name, cache_dir)
    if model.is_file():
        return model
    with _lock(model, progress):
        if model.is_file():  # converted by another process while this one waited
            return model
        if not download_path.is_file():
            check = _check_tar if entry.member else _check_pth
            download(url(name), download_path, progress=progress, check=check)
        if entry.member and not source.is_file():
            extract_generator(download_path, entry.member, source)
        _convert(name, entry, source, model, progress)
    return model


def load(name, *, cache_dir=None, progress=True):
    """The generator `name` as a `keras.Model` (see `fetch`: downloaded and converted on first use)."""
    from cyclegan_keras import translation

    path = fetch(name, cache_dir=cache_dir, progress=progress)
    try:
        return translation.load_generator(path)
    except translation.ModelLoadError as error:
        raise PretrainedError(f"{name}: the cached {error}; delete it and run again to convert it again") from None


def _convert(name, entry, source, model, progress):
    """Converts `source` (a `.pth`) to the `.keras` file `model`, written atomically."""
    from cyclegan_keras import convert

    method, architecture = METHODS[entry.method]
    try:
        generator = convert.load_torch_generator(source)
    except convert.ConversionError as error:
        raise PretrainedError(
            f"{name} ({method}, {architecture}): {source} does not convert: {error}. The download is kept: "
            "delete it to download it again"
        ) from None
    except (convert.CorruptCheckpointError, convert.UnsafePickleError) as error:
        raise PretrainedError(f"{name}: {error} (delete {source} and run again to download it again)") from None
    files.replace_atomically(model, lambda partial: generator.save(partial))
    if progress:
        print(f"Converted {name} ({method}, {entry.translates}) to {model}", file=sys.stderr)


def by_hand(address, target):
    """How to download `address` to `target` without this package: the shell commands, one line."""
    folder, target, address = shlex.quote(str(Path(target).parent)), shlex.quote(str(target)), shlex.quote(address)
    return (
        f"download it by hand (mkdir -p {folder}; wget -c -O {target} {address}, or "
        f"curl -fL -C - -o {target} {address}) and run again, or set {MIRROR_ENV_VAR} to a mirror"
    )


def download(address, target, *, progress=True, check=None, timeout=TIMEOUT):
    """Downloads `address` to `target` once, resuming a cut transfer, and checks it before it takes the name.

    The bytes go to `files.partial_path(target)`. A cut connection keeps them there and the next request
    asks for the rest (`Range: bytes=N-`); a server that ignores Range sends the whole file again, which
    replaces them. Up to `TRIES` requests are made while each brings more bytes; a download still cut
    after them keeps its partial file for the next run. A complete file must have the size the server
    announced (Content-Length, or Content-Range's total) and pass `check(path)`; one that fails is deleted
    (its bytes are wrong, and resuming would keep them). Then it takes its name in one `os.replace`.
    While one process downloads `target`, others wait for it, then use its file.

    Args:
        check: callable raising `DownloadError` for a complete but damaged file, or None.
        timeout: seconds to connect, and for each read.

    Raises:
        DownloadError: one line naming `address`, what happened, and (no connection, HTTP errors)
            how to download it by hand.
    """
    target = Path(target)
    with _lock(target, progress):
        if target.is_file():  # another process finished it while this one waited
            return target
        partial = files.partial_path(target)
        bar = _Progress(progress, address, target)
        ignores_range = False
        for tries in range(1, TRIES + 1):
            before = _size(partial)
            done, total, ignored, broken = _request(address, partial, timeout, bar, target)
            ignores_range = ignores_range or ignored
            if broken is None and total in (None, done):
                break
            if total is not None and done > total:
                partial.unlink(missing_ok=True)
                raise DownloadError(
                    f"{address}: received {done:,} bytes where the server announced {total:,}; the file was "
                    "deleted, run again to download it afresh"
                )
            if _size(partial) <= before:
                break
        if broken is not None or total not in (None, done):
            bar.end()
            problem = broken or f"the server closed the connection after {done:,} of {total:,} bytes"
            then = "starts again (this server ignores HTTP Range)" if ignores_range else "resumes from there"
            raise DownloadError(
                f"{address}: {problem} ({tries} {'try' if tries == 1 else 'tries'}); the {_size(partial):,} bytes "
                f"received are kept in {partial} and the next run {then}"
            )
        bar.end(done)
        if check is not None:
            try:
                check(partial)
            except DownloadError as error:
                partial.unlink(missing_ok=True)
                raise DownloadError(
                    f"{address}: the downloaded file is damaged and was deleted (resuming would keep the bad "
                    f"bytes): {error}; run again to download it afresh"
                ) from None
        os.replace(partial, target)
    return target


def _request(address, partial, timeout, bar, target, resume=True):
    """One GET appending to `partial` from its size.

    Returns:
        `(bytes in partial, total announced or None, whether the server ignored Range, why the body broke or None)`.
    """
    start = _size(partial) if resume else 0
    headers = {"User-Agent": f"cyclegan_keras/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(address, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # asked past the end: complete already, or the server's file changed
            if _range_total(error.headers.get("Content-Range")) == start:
                return start, start, False, None
            return _request(address, partial, timeout, bar, target, resume=False)
        raise DownloadError(f"{address}: HTTP {error.code} {_one_line(error.reason)}; {by_hand(address, target)}")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        held = f" ({start:,} bytes received before are kept in {partial})" if start else ""
        reason = _one_line(getattr(error, "reason", error))
        raise DownloadError(f"could not reach {address}: {reason}{held}; {by_hand(address, target)}") from None
    with response:
        total = _announced(response.headers.get("Content-Length"))
        if response.status == 206:
            first, total = _content_range(address, response.headers.get("Content-Range"))
            if first != start:
                response.close()
                return _request(address, partial, timeout, bar, target, resume=False)
        ignored = bool(start) and response.status != 206
        if ignored:
            start = 0  # the whole file again: a server without Range support restarts it cleanly
        done, broken = start, None
        bar.begin(start, total)
        with open(partial, "ab" if start else "wb") as out:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as error:
                    broken = f"the connection broke after {done:,} bytes ({_one_line(error)})"
                    break
                if not chunk:
                    break
                _write(out, chunk, partial, total)
                done += len(chunk)
                bar.update(done)
    return done, total, ignored, broken


def _write(out, chunk, partial, total):
    try:
        out.write(chunk)
    except OSError as error:
        full = files.disk_full(error, partial)
        if full is None:
            raise
        out.close()
        partial.unlink(missing_ok=True)
        raise files.DiskFull(partial, total, at_least=total is None) from None


def _size(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _announced(value):
    return int(value) if value is not None and value.strip().isdigit() else None


def _content_range(address, value):
    """`(first byte, total or None)` of a Content-Range `bytes 100-199/1000`."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if match is None:
        raise DownloadError(f"{address}: the server answered a range request with Content-Range {value!r}")
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


def _range_total(value):
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", value or "")
    return int(match.group(1)) if match else None


def _one_line(value):
    return " ".join(str(value).split())


def _check_pth(path):
    """The safe reader's structural checks (byte counts, tensor views, CRC-32s): DownloadError if they fail."""
    from cyclegan_keras import pth

    try:
        pth.read_state_dict(path)
    except (pth.CorruptCheckpointError, pth.UnsafePickleError, pth.ConversionError) as error:
        raise DownloadError(_one_line(error)) from None


def _check_tar(path):
    """Every header of the tar is read: a cut or damaged archive raises DownloadError."""
    try:
        with tarfile.open(path, "r:*") as archive:
            archive.getmembers()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DownloadError(f"{path} is not a readable tar archive ({_one_line(error)})") from None


def extract_generator(archive_path, folder, target):
    """Streams `FOLDER/latest_net_G.pth` of a tar (at any depth in it) to `target`, checked, atomically.

    Only a regular file under a safe name is taken (no absolute path, no `..`, no link), of at most
    `MAX_MEMBER_BYTES`; its bytes must be as many as its header says and pass the safe reader's checks.
    Nothing else of the archive is written anywhere.

    Raises:
        PretrainedError: the archive holds no such member, or it fails those checks.
    """
    wanted = (folder, "latest_net_G.pth")
    try:
        archive = tarfile.open(archive_path, "r:*")
        members = archive.getmembers()
    except (tarfile.TarError, EOFError) as error:
        raise PretrainedError(f"{archive_path} is not a readable tar archive ({_one_line(error)})") from None
    with archive:
        found = [m for m in members if PurePosixPath(m.name).parts[-2:] == wanted]
        if not found:
            held = [m.name for m in members if m.name.endswith(".pth")]
            raise PretrainedError(
                f"{archive_path} holds no {'/'.join(wanted)}; its .pth files: {', '.join(held[:12]) or 'none'}"
            )
        member = found[0]
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or ".." in parts or not member.isreg():
            kind = "a link or special file" if not member.isreg() else "a name outside the archive"
            raise PretrainedError(f"{archive_path}: refusing member {member.name!r}: {kind}")
        if member.size > MAX_MEMBER_BYTES:
            raise PretrainedError(
                f"{archive_path}: member {member.name} holds {member.size:,} bytes, more than a generator "
                f"({MAX_MEMBER_BYTES:,} at most)"
            )
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(partial):
            written = 0
            with archive.extractfile(member) as source, open(partial, "wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
            if written != member.size:
                raise PretrainedError(f"{archive_path}: member {member.name} ends after {written:,} of {member.size:,}")
            try:
                _check_pth(partial)
            except DownloadError as error:
                raise PretrainedError(f"{archive_path}: member {member.name} is damaged: {error}") from None

        try:
            files.replace_atomically(target, write, size=member.size)
        except (tarfile.TarError, EOFError) as error:
            raise PretrainedError(f"{archive_path}: member {member.name} cannot be read ({_one_line(error)})") from None
    return target


def _lock(path, progress):
    """Holds `path`'s lock (`.NAME.lock` beside it), waiting while another process holds it."""
    stack = contextlib.ExitStack()
    announced = False
    while True:
        try:
            stack.enter_context(files.exclusive(path.parent, f".{path.name}.lock"))
            return stack
        except files.FolderInUse as error:
            if progress and not announced:
                print(f"Waiting for {files.describe(error.holder)}, which is writing {path}", file=sys.stderr)
                announced = True
            time.sleep(0.2)


class _Progress:
    """A one-line bar on stderr while it is a terminal; elsewhere one line before and one after (no escapes in logs)."""

    def __init__(self, enabled, address, target):
        self.enabled, self.tty = enabled, enabled and sys.stderr.isatty()
        self.address, self.target, self.name = address, target, target.name
        self.total = self.first = None
        self.began = self.drawn = 0.0

    def begin(self, start, total):
        if not self.enabled:
            return
        if self.first is None:
            self.first, self.began = start, time.monotonic()
            size = f" ({files.format_bytes(total)})" if total else ""
            resumed = f", resuming after {files.format_bytes(start)}" if start else ""
            print(f"Downloading {self.address}{size} to {self.target}{resumed}", file=sys.stderr)
        self.total = total

    def update(self, done, force=False):
        now = time.monotonic()
        if not self.tty or (not force and now - self.drawn < 0.1):
            return
        self.drawn = now
        rate = (done - (self.first or 0)) / max(now - self.began, 1e-6)
        if self.total:
            filled = int(30 * done / self.total)
            line = f"{self.name} [{'=' * filled}{' ' * (30 - filled)}] {100 * done / self.total:5.1f}% of "
            line += files.format_bytes(self.total)
        else:
            line = f"{self.name} {files.format_bytes(done)}"
        sys.stderr.write(f"\r{line}  {files.format_bytes(rate)}/s".ljust(80))
        sys.stderr.flush()

    def end(self, done=None):
        if not self.enabled or self.first is None:
            return
        if self.tty:
            if done is not None:
                self.update(done, force=True)
            sys.stderr.write("\n")
        if done is not None:
            seconds = time.monotonic() - self.began
            print(f"Downloaded {files.format_bytes(done - self.first)} in {seconds:.1f} s", file=sys.stderr)
