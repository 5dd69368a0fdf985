"""Pretrained generators by name, against a local HTTP server standing in for the authors' (the mirror variable).

The server on 127.0.0.1 serves the tiny CycleGAN-architecture fixture under the authors' paths, and a tar
holding it as CUT's tar does; per path it can drop the connection halfway once, cut every body short
under a longer Content-Length (ignoring Range, as a server without Range support), or answer 404.
"""

import functools
import io
import re
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from cyclegan_keras import convert, files, pretrained
from cyclegan_keras.cli import evaluate as evaluate_cli
from cyclegan_keras.cli import export as export_cli
from cyclegan_keras.cli import translate as translate_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PTH = (FIXTURES / "resnet_tiny.pth").read_bytes()
H2Z = "/cyclegan/pretrained_models/horse2zebra.pth"
CUT_TAR = "/CUT/pretrained_models.tar"
CUT_MEMBER = "pretrained_models/horse2zebra_cut_pretrained/latest_net_G.pth"


def tar_of(members):
    """A tar holding `{name: bytes}`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Server:
    """A threaded `http.server` on 127.0.0.1: `files` by path, `modes` per path, `requests` as (path, Range)."""

    def __init__(self, served):
        self.files, self.modes, self.requests = dict(served), {}, []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, path):
        return [given for asked, given in self.requests if asked == path]


class Handler(BaseHTTPRequestHandler):
    def __init__(self, server, *args, **kwargs):
        self.state = server
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        state = self.state
        state.requests.append((self.path, self.headers.get("Range")))
        body, mode = state.files.get(self.path), state.modes.get(self.path, "range")
        if body is None:
            self.send_error(404, "Not Found")
            return
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(asked.group(1)) if asked and mode != "truncate" else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        first_of_drop = mode == "drop_once" and len(state.gets(self.path)) == 1
        if mode == "truncate" or first_of_drop:
            payload = payload[: len(payload) // 2]  # then the connection closes (HTTP/1.0)
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def server():
    served = Server({H2Z: PTH, CUT_TAR: tar_of({"pretrained_models/README": b"six generators", CUT_MEMBER: PTH})})
    yield served
    served.stop()


@pytest.fixture
def mirror(server, monkeypatch, tmp_path):
    """The fixture server as the mirror, an empty cache in the test's folder; returns the server."""
    server.modes.clear()
    server.requests.clear()
    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, server.url)
    monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return server


@pytest.fixture(scope="module")
def offline_cache(tmp_path_factory):
    """A cache holding horse2zebra, fetched from a server that is stopped afterwards: `(cache, its requests)`."""
    cache = tmp_path_factory.mktemp("offline") / "cache"
    own = Server({H2Z: PTH})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(pretrained.MIRROR_ENV_VAR, own.url)
        pretrained.fetch("horse2zebra", cache_dir=cache, progress=False)
    own.stop()
    return cache, own


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def one_line(error):
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_download_convert_and_load_equal_the_converter(offline_cache, monkeypatch, rng):
    cache, server = offline_cache
    assert server.requests == [(H2Z, None)]  # one GET, no Range
    assert (cache / "downloads" / H2Z.lstrip("/")).read_bytes() == PTH
    assert (cache / "models" / "horse2zebra.keras").is_file()
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["horse2zebra.keras", "horse2zebra.pth"]
    monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(cache))
    images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    expected = np.asarray(convert.load_torch_generator(FIXTURES / "resnet_tiny.pth")(images))
    np.testing.assert_array_equal(np.asarray(pretrained.load("horse2zebra")(images)), expected)


def test_a_cached_name_touches_no_network(offline_cache, monkeypatch):
    cache, server = offline_cache
    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, server.url)  # stopped: nothing listens there any more
    with pytest.raises(pretrained.DownloadError, match="Connection refused"):
        pretrained.download(server.url + H2Z, cache / "elsewhere.pth", progress=False)
    assert pretrained.fetch("horse2zebra", cache_dir=cache) == cache / "models" / "horse2zebra.keras"
    assert pretrained.load("horse2zebra", cache_dir=cache).output_shape == (None, None, None, 3)
    assert len(server.requests) == 1


def test_a_dropped_connection_resumes_with_range(mirror, tmp_path, capsys):
    mirror.modes[H2Z] = "drop_once"
    target = tmp_path / "h2z.pth"
    assert pretrained.download(mirror.url + H2Z, target) == target
    assert mirror.gets(H2Z) == [None, f"bytes={len(PTH) // 2}-"]
    assert target.read_bytes() == PTH and not files.partial_path(target).exists()
    err = capsys.readouterr().err  # not a terminal: a line before and one after, no bar
    assert f"Downloading {mirror.url + H2Z} (59.9 KiB) to {target}" in err and "Downloaded 59.9 KiB in" in err


