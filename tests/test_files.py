"""One writer per folder, a full disk as one line with nothing partial left, and no user file replaced.

The full-disk tests run twice where they can: on a real small file system
(a tmpfs, which needs root to mount; skipped with the reason otherwise),
filled up just before the write, and with ENOSPC injected into the writer.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY_TRAIN_FLAGS, run_cli, run_steps_eagerly, tiny_cyclegan
from PIL import Image

from cyclegan_keras import callbacks as cb
from cyclegan_keras import data, export, files, training
from cyclegan_keras.cli import evaluate as evaluate_cli
from cyclegan_keras.cli import export as export_cli
from cyclegan_keras.cli import train as train_cli
from cyclegan_keras.cli import translate as translate_cli
from cyclegan_keras.model import CycleGAN

# train.py's resnet_6blocks with one residual block in these runs (see conftest.one_residual_block).
pytestmark = pytest.mark.usefixtures("one_residual_block")

ROOT = Path(__file__).resolve().parent.parent
NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run(module, argv, capsys):
    return run_cli(module.main, argv, capsys)


def error_lines(output):
    return [line for line in output.splitlines() if line.startswith("error:")]


def partials(folder):
    return [str(p) for p in Path(folder).rglob(".*partial*")]


def tree(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# -- The writer ----------------------------------------------------------------------


def test_a_write_that_fills_the_disk_leaves_the_old_file_and_no_partial(tmp_path):
    path = files.write_text(tmp_path / "state.json", "old\n")

    def half_then_full(partial):
        partial.write_bytes(b"x" * 5000)
        raise NO_SPACE

    with pytest.raises(files.DiskFull) as caught:
        files.replace_atomically(path, half_then_full)
    assert path.read_text() == "old\n" and partials(tmp_path) == []
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "at least 5,000 bytes" in message
    assert "run the same command again" in message
    # TensorFlow says it in a message (ResourceExhaustedError), h5py too: the same error.
    with pytest.raises(files.DiskFull, match="it needs 1,234 bytes"):
        files.replace_atomically(path, lambda p: _raise(RuntimeError(f"{p}; No space left on device")), size=1234)
    with pytest.raises(ValueError, match="not a disk error"):  # other errors pass through, partial removed
        files.replace_atomically(path, lambda p: (p.write_text("x"), _raise(ValueError("not a disk error"))))
    assert partials(tmp_path) == [] and path.read_text() == "old\n"


def _raise(error):
    raise error


def test_an_append_that_fills_the_disk_is_cut_back(tmp_path, monkeypatch):
    log = files.append_text(tmp_path / "log.csv", "epoch,loss\r\n0,1.5\r\n")

    class FillingOs:  # os for files.py only: the third byte written finds the disk full
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def write(fd, data):
            if len(data) > 2:
                return os.write(fd, bytes(data[:2]))
            raise NO_SPACE

    monkeypatch.setattr(files, "os", FillingOs())
    with pytest.raises(files.DiskFull, match="it needs 8 bytes"):
        files.append_text(log, "1,1.25\r\n")
    monkeypatch.undo()
    assert log.read_bytes() == b"epoch,loss\r\n0,1.5\r\n"


# -- One writer per folder ------------------------------------------------------------


def test_a_held_folder_refuses_a_second_writer_and_a_dead_holder_is_taken_over(tmp_path):
    with files.exclusive(tmp_path / "w") as lock:
        assert lock.stale is None and lock.unsupported is None
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(files.FolderInUse) as caught:  # flock: a second open file conflicts even in-process
            with files.exclusive(tmp_path / "w"):
                pass
        assert f"pid {os.getpid()} on host {socket.gethostname()} since {record['since']}" in str(caught.value)
    assert not lock.path.exists()  # released: removed

    # A holder killed with SIGKILL: the kernel drops its flock, its record stays.
    script = (  # files.py imports no TensorFlow: this starts in a moment
        "import sys, time; from cyclegan_keras import files; "
        "lock = files.exclusive(sys.argv[1]); lock.__enter__(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "w")], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(files.FolderInUse, match=f"pid {holder.pid} "):
        with files.exclusive(tmp_path / "w"):
            pass
    holder.kill()
    holder.wait()
    with files.exclusive(tmp_path / "w") as lock:
        assert lock.stale["pid"] == holder.pid


@pytest.fixture
def dataroot(tmp_path):
    """A reference-layout folder of synthetic PNGs, 4 images per domain."""
    root = tmp_path / "dataset"
    for d in "AB":
        (root / f"train{d}").mkdir(parents=True)
        for i, image in enumerate(data.synthetic_images(d, 4, 40, seed=0)):
            Image.fromarray(image).save(root / f"train{d}" / f"{i}.png")
    return root


def train_flags(dataroot, workdir):
    return [
        *("--dataroot", dataroot, "--workdir", workdir, "--n-epochs", 1, "--n-epochs-decay", 0),
        *("--checkpoint-every", 2, "--snapshot-every-epochs", 0),
        *TINY_TRAIN_FLAGS,
    ]


def test_a_second_train_on_a_held_workdir_exits_2_and_writes_nothing(tmp_path, dataroot, capsys):
    workdir = tmp_path / "run"
    with files.exclusive(workdir):
        code, output = run(train_cli, train_flags(dataroot, workdir), capsys)
        assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # no config.json, no log.csv
    assert code == 2, output
    (line,) = error_lines(output)
    assert line.startswith(f"error: argument --workdir: {workdir} is in use by pid {os.getpid()} on host ")


def test_a_second_translate_or_export_into_a_busy_out_exits_2(tmp_path, model_file, capsys, rng):
    # Two exports publishing into one OUT would mix their files (one's report, the other's model).
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    for module, argv, lock in (
        (translate_cli, ["--input", tmp_path / "a.png"], out / ".cyclegan_keras.lock"),
        (export_cli, ["--format", "saved_model", "--sample-size", 16], out / ".out.lock"),
    ):
        with files.exclusive(lock.parent, lock.name):
            code, output = run(module, ["--model", model_file, "--out", out, *argv], capsys)
            assert sorted(p.name for p in out.iterdir()) == [lock.name]
        assert code == 2, output
        (line,) = error_lines(output)
        assert line.startswith(f"error: argument --out: {out} is in use by pid {os.getpid()} on host "), line


def test_taking_over_from_a_killed_run_clears_its_partial_files(tmp_path, capsys):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / ".lock").write_text(json.dumps({"pid": 4321, "host": "gone", "since": "yesterday"}))
    left = [files.partial_path(workdir / "checkpoints" / "ckpt-epoch0001-step0000002.keras")]
    left.append(files.partial_path(workdir / "model.keras"))
    for path in left:
        path.write_bytes(b"half a zip")
    kept = workdir / "checkpoints" / "ckpt-epoch0001-step0000000.keras"
    kept.write_bytes(b"a whole checkpoint")
    with training._one_writer(workdir):
        assert not any(path.exists() for path in left) and kept.exists()
    assert "note: " + str(workdir) + " was held by pid 4321 on host gone since yesterday" in capsys.readouterr().out


# -- A full disk: a real small file system, or ENOSPC injected ----------------------


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 32 MB tmpfs, or the reason it cannot be mounted here (it needs root)."""
    folder = tmp_path_factory.mktemp("disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        yield f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the injected-ENOSPC tests run instead"
        return
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def disk(small_disk):
    """A folder on the small file system, and `fill(leave)`: a filler file leaving `leave` bytes free."""
    if isinstance(small_disk, str):
        pytest.skip(small_disk)
    folder = small_disk / "case"
    folder.mkdir()

    def fill(leave=0):
        with open(small_disk / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 2**20)
            except OSError:
                pass
            filler.truncate(max(0, filler.tell() - leave))

    yield folder, fill
    (small_disk / "filler").unlink(missing_ok=True)
    shutil.rmtree(folder)


def test_callback_writes_on_a_full_disk(disk, rng):
    folder, fill = disk
    model = tiny_cyclegan()
    model.compile()
    model.build((None, 32, 32, 3))
    checkpoint = cb.Checkpoint(folder / "checkpoints", steps_per_epoch=10)
    checkpoint.set_model(model)
    checkpoint.save(1, 0)
    good = cb.Checkpoint.latest(folder / "checkpoints")
    log = cb.CSVLog(folder / "log.csv", append=True)
    log.on_train_begin()
    log.on_epoch_end(0, {"cycle_loss": 1.5, "note": "short"})
    logged = (folder / "log.csv").read_bytes()
    images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    snapshot = cb.ImageSnapshot(images, images, folder / "snapshots")
    snapshot.set_model(model)
    fill(leave=64 * 1024)

    with pytest.raises(files.DiskFull) as caught:
        checkpoint.save(2, 0)
    message = str(caught.value)
    assert "ckpt-epoch0002-step0000000.keras" in message and "\n" not in message
    assert f"it needs {good[0].stat().st_size:,} bytes" in message  # the previous checkpoint's size
    assert cb.Checkpoint.latest(folder / "checkpoints") == good
    assert isinstance(keras.models.load_model(good[0]), CycleGAN)
    fill(leave=0)
    with pytest.raises(files.DiskFull, match="log.csv"):
        log.on_epoch_end(1, {"cycle_loss": 1.25, "note": "x" * 10000})  # more than the last page holds
    assert (folder / "log.csv").read_bytes() == logged
    with pytest.raises(files.DiskFull, match="epoch_001.png"):
        snapshot.on_epoch_end(0, {"cycle_loss": 1.5})
    with pytest.raises(files.DiskFull, match="loss_curve.png"):
        cb.plot_losses(folder / "log.csv", folder / "loss_curve.png")
    config = training.make_config(dataset="synthetic")
    with pytest.raises(files.DiskFull, match="config.json"):
        training.check_workdir(config, folder / "run")
    evaluation = cb.Evaluation(1, lambda: [], truth_fn=lambda x: x, best_path=folder / "best.keras")
    evaluation.set_model(model)
    with pytest.raises(files.DiskFull, match="best.keras"):
        evaluation._keep_if_best(1, {"psnr": 30.0})
    assert partials(folder) == []
    assert not (folder / "snapshots" / "epoch_001.png").exists() and not (folder / "best.json").exists()


@pytest.fixture(params=["tmpfs", "injected"])
def full_disk(request, tmp_path, monkeypatch):
    """`(folder, fill)`: `fill(leave)` makes writes under `folder` find the disk full.

    `tmpfs`: a real small file system, filled. `injected`: every Python
    file write (`open`), `CycleGAN.save` and the SavedModel export raise
    ENOSPC after writing a few bytes.
    """
    if request.param == "tmpfs":
        return request.getfixturevalue("disk")
    return injected_full_disk(tmp_path, monkeypatch)


@pytest.fixture
def one_full_disk(request, small_disk, tmp_path, monkeypatch):
    """`full_disk` on the tmpfs where it can be mounted, else injected (for the tests that train)."""
    if isinstance(small_disk, str):
        return injected_full_disk(tmp_path, monkeypatch)
    return request.getfixturevalue("disk")


def injected_full_disk(tmp_path, monkeypatch):
    folder = tmp_path / "injected"
    folder.mkdir()

    def fill(leave=0):
        import builtins
        import io

        real_open = io.open

        def filling_open(file, mode="r", *args, **kwargs):
            opened = real_open(file, mode, *args, **kwargs)
            inside = isinstance(file, (str, os.PathLike)) and Path(os.path.abspath(file)).is_relative_to(folder)
            if inside and any(c in mode for c in "wax"):
                opened.write(b"\0" * 100 if "b" in mode else "\0" * 100)
                opened.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
            return opened

        for module in (builtins, io):
            monkeypatch.setattr(module, "open", filling_open)
        real_save = CycleGAN.save

        def filling_save(model, path, *args, **kwargs):
            if Path(path).is_relative_to(folder):
                Path(path).write_bytes(b"half a zip")  # raises, through filling_open
            return real_save(model, path, *args, **kwargs)

        monkeypatch.setattr(CycleGAN, "save", filling_save)

        def filling_saved_model(generator, path, **settings):  # TensorFlow writes SavedModels from C++
            Path(path).mkdir(parents=True)
            (Path(path) / "saved_model.pb").write_bytes(b"half")

        monkeypatch.setattr(export, "export_saved_model", filling_saved_model)

    return folder, fill


def assert_one_line_exit_1(code, output, name):
    assert code == 1 and "Traceback" not in output, output
    (line,) = error_lines(output)
    assert line.startswith("error: no space left on the device writing ") and name in line, line
    assert " bytes" in line and "free some space and run the same command" in line, line


def test_translate_export_evaluate_on_a_full_disk_exit_1_with_one_line(full_disk, tmp_path, model_file, capsys, rng):
    folder, fill = full_disk
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(inputs / f"{i}.png")
    fill(leave=8 * 1024)
    code, output = run(translate_cli, ["--model", model_file, "--input", inputs, "--out", folder / "out"], capsys)
    assert_one_line_exit_1(code, output, str(folder / "out"))
    assert partials(folder) == [] and not (folder / "out" / "index.html").exists()

    argv = ["--model", model_file, "--out", folder / "exported", "--format", "saved_model", "--sample-size", 16]
    code, output = run(export_cli, argv, capsys)
    assert_one_line_exit_1(code, output, str(folder / "exported"))
    assert sorted(p.name for p in folder.iterdir()) == (["out"] if (folder / "out").exists() else [])

    fill(leave=0)
    report = folder / "scores.json"
    argv = ["--fake", inputs, "--truth", inputs, "--json", report, "--quiet"]
    code, output = run(evaluate_cli, argv, capsys)
    assert_one_line_exit_1(code, output, "scores.json")
    assert not report.exists() and partials(folder) == []


def test_train_on_a_disk_that_fills_resumes_once_there_is_room(
    one_full_disk, dataroot, capsys, monkeypatch, eager_steps
):
    # The first checkpoint (step 2 of 4) fits; the disk fills before the second (the epoch end).
    folder, fill = one_full_disk
    workdir = folder / "run"
    save = cb.Checkpoint.save

    def fill_after_the_first(checkpoint, epoch, step):
        save(checkpoint, epoch, step)
        fill(leave=64 * 1024)

    with monkeypatch.context() as patch:
        patch.setattr(cb.Checkpoint, "save", fill_after_the_first)
        code, output = run(train_cli, [*train_flags(dataroot, workdir), "--steps-per-epoch", 4], capsys)
        assert_one_line_exit_1(code, output, "checkpoints/ckpt-epoch0001-step0000000.keras")
        assert "resume (from the last checkpoint: epoch 1, step 2)" in output
        assert partials(workdir) == [] and not (workdir / ".lock").exists()
        path, epoch, step = cb.Checkpoint.latest(workdir / "checkpoints")
        assert (epoch, step) == (0, 2) and isinstance(keras.models.load_model(path), CycleGAN)

    monkeypatch.undo()  # room again (which undoes eager_steps too)
    run_steps_eagerly(monkeypatch)
    (folder.parent / "filler").unlink(missing_ok=True)
    code, output = run(train_cli, [*train_flags(dataroot, workdir), "--steps-per-epoch", 4], capsys)
    assert code == 0, output
    assert "Resumed from" in output and "epoch 1, step 2 of 4 done before" in output
    assert (workdir / "model.keras").exists() and partials(workdir) == []


# -- Never replace a file the run did not write -------------------------------------


def test_translate_refuses_to_replace_the_users_files_and_replaces_its_own(tmp_path, model_file, capsys, rng):
    # The case: --out held the user's own big.png and index.html.
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.png").write_bytes(b"the user's picture")
    (out / "index.html").write_text("the user's page")
    before = tree(out)
    argv = ["--model", model_file, "--input", tmp_path / "big.jpg", "--out", out]
    code, output = run(translate_cli, argv, capsys)
    assert code == 2, output
    (line,) = error_lines(output)
    assert line.startswith("error: argument --out: ") and str(out / "index.html") in line
    assert tree(out) == before  # nothing written

    (out / "index.html").unlink()
    code, output = run(translate_cli, argv, capsys)
    assert code == 2 and str(out / "big.png") in output and tree(out) == {"big.png": b"the user's picture"}

    # Its own outputs: a rerun of the same command replaces them.
    (out / "big.png").unlink()
    assert run(translate_cli, argv, capsys)[0] == 0
    written = tree(out)
    assert set(written) == {"big.png", "inputs/big.png", "index.html", files.Manifest.NAME}
    assert run(translate_cli, argv, capsys)[0] == 0
    assert set(tree(out)) == set(written)
    # ... unless the user changed one since: then it is theirs.
    (out / "index.html").write_text("edited by the user")
    code, output = run(translate_cli, argv, capsys)
    assert code == 2 and str(out / "index.html") in output
    assert (out / "index.html").read_text() == "edited by the user"


def test_export_refuses_to_replace_the_users_report(tmp_path, model_file, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    for name in ("export_report.json", "generator_float32.tflite"):
        (out / name).write_text("the user's")
    argv = ["--model", model_file, "--out", out, "--format", "tflite", "--sample-size", 16]
    code, output = run(export_cli, argv, capsys)
    assert code == 2, output
    (line,) = error_lines(output)
    assert line.startswith("error: argument --out: ") and "export_report.json" in line
    assert tree(out) == {"export_report.json": b"the user's", "generator_float32.tflite": b"the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no staging folder, no lock


def test_evaluate_json_never_replaces_a_file_it_did_not_write(tmp_path, capsys, rng):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    report = tmp_path / "scores.json"
    report.write_text("the user's notes")
    argv = ["--fake", images, "--truth", images, "--json", report, "--quiet"]
    code, output = run(evaluate_cli, argv, capsys)
    assert code == 2 and error_lines(output) == [
        f"error: argument --json: {report} already exists and was not written by cyclegan_keras (or was changed "
        "since); move it away or choose another output"
    ]
    assert report.read_text() == "the user's notes"
    report.unlink()
    assert run(evaluate_cli, argv, capsys)[0] == 0
    assert run(evaluate_cli, argv, capsys)[0] == 0  # its own file: replaced
    assert json.loads(report.read_text())["psnr"] == "inf"
