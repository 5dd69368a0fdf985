"""Writing files safely: atomic replacement, one error for a full disk, folder locks, and a
manifest of the files a tool wrote, so that a rerun replaces those and nothing else. No TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

# What the OS, h5py and TensorFlow (ResourceExhaustedError) say when a write finds no room.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")


class DiskFull(OSError):
    """No space was left while writing `path`; what had been written of it is removed.

    Attributes:
        needed: bytes it needs (an estimate), or None when unknown.
        at_least: whether `needed` is only a lower bound (what was written before the disk filled).
        after: what running the same command again does.
    """

    def __init__(self, path, needed=None, at_least=False, after="run the same command again"):
        self.path, self.needed, self.at_least, self.after = Path(path), needed, at_least, after
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def __str__(self):
        if self.needed:
            needs = f"it needs {'at least ' if self.at_least else ''}{_size(self.needed)}"
        else:
            needs = "its size is not known"
        return (
            f"no space left on the device writing {self.path} ({needs}, {_size(_free(self.path))} free; "
            f"nothing partial is left); free some space and {self.after}"
        )

    def rerun(self, after):
        """The same error, saying what a rerun does."""
        return DiskFull(self.path, self.needed, self.at_least, after)


def format_bytes(count):
    """`count` bytes as `"4.0 GiB"`, `"512.0 MiB"` or `"900 bytes"`."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def _size(n):
    return f"{n:,} bytes ({format_bytes(n)})" if n >= 2**10 else f"{n:,} bytes"


def _free(path):
    for folder in (Path(path), *Path(os.path.abspath(path)).parents):
        if folder.is_dir():
            return shutil.disk_usage(folder).free
    return 0


def disk_full(error: BaseException, path=None) -> DiskFull | None:
    """`error` as a `DiskFull` (naming its path, else `path`) if it or its cause is a full disk or quota; else None."""
    cause = error
    while cause is not None:
        if isinstance(cause, DiskFull):
            return cause
        if (isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS) or any(m in str(cause) for m in _FULL_MESSAGES):
            return DiskFull(getattr(error, "filename", None) or path or "a file")
        cause = cause.__cause__ or cause.__context__
    return None


def _bytes_in(path):
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size if path.exists() else 0


def _remove(path):
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def removed_on_error(target, partial, size=None):
    """Removes `partial` (a file or folder) if the block raises; a full disk becomes `DiskFull(target)`.

    Args:
        size: bytes the complete write needs, if known beforehand; else what `partial` reached.
    """
    try:
        yield partial
    except BaseException as error:
        written = _bytes_in(partial)
        _remove(partial)
        if disk_full(error) is None:
            raise
        needed = max(size or 0, written) or None
        raise DiskFull(target, needed, at_least=size is None) from None


def partial_path(path: str | os.PathLike) -> Path:
    """Where `replace_atomically` writes `path` first: hidden, the same suffix."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial{path.suffix}")


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], object], size=None) -> Path:
    """Writes `path` by `write(partial_path(path))` and one `os.replace`: a kill leaves the old or the new file.

    Any error removes the partial file; a full disk is raised as `DiskFull` (see `removed_on_error`).
    """
    path = Path(path)
    partial = partial_path(path)
    with removed_on_error(path, partial, size):
        write(partial)
        os.replace(partial, path)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`replace_atomically` of a text file (UTF-8)."""
    return write_bytes(path, text.encode())


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """`replace_atomically` of a binary file."""
    return replace_atomically(path, lambda partial: partial.write_bytes(data), size=len(data))


def append_text(path: str | os.PathLike, text: str) -> Path:
    """Appends `text` to `path`; if that fails, the file is cut back to what it held before."""
    path = Path(path)
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException as error:
            os.ftruncate(fd, start)
            if disk_full(error) is None:
                raise
            raise DiskFull(path, len(data)) from None
    finally:
        os.close(fd)
    return path


def remove_partials(folder: str | os.PathLike) -> list[Path]:
    """Deletes the partial files killed writers left in `folder` (not recursive, files only); hold its lock."""
    removed = []
    for path in Path(folder).glob(".*.partial*"):
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock. `holder`: its pid, host and start time."""

    def __init__(self, folder, holder):
        self.folder, self.holder = Path(folder), holder
        super().__init__(f"{folder} is in use by {describe(holder)}; wait for it to end or use another folder")


def describe(holder):
    """`pid 123 on host h since 2025-01-02 03:04:05` from a lock file's record."""
    if not holder:
        return "another process (its lock file is still empty)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