def test_a_truncated_body_is_never_cached_and_the_next_run_resumes(mirror, tmp_path):
    mirror.modes[H2Z] = "truncate"  # the first half under the whole file's Content-Length, Range ignored
    with pytest.raises(pretrained.DownloadError) as error:
        pretrained.fetch("horse2zebra", progress=False)
    download, _, model = pretrained.paths("horse2zebra")
    partial, half = files.partial_path(download), len(PTH) // 2
    assert one_line(error) == (
        f"{mirror.url + H2Z}: the server closed the connection after {half:,} of {len(PTH):,} bytes (2 tries); "
        f"the {half:,} bytes received are kept in {partial} and the next run starts again (this server ignores "
        "HTTP Range)"
    )
    assert mirror.gets(H2Z) == [None, f"bytes={half}-"]
    assert not download.exists() and not model.exists() and partial.stat().st_size == half
    mirror.modes[H2Z] = "range"  # the server mended: a later run asks for the rest only
    assert pretrained.download(mirror.url + H2Z, download, progress=False).read_bytes() == PTH
    assert mirror.gets(H2Z)[2:] == [f"bytes={half}-"]


def test_a_damaged_body_is_deleted_not_kept(mirror, tmp_path):
    damaged = bytearray(PTH)
    damaged[len(PTH) // 2] ^= 0xFF  # inside a tensor: the zip's CRC-32 finds it
    mirror.files["/damaged.pth"] = bytes(damaged)
    target = tmp_path / "damaged.pth"
    with pytest.raises(pretrained.DownloadError) as error:
        pretrained.download(mirror.url + "/damaged.pth", target, check=pretrained._check_pth, progress=False)
    assert re.fullmatch(
        rf"{mirror.url}/damaged\.pth: the downloaded file is damaged and was deleted \(resuming would keep the bad "
        r"bytes\): .* is truncated or corrupt: .*; run again to download it afresh",
        one_line(error),
    )
    assert list(tmp_path.iterdir()) == []


def test_a_404_is_one_line_naming_the_url_and_the_hand_download(mirror):
    with pytest.raises(pretrained.DownloadError) as error:
        pretrained.fetch("zebra2horse", progress=False)
    address = mirror.url + "/cyclegan/pretrained_models/zebra2horse.pth"
    download = pretrained.paths("zebra2horse")[0]
    assert one_line(error) == (
        f"{address}: HTTP 404 Not Found; download it by hand (mkdir -p {download.parent}; wget -c -O "
        f"{download} {address}, or curl -fL -C - -o {download} {address}) and run again, or set "
        "CYCLEGAN_KERAS_PRETRAINED_URL to a mirror"
    )
    assert not download.parent.exists() or list(download.parent.iterdir()) == []


def test_no_network_says_what_it_tried(mirror, monkeypatch):
    dead = closed_port_url()
    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, dead)
    with pytest.raises(pretrained.DownloadError) as error:
        pretrained.fetch("horse2zebra", progress=False)
    assert one_line(error).startswith(f"could not reach {dead + H2Z}: [Errno 111] Connection refused; download it by")
    assert f"wget -c -O {pretrained.paths('horse2zebra')[0]} {dead + H2Z}" in str(error.value)


def test_the_mirror_variable_replaces_the_server_and_the_cache_variables(monkeypatch, tmp_path):
    monkeypatch.delenv(pretrained.MIRROR_ENV_VAR, raising=False)
    assert (
        pretrained.url("horse2zebra") == "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/horse2zebra.pth"
    )
    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, "http://mirror:8000/")
    assert pretrained.url("horse2zebra") == "http://mirror:8000/cyclegan/pretrained_models/horse2zebra.pth"
    assert pretrained.url("pix2pix/sat2map") == "http://mirror:8000/pix2pix/models-pytorch/sat2map.pth"
    assert pretrained.url("fastcut/cat2dog") == "http://mirror:8000/CUT/pretrained_models.tar"
    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, "mirror:8000")
    with pytest.raises(ValueError, match="CYCLEGAN_KERAS_PRETRAINED_URL must be an http:// or https:// URL"):
        pretrained.url("horse2zebra")
    monkeypatch.delenv(pretrained.CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.default_cache_dir() == tmp_path / "xdg" / "cyclegan_keras"
    monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(tmp_path / "mine"))
    assert pretrained.paths("cut/horse2zebra") == (
        tmp_path / "mine/downloads/CUT/pretrained_models.tar",
        tmp_path / "mine/downloads/CUT/pretrained_models/horse2zebra_cut_pretrained/latest_net_G.pth",
        tmp_path / "mine/models/cut/horse2zebra.keras",
    )


