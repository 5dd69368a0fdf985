import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import tiny_cyclegan
from PIL import Image

from cyclegan_keras import callbacks as cb
from cyclegan_keras import data
from cyclegan_keras.cli import train, translate

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--generator",
    "resnet_6blocks",
    "--ngf",
    "4",
    "--ndf",
    "4",
    "--load-size",
    "36",
    "--crop-size",
    "32",
    "--pool-size",
    "3",
    "--snapshot-count",
    "2",
]


@pytest.fixture
def dataroot(tmp_path):
    """A reference-layout folder of synthetic PNGs, 8 images per domain."""
    root = tmp_path / "dataset"
    for phase, seed in (("train", 0), ("test", 5)):
        for d in "AB":
            folder = root / f"{phase}{d}"
            folder.mkdir(parents=True)
            for i, image in enumerate(data.synthetic_images(d, 8 if phase == "train" else 2, 40, seed=seed)):
                Image.fromarray(image).save(folder / f"{i}.png")
    return root


def test_schedule_values():
    assert cb.linear_decay_factor(0, 100, 100) == 1.0
    assert cb.linear_decay_factor(99, 100, 100) == 1.0
    assert cb.linear_decay_factor(100, 100, 100) == pytest.approx(1 - 1 / 101)
    assert cb.linear_decay_factor(199, 100, 100) == pytest.approx(1 / 101)
    schedule = cb.LinearDecaySchedule(2e-4, n_epochs=3, n_epochs_decay=2)
    model = tiny_cyclegan()
    model.compile()
    schedule.set_model(model)
    for epoch, factor in ((0, 1.0), (3, 2 / 3), (4, 1 / 3)):
        schedule.on_epoch_begin(epoch)
        for optimizer in model.optimizers:
            assert float(optimizer.learning_rate.numpy()) == pytest.approx(2e-4 * factor)
        logs = {}
        schedule.on_epoch_end(epoch, logs)
        assert logs["lr"] == pytest.approx(2e-4 * factor)


def test_non_finite_loss_stops_and_is_not_checkpointed(tmp_path):
    model = tiny_cyclegan()
    model.compile()
    stop = cb.StopOnNonFinite()
    checkpoint = cb.Checkpoint(tmp_path, steps_per_epoch=10, every_n_steps=1)
    for callback in (stop, checkpoint):
        callback.set_model(model)
        callback.on_epoch_begin(2)
    checkpoint.on_train_batch_end(0, {"cycle_loss": 1.0})
    good = cb.Checkpoint.latest(tmp_path)
    assert good[1:] == (2, 1)
    logs = {"cycle_loss": 1.0, "disc_b_loss": math.nan}
    stop.on_train_batch_end(3, logs)
    checkpoint.on_train_batch_end(3, logs)
    assert stop.error == "disc_b_loss became nan at epoch 3, step 4"
    assert model.stop_training
    assert cb.Checkpoint.latest(tmp_path) == good and good[0].exists()