@dataclasses.dataclass(frozen=True)
class Lock:
    """A held `exclusive` lock.

    Attributes:
        stale: the record of a previous holder that ended without releasing it, or None.
        unsupported: why the file system could not lock (then nothing is held), or None.
    """

    path: Path
    stale: dict | None = None
    unsupported: str | None = None


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, name: str = ".lock"):
    """Holds `fcntl.flock` on `FOLDER/name` (holding pid, host and time) so one process writes `folder`.

    The kernel releases a dead holder's flock: its record becomes `Lock.stale`. Where the file
    system cannot lock (e.g. NFS mounted `nolock`), nothing is held and `Lock.unsupported` says why.

    Raises:
        FolderInUse: a live process holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd, held = None, False
    try:
        while not held:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FolderInUse(folder, _read_holder(fd, wait=True)) from None
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                os.close(fd)
                fd = None
                yield Lock(path, unsupported=f"{folder} cannot be locked ({error.strerror})")
                return
            # A holder that just finished removed the file we opened: then lock the new one.
            try:
                held = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                held = False
            if not held:
                os.close(fd)
                fd = None
        stale = _read_holder(fd) or None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield Lock(path, stale=stale)
    finally:
        if held:
            path.unlink(missing_ok=True)  # while still held, so nobody locks the removed file
        if fd is not None:
            os.close(fd)


def _read_holder(fd, wait=False):
    """The record in a lock file; `wait` gives its holder a moment to write it."""
    for _ in range(20 if wait else 1):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            try:
                return json.loads(text)
            except ValueError:
                return {"pid": "?", "host": "?", "since": f"? (lock file holds {text[:80]!r})"}
        if wait:
            time.sleep(0.05)
    return {}


class ForeignFile(FileExistsError):
    """An output name is taken by a file that the tool did not write (or that was changed since)."""

    def __init__(self, path):
        self.path = Path(path)
        super().__init__(
            f"{path} already exists and was not written by cyclegan_keras (or was changed since); "
            "move it away or choose another output"
        )


class Manifest:
    """`FOLDER/.cyclegan_keras_manifest.json`: the `fingerprint` of each file the package wrote there.

    A name is ours to replace when absent, unchanged since, or `pending` (a run that checked it
    stopped before recording it).
    """

    NAME = ".cyclegan_keras_manifest.json"
    PENDING = "pending"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.entries = {}
        if self.path.is_file():
            try:
                self.entries = dict(json.loads(self.path.read_text()).get("files", {}))
            except (ValueError, AttributeError):
                self.entries = {}

    def check(self, names: Iterable[str]) -> None:
        """Raises `ForeignFile` for the first of `names` that exists and is not ours to replace."""
        for name in names:
            path = self.folder / name
            if not (path.exists() or path.is_symlink()):
                continue
            recorded = self.entries.get(name)
            if recorded != self.PENDING and (recorded is None or recorded != fingerprint(path)):
                raise ForeignFile(path)

    def begin(self, names: Iterable[str]) -> None:
        """Records `names` as about to be written (before writing any)."""
        self.entries.update({name: self.PENDING for name in names})
        self._save()

    def finish(self, names: Iterable[str]) -> None:
        """Records the fingerprints of `names` as written now (those absent are dropped)."""
        for name in names:
            path = self.folder / name
            if path.exists():
                self.entries[name] = fingerprint(path)
            else:
                self.entries.pop(name, None)
        self._save()

    def write_text(self, name: str, text: str) -> Path:
        """Writes `FOLDER/name` atomically (the folder created if needed) and records it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = write_text(self.folder / name, text)
        self.finish([name])
        return path

    def _save(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps({"files": self.entries}, indent=0, sort_keys=True) + "\n")


def fingerprint(path: str | os.PathLike) -> str:
    """A digest of the size and modification time of `path`, or of every file under it."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.lstat()
        name = file.relative_to(path) if file != path else ""
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def existing_ancestor(path):
    """`path` itself if it exists, else its nearest existing parent (absolute)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


CACHE_ENV_VAR = "CYCLEGAN_KERAS_CACHE"


def cache_dir() -> Path:
    """The package's cache (pretrained models, FID weights): `$CYCLEGAN_KERAS_CACHE`, else
    `$XDG_CACHE_HOME/cyclegan_keras`, else `~/.cache/cyclegan_keras`."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "cyclegan_keras"