def test_an_unknown_name_lists_the_names():
    methods = [entry.method for entry in pretrained.PRETRAINED.values()]
    assert [methods.count(m) for m in ("cyclegan", "pix2pix", "cut", "fastcut")] == [18, 6, 3, 3]
    with pytest.raises(ValueError) as error:
        pretrained.get("horse2zebr")
    text = one_line(error)
    assert text.startswith(
        "unknown pretrained model 'horse2zebr' (did you mean horse2zebra, cut/horse2zebra or fastcut/horse2zebra?); "
        "the names: apple2orange, orange2apple"
    )
    assert all(name in text for name in pretrained.names())
    assert pretrained.reverse("horse2zebra") == "zebra2horse" and pretrained.reverse("style_monet") is None
    assert pretrained.reverse("summer2winter_yosemite") == "winter2summer_yosemite"


def test_cut_generators_come_out_of_the_tar_once(mirror, rng):
    generator = pretrained.load("cut/horse2zebra", progress=False)
    images = rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    expected = np.asarray(convert.load_torch_generator(FIXTURES / "resnet_tiny.pth")(images))
    np.testing.assert_array_equal(np.asarray(generator(images)), expected)
    with pytest.raises(pretrained.PretrainedError) as error:
        pretrained.fetch("fastcut/horse2zebra", progress=False)  # the tar is cached: not downloaded again
    assert one_line(error) == (
        f"{pretrained.paths('cut/horse2zebra')[0]} holds no horse2zebra_fastcut_pretrained/latest_net_G.pth; its "
        f".pth files: {CUT_MEMBER}"
    )
    assert mirror.gets(CUT_TAR) == [None]