def test_checkpoint_survives_a_crash_while_saving(tmp_path, monkeypatch):
    model = tiny_cyclegan()
    model.compile()
    checkpoint = cb.Checkpoint(tmp_path, steps_per_epoch=10)
    checkpoint.set_model(model)
    checkpoint.save(1, 0)
    good = cb.Checkpoint.latest(tmp_path)

    def crash(path, *args, **kwargs):
        Path(path).write_bytes(b"half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(1, 5)
    assert cb.Checkpoint.latest(tmp_path) == good
    assert isinstance(keras.models.load_model(good[0]), type(model))


def test_snapshot_grid(tmp_path, rng):
    model = tiny_cyclegan()
    images = rng.uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    snapshot = cb.ImageSnapshot(images, images[::-1], tmp_path, cell_size=64)
    snapshot.set_model(model)
    snapshot.on_epoch_end(4, {"cycle_loss": 1.5, "lr": 1e-4})
    with Image.open(tmp_path / "epoch_005.png") as grid:
        assert grid.size == (6 * 64, 3 * 64 + cb.ImageSnapshot.TITLE_PIXELS)
        pixels = np.asarray(grid.convert("RGB"))
    assert pixels[cb.ImageSnapshot.TITLE_PIXELS :].std() > 10  # images, not a blank canvas


def run_cli(module, argv, capsys):
    code = module.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_end_to_end_on_a_folder(tmp_path, dataroot, capsys):
    workdir = tmp_path / "run"
    code, output = run_cli(
        train, ["--dataroot", dataroot, "--workdir", workdir, "--n-epochs", 1, "--n-epochs-decay", 0, *TINY], capsys
    )
    assert code == 0, output
    for name in ("config.json", "log.csv", "loss_curve.png", "model.keras", "snapshots/epoch_001.png"):
        assert (workdir / name).exists(), name
    config = json.loads((workdir / "config.json").read_text())
    assert config["dataroot"] == str(dataroot) and config["lambda_identity"] == 0.5
    log = (workdir / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,cycle_loss") and "lr" in log[0] and len(log) == 2

    # translate.py on odd-sized images gives back the same sizes.
    inputs = tmp_path / "odd"
    inputs.mkdir()
    sizes = [(37, 51), (20, 9), (64, 64)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(inputs / f"img{i}.jpg")
    code, output = run_cli(
        translate, ["--model", workdir, "--input", inputs, "--out", tmp_path / "out", "--direction", "b2a"], capsys
    )
    assert code == 0, output
    for i, (h, w) in enumerate(sizes):
        with Image.open(tmp_path / "out" / f"img{i}.png") as image:
            assert image.size == (w, h)
    assert "inputs/img1.png" in (tmp_path / "out" / "index.html").read_text()

    # The same command again does not train again.
    code, output = run_cli(
        train, ["--dataroot", dataroot, "--workdir", workdir, "--n-epochs", 1, "--n-epochs-decay", 0, *TINY], capsys
    )
    assert code == 0 and "already holds a trained model" in output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataroot", "/nowhere/at/all"], "/nowhere/at/all"),
        (["--dataset", "horse2zebrra"], "--dataset 'horse2zebrra' is unknown"),
        (["--load-size", "64", "--crop-size", "72"], "crop_size (72) cannot be larger than load_size (64)"),
        (["--crop-size", "66", "--load-size", "70"], "--crop-size 66 must be a multiple of 4"),
        (["--generator", "resnet_12blocks"], "--generator 'resnet_12blocks' is unknown"),
        (["--input-nc", "1"], "--lambda-identity 0"),
        (["--train-a", "/tmp"], "--train-a and --train-b go together"),
    ],
)
def test_user_errors_exit_nonzero_with_one_message(tmp_path, capsys, argv, message):
    code, output = run_cli(train, [*argv, "--workdir", tmp_path / "run"], capsys)
    assert code == 2
    assert message in output and "Traceback" not in output


def test_workdir_with_another_configuration_is_refused(tmp_path, dataroot, capsys):
    # A run counts once it has checkpointed; lr may change on resume, ngf not.
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "checkpoints" / "checkpoint.json").write_text(json.dumps({"epoch": 1, "step": 0, "file": "x.keras"}))
    (workdir / "config.json").write_text(json.dumps({"dataset": "synthetic", "lr": 0.1, "ngf": 32}))
    code, output = run_cli(train, ["--dataroot", dataroot, "--workdir", workdir], capsys)
    assert code == 2 and "different configuration" in output and "ngf: 32 -> 64" in output
    assert "lr:" not in output.split("different configuration")[1]


KILL_AT_STEP = """
import os, signal, sys
from cyclegan_keras import callbacks
original = callbacks.StopOnNonFinite.on_train_batch_end
steps = [0]
def on_train_batch_end(self, batch, logs=None):
    steps[0] += 1
    if steps[0] == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, batch, logs)
callbacks.StopOnNonFinite.on_train_batch_end = on_train_batch_end
import train
sys.exit(train.main(sys.argv[1:]))
"""


def run_train_process(argv, kill_at_step=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, str(ROOT / "train.py")]
    if kill_at_step:
        env["KILL_AT_STEP"] = str(kill_at_step)
        command = [sys.executable, "-c", KILL_AT_STEP]
    return subprocess.run(command + [str(a) for a in argv], env=env, capture_output=True, text=True, timeout=600)


def test_killed_run_resumes_to_the_same_result(tmp_path, dataroot):
    # 3 epochs of 8 steps, checkpoints every 2 steps; killed at step 13
    # (epoch 2, step 5): resumes from epoch 2, step 4 and must end with the
    # same weights as a run that was never interrupted.
    flags = [
        "--dataroot",
        dataroot,
        "--n-epochs",
        2,
        "--n-epochs-decay",
        1,
        "--checkpoint-every",
        2,
        "--deterministic",
        *TINY,
    ]
    straight = run_train_process([*flags, "--workdir", tmp_path / "straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = run_train_process([*flags, "--workdir", tmp_path / "resumed"], kill_at_step=13)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "model.keras").exists()
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "checkpoint.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 4)

    resumed = run_train_process([*flags, "--workdir", tmp_path / "resumed"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout and "epoch 2, step 4 of 8" in resumed.stdout

    expected = keras.models.load_model(tmp_path / "straight" / "model.keras")
    actual = keras.models.load_model(tmp_path / "resumed" / "model.keras")
    assert int(actual.generator_optimizer.iterations) == 24
    for v1, v2 in zip(expected.weights, actual.weights):
        np.testing.assert_allclose(np.asarray(v2), np.asarray(v1), rtol=0, atol=1e-6, err_msg=v1.path)
    for v1, v2 in zip(expected.generator_optimizer.variables, actual.generator_optimizer.variables):
        np.testing.assert_allclose(np.asarray(v2), np.asarray(v1), rtol=0, atol=1e-6, err_msg=v1.path)
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1", "2"]