@pytest.mark.parametrize(
    "name, member, refusal",
    [
        ("../horse2zebra_cut_pretrained/latest_net_G.pth", None, "a name outside the archive"),
        ("/abs/horse2zebra_cut_pretrained/latest_net_G.pth", None, "a name outside the archive"),
        ("x/horse2zebra_cut_pretrained/latest_net_G.pth", tarfile.SYMTYPE, "a link or special file"),
        ("x/horse2zebra_cut_pretrained/latest_net_G.pth", "big", "more than a generator"),
        (
            "x/horse2zebra_cut_pretrained/latest_net_G.pth",
            "cut",
            r"a.tar is not a readable tar archive \(unexpected end of data\)",
        ),
        ("x/horse2zebra_cut_pretrained/latest_net_G.pth", "damaged", "is damaged: .* truncated or corrupt"),
    ],
)
def test_tar_members_are_taken_safely(name, member, refusal, tmp_path, monkeypatch):
    data = bytearray(PTH)
    if member == "damaged":
        data[len(PTH) // 2] ^= 0xFF
    archive = tar_of({name: bytes(data)})
    if member == tarfile.SYMTYPE:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        archive = buffer.getvalue()
    if member == "big":
        monkeypatch.setattr(pretrained, "MAX_MEMBER_BYTES", len(PTH) - 1)
    if member == "cut":
        archive = archive[: 512 + len(PTH) // 2]  # the header, then half the data
    (tmp_path / "a.tar").write_bytes(archive)
    target = tmp_path / "out" / "latest_net_G.pth"
    with pytest.raises(pretrained.PretrainedError, match=refusal):
        pretrained.extract_generator(tmp_path / "a.tar", "horse2zebra_cut_pretrained", target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.tar"] + (["out"] if target.parent.exists() else [])
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_a_second_process_waits_and_uses_the_first_one_s_file(mirror, tmp_path):
    target = tmp_path / "h2z.pth"
    done = []
    with files.exclusive(tmp_path, f".{target.name}.lock"):  # as the other process holds it while downloading
        waiter = threading.Thread(target=lambda: done.append(pretrained.download(mirror.url + H2Z, target)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and mirror.requests == []
        target.write_bytes(PTH)  # the other process's download, complete
    waiter.join(10)
    assert done == [target] and mirror.requests == []  # found it after the lock: no second download


def test_a_pix2pix_generator_converts_with_its_running_statistics(mirror):
    # The authors' pix2pix files are batch-norm U-Nets (issue 18): the tiny fixture stands in for one.
    mirror.files["/pix2pix/models-pytorch/sat2map.pth"] = (FIXTURES / "unet_batchnorm_tiny.pth").read_bytes()
    generator = pretrained.load("pix2pix/sat2map", progress=False)
    reference = np.load(FIXTURES / "torch_reference_batchnorm.npz")
    error = np.max(np.abs(np.asarray(generator(reference["input"])) - reference["running_statistics"]))
    assert error < 1e-5 and generator.get_layer("down1_norm").moving_variance.numpy().min() > 0.5


def test_a_file_that_does_not_convert_says_so_and_is_kept(mirror):
    # A state dict the converter has no generator for (a key renamed, the same length, CRCs rewritten).
    source = zipfile.ZipFile(io.BytesIO(PTH))
    renamed = io.BytesIO()
    with zipfile.ZipFile(renamed, "w") as archive:
        for info in source.infolist():
            raw = source.read(info)
            archive.writestr(info.filename, raw.replace(b"model.1.weight", b"model.1.wexght"))
    mirror.files["/pix2pix/models-pytorch/facades_label2photo.pth"] = renamed.getvalue()
    with pytest.raises(pretrained.PretrainedError) as error:
        pretrained.fetch("pix2pix/facades_label2photo", progress=False)
    download, _, model = pretrained.paths("pix2pix/facades_label2photo")
    assert re.fullmatch(
        rf"pix2pix/facades_label2photo \(pix2pix, unet_256, batch norm\): {re.escape(str(download))} does not "
        r"convert: Not a reference generator: .*\. The download is kept: delete it to download it again",
        one_line(error),
    )
    assert download.is_file() and not model.exists()


@pytest.fixture
def photo(tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), np.uint8)).save(tmp_path / "in/horse.png")
    return tmp_path / "in" / "horse.png"


def test_translate_pretrained_downloads_converts_and_translates(mirror, photo, tmp_path, capsys):
    code, output = run_cli(
        translate_cli.main, ["--pretrained", "horse2zebra", "--input", photo, "--out", tmp_path / "out"], capsys
    )
    assert code == 0, output
    assert "Wrote 1 image(s)" in output and (tmp_path / "out" / "horse.png").is_file()
    assert pretrained.paths("horse2zebra")[2].is_file() and mirror.gets(H2Z) == [None]


def test_evaluate_pretrained_works_offline_from_the_cache(offline_cache, photo, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(offline_cache[0]))
    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, offline_cache[1].url)  # stopped
    argv = ["--pretrained", "horse2zebra", "--input", photo.parent, "--truth", photo.parent, "--quiet"]
    code, output = run_cli(evaluate_cli.main, argv, capsys)
    assert code == 0, output
    assert re.search(r"PSNR \(dB\) +\d+\.\d\d", output)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--pretrained", "horse2zebr"],
            "error: argument --pretrained: unknown pretrained model 'horse2zebr' (did you",
        ),
        (
            ["--model", "@model", "--pretrained", "horse2zebra"],
            "error: argument --pretrained: not allowed with argument",
        ),
        (
            ["--pretrained", "horse2zebra", "--direction", "BtoA"],
            "error: argument --direction: --pretrained horse2zebra is one generator, which translates its own way; "
            "for the other way use --pretrained zebra2horse",
        ),
        ([], "error: one of the arguments --model --pretrained is required"),
    ],
)
def test_translate_refuses_bad_pretrained_flags_in_one_line(argv, expected, offline_cache, photo, tmp_path, capsys):
    argv = [offline_cache[0] / "models" / "horse2zebra.keras" if a == "@model" else a for a in argv]
    code, output = run_cli(translate_cli.main, [*argv, "--input", photo, "--out", tmp_path / "out"], capsys)
    assert code == 2 and output.strip().splitlines() == [output.strip()] and output.startswith(expected), output
    assert not (tmp_path / "out").exists()


def test_pretrained_list_prints_the_names(capsys):
    code, output = run_cli(translate_cli.main, ["--pretrained", "list"], capsys)
    lines = output.strip().splitlines()
    assert code == 0 and len(lines) == len(pretrained.PRETRAINED)
    assert re.fullmatch(r"horse2zebra +CycleGAN +horse -> zebra  \(resnet_9blocks, instance norm\)", lines[4])
    assert lines[-1].startswith("fastcut/cityscapes ")


@pytest.mark.slow  # the export verifies its SavedModel in a fresh process: 17 s here
def test_export_pretrained_writes_the_generator_and_a_verified_saved_model(mirror, tmp_path, capsys, rng):
    out = tmp_path / "out"
    argv = ["--pretrained", "horse2zebra", "--out", out, "--format", "saved_model", "--sample-size", "32"]
    code, output = run_cli(export_cli.main, argv, capsys)
    assert code == 0, output
    assert (out / "saved_model" / "1" / "saved_model.pb").is_file() and mirror.gets(H2Z) == [None]
    images = rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    expected = np.asarray(convert.load_torch_generator(FIXTURES / "resnet_tiny.pth")(images))
    np.testing.assert_array_equal(np.asarray(keras.models.load_model(out / "generator.keras")(images)), expected)
