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
from conftest import TINY_CUT_FLAGS, TINY_TRAIN_FLAGS, read_tensorboard, tiny_cyclegan
from PIL import Image

from cyclegan_keras import callbacks as cb
from cyclegan_keras import data
from cyclegan_keras.cli import train, translate
from cyclegan_keras.pix2pix import Pix2Pix  # noqa: F401  (registered for load_model)

# train.py's resnet_6blocks with one residual block in these runs (see conftest.one_residual_block).
pytestmark = pytest.mark.usefixtures("one_residual_block")

ROOT = Path(__file__).resolve().parent.parent


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
    schedule = cb.LearningRateSchedule(2e-4, n_epochs=3, n_epochs_decay=2)
    model = tiny_cyclegan()
    model.compile()
    schedule.set_model(model)
    for epoch, factor in ((0, 1.0), (3, 2 / 3), (4, 1 / 3)):
        schedule.on_epoch_begin(epoch)
        for optimizer in model.optimizer.optimizers:
            assert float(optimizer.learning_rate.numpy()) == pytest.approx(2e-4 * factor)
        logs = {}
        schedule.on_epoch_end(epoch, logs)
        assert logs["lr"] == pytest.approx(2e-4 * factor)


def test_non_finite_loss_stops_and_is_not_checkpointed(tmp_path):
    model = tiny_cyclegan()
    model.compile()
    model.build((None, 32, 32, 3))
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
    model.build((None, 32, 32, 3))
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
    try:
        code = module.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse refusing a flag
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_end_to_end_on_a_folder(tmp_path, dataroot, capsys):
    workdir = tmp_path / "run"
    # A first try on a folder without trainB is refused while parsing, before
    # TensorFlow starts, leaving nothing (issue 16); the corrected command
    # must not be refused as "another run" (12.3).
    not_a_dataset = tmp_path / "typo"
    (not_a_dataset / "trainA").mkdir(parents=True)
    code, output = run_cli(train, ["--dataroot", not_a_dataset, "--workdir", workdir, *TINY_TRAIN_FLAGS], capsys)
    assert code == 2 and "does not have the layout" in output and not workdir.exists()
    code, output = run_cli(
        train,
        ["--dataroot", dataroot, "--workdir", workdir, "--n-epochs", 1, "--n-epochs-decay", 0, *TINY_TRAIN_FLAGS],
        capsys,
    )
    assert code == 0, output
    assert "different configuration" not in output
    assert "Compiling the training step" in output.split("Epoch 1/1")[0]
    assert "\r" not in output and "\x1b[" not in output  # not a terminal: one line per epoch, no bars
    for name in ("config.json", "log.csv", "loss_curve.png", "model.keras", "snapshots/epoch_001.png"):
        assert (workdir / name).exists(), name
    assert not (workdir / "checkpoints").exists()  # its last checkpoint would duplicate model.keras
    config = json.loads((workdir / "config.json").read_text())
    assert config["dataroot"] == str(dataroot) and config["lambda_identity"] == 0.5
    log = (workdir / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    assert header[:2] == ["epoch", "cycle_loss"] and "lr" in header and len(log) == 2
    assert not [name for name in header if name.startswith("val_")], header
    assert 0 < float(log[1].split(",")[header.index("seconds_per_step")]) < 60

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
        train,
        ["--dataroot", dataroot, "--workdir", workdir, "--n-epochs", 1, "--n-epochs-decay", 0, *TINY_TRAIN_FLAGS],
        capsys,
    )
    assert code == 0 and "already holds a trained model" in output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataroot", "/nowhere/at/all"], "/nowhere/at/all"),
        (["--dataset", "horse2zebrra"], "argument --dataset: invalid choice: 'horse2zebrra'"),
        (["--load-size", "64", "--crop-size", "72"], "crop_size (72) cannot be larger than load_size (64)"),
        (["--crop-size", "66", "--load-size", "70"], "--crop-size 66 must be a multiple of 4"),
        (["--generator", "resnet_12blocks"], "argument --generator: invalid choice: 'resnet_12blocks'"),
        (["--input-nc", "1"], "--lambda-identity 0"),
        (["--train-a", "/tmp"], "--train-a and --train-b go together"),
    ],
)
def test_user_errors_exit_nonzero_with_one_message(tmp_path, capsys, argv, message):
    code, output = run_cli(train, [*argv, "--workdir", tmp_path / "run"], capsys)
    assert code == 2
    assert message in output and "Traceback" not in output


def test_workdir_with_another_configuration_is_refused(tmp_path, dataroot, capsys):
    # A run counts once it has a checkpoint; --lr may change on resume, --ngf may not.
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    state = {"epoch": 1, "step": 0, "file": "ckpt.keras"}
    (workdir / "checkpoints" / "checkpoint.json").write_text(json.dumps(state))
    (workdir / "config.json").write_text(json.dumps({"dataset": "synthetic", "lr": 0.1, "ngf": 8}))
    code, output = run_cli(train, ["--dataroot", dataroot, "--workdir", workdir, *TINY_TRAIN_FLAGS], capsys)
    assert code == 2 and "different configuration" in output and "ngf: 8 -> 4" in output
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


def train_process(argv, kill_at_step=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, str(ROOT / "train.py")]
    if kill_at_step:
        env["KILL_AT_STEP"] = str(kill_at_step)
        command = [sys.executable, "-c", KILL_AT_STEP]
    return subprocess.Popen(
        command + [str(a) for a in argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_train_process(argv, kill_at_step=None):
    process = train_process(argv, kill_at_step)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# pix2pix on the same folders as pairs by name (0.png with 0.png): batch norm's running statistics and
# dropout's seed state must resume too. No image pool for it, so not TINY_TRAIN_FLAGS' --pool-size.
PIX2PIX_FLAGS = [
    *("--model", "pix2pix", "--dataset-mode", "paired", "--generator", "resnet_6blocks", "--ngf", "4"),
    *("--ndf", "4", "--load-size", "36", "--crop-size", "32", "--snapshot-count", "2"),
]


# Four train.py processes (two at once): the fast tier keeps the in-process lock and resume tests.
@pytest.mark.slow
@pytest.mark.parametrize(
    "model_flags",
    [TINY_TRAIN_FLAGS, PIX2PIX_FLAGS, [*TINY_CUT_FLAGS, "--flip-equivariance"]],  # CUT: every random draw of its step
    ids=["cyclegan", "pix2pix", "cut"],
)
def test_killed_run_resumes_to_the_same_result(tmp_path, dataroot, model_flags):
    # 3 epochs of 8 steps, checkpoints every 2 steps; killed at step 13
    # (epoch 2, step 5): resumes from epoch 2, step 4 and must end with the
    # same weights as a run that was never interrupted. The killed run is
    # started twice at the same moment on one work directory (issue 15, 4):
    # one trains, the other exits 2 at once naming it.
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
        *model_flags,
    ]
    straight = run_train_process([*flags, "--workdir", tmp_path / "straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]

    twins = [train_process([*flags, "--workdir", tmp_path / "resumed"], kill_at_step=13) for _ in range(2)]
    outputs = [twin.communicate(timeout=600) for twin in twins]
    codes = sorted(twin.returncode for twin in twins)
    assert codes == [-signal.SIGKILL, 2], outputs
    killed = next(twin for twin in twins if twin.returncode == -signal.SIGKILL)
    refused = [err for twin, (_, err) in zip(twins, outputs) if twin.returncode == 2][0]
    (line,) = [line for line in refused.splitlines() if line.startswith("error:")]
    assert f"is in use by pid {killed.pid} on host " in line, refused
    assert not (tmp_path / "resumed" / "model.keras").exists()
    assert json.loads((tmp_path / "resumed" / ".lock").read_text())["pid"] == killed.pid  # killed: not released
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "checkpoint.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 4)

    resumed = run_train_process([*flags, "--workdir", tmp_path / "resumed"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout and "epoch 2, step 4 of 8" in resumed.stdout
    assert f"was held by pid {killed.pid} on host " in resumed.stdout and "taken over" in resumed.stdout
    assert not (tmp_path / "resumed" / ".lock").exists()

    expected = keras.models.load_model(tmp_path / "straight" / "model.keras")
    actual = keras.models.load_model(tmp_path / "resumed" / "model.keras")
    assert int(actual.generator_optimizer.iterations) == 24
    for v1, v2 in zip(expected.weights, actual.weights):
        np.testing.assert_allclose(np.asarray(v2), np.asarray(v1), rtol=0, atol=1e-6, err_msg=v1.path)
    for v1, v2 in zip(expected.generator_optimizer.variables, actual.generator_optimizer.variables):
        np.testing.assert_allclose(np.asarray(v2), np.asarray(v1), rtol=0, atol=1e-6, err_msg=v1.path)
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["1", "2", "3"]


# -- The reference's options (issue 11) -----------------------------------------------


def test_every_lr_policy_matches_the_reference_formulas():
    def rates(policy, epochs, **kwargs):
        schedule = cb.LearningRateSchedule(1.0, policy, n_epochs=4, n_epochs_decay=4, **kwargs)
        return [schedule.factor(e) for e in epochs]

    # linear with epoch_count 3: 1 - max(0, e + 3 - 4) / 5
    np.testing.assert_allclose(rates("linear", range(6), epoch_count=3), [1, 1, 0.8, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(rates("step", [0, 2, 3, 6], lr_decay_iters=3), [1, 1, 0.1, 0.01])
    np.testing.assert_allclose(rates("cosine", [0, 2, 4, 6]), [1, 0.5, 0, 0.5], atol=1e-12)  # T_max = n_epochs


@pytest.mark.parametrize("first_epoch", [1, 0], ids=["log", "log_of_an_earlier_version"])
def test_plateau_follows_pytorch_and_resumes_from_the_csv_log(tmp_path, first_epoch):
    # ReduceLROnPlateau(mode="min", factor=0.2, threshold=0.01, patience=5):
    # 1.0 then values not 1% lower: the 6th bad epoch cuts the rate.
    losses = [1.0, 0.995, 0.999, 0.992, 0.991, 0.995, 0.993, 0.5, 0.5]
    state = cb.PlateauState()
    scales = [state.step(value, 1.0) for value in losses]
    assert scales == [1, 1, 1, 1, 1, 1, 0.2, 0.2, 0.2]

    model = tiny_cyclegan()
    model.compile()
    straight = cb.LearningRateSchedule(2e-4, "plateau", history_csv=tmp_path / "none.csv")
    straight.set_model(model)
    rows = ["epoch,cycle_loss,lr"]
    rates = []
    for epoch, loss in enumerate(losses):
        straight.on_epoch_begin(epoch)
        rates.append(float(model.generator_optimizer.learning_rate.numpy()))
        logs = {"cycle_loss": loss}
        straight.on_epoch_end(epoch, logs)
        rows.append(f"{epoch + first_epoch},{loss},{logs['lr']}")  # earlier versions counted from 0
    np.testing.assert_allclose(rates, [2e-4] * 7 + [4e-5] * 2, rtol=1e-6)
    # Resumed at epoch 7: the state is rebuilt from the log's epochs 0..6.
    (tmp_path / "log.csv").write_text("\n".join(rows[:8]) + "\n")
    resumed = cb.LearningRateSchedule(2e-4, "plateau", history_csv=tmp_path / "log.csv")
    resumed.set_model(model)
    resumed.on_epoch_begin(7)
    assert float(model.discriminator_optimizer.learning_rate.numpy()) == pytest.approx(4e-5)
    with pytest.raises(ValueError, match="lacks cycle_loss of epoch"):
        cb.LearningRateSchedule(2e-4, "plateau", history_csv=tmp_path / "log.csv").factor(9)


def test_csv_log_counts_epochs_from_1_and_renumbers_a_log_of_an_earlier_version(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"epoch,cycle_loss,lr\r\n0,1.5,0.0002\r\n1,1.25,0.0002\r\n")  # counted from 0
    assert [row["epoch"] for row in cb.read_log(path)] == [1, 2]
    log = cb.CSVLog(path, append=True)
    log.on_train_begin()
    log.on_epoch_end(2, {"cycle_loss": 1.0, "lr": 0.0001})
    assert path.read_bytes() == b"epoch,cycle_loss,lr\r\n1,1.5,0.0002\r\n2,1.25,0.0002\r\n3,1.0,0.0001\r\n"
    assert [row["epoch"] for row in cb.read_log(path)] == [1, 2, 3]
    log = cb.CSVLog(path)  # not appending: a new log
    log.on_train_begin()
    log.on_epoch_end(0, {"cycle_loss": 2.0})
    assert cb.read_log(path) == [{"epoch": 1, "cycle_loss": "2.0"}]


def test_lr_is_logged_in_the_shortest_form_of_its_float32():
    model = tiny_cyclegan()
    model.compile()
    schedule = cb.LearningRateSchedule(2e-4, n_epochs=1, n_epochs_decay=2)
    schedule.set_model(model)
    logs = {}
    for epoch in range(2):
        schedule.on_epoch_begin(epoch)
        schedule.on_epoch_end(epoch, logs)
        assert np.float32(logs["lr"]) == model.generator_optimizer.learning_rate.numpy()
        assert repr(logs["lr"]) == ["0.0002", "0.00013333333"][epoch]


@pytest.mark.parametrize("init_type", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_weights_as_the_reference(init_type):
    from cyclegan_keras import networks

    gain = 0.05
    network = networks.resnet_generator(n_blocks=1, filters=32, norm="batch")
    networks.init_weights(network, init_type, gain, seed=3)
    kernel = np.asarray(network.get_layer("down1_conv").kernel)
    height, width, channels_in, channels_out = kernel.shape
    fan_in, fan_out = height * width * channels_in, height * width * channels_out  # PyTorch's fans
    expected = {
        "normal": gain,
        "xavier": gain * np.sqrt(2 / (fan_in + fan_out)),
        "kaiming": np.sqrt(2 / fan_in),
        "orthogonal": None,
    }[init_type]
    if expected is None:
        flat = kernel.reshape(-1, kernel.shape[-1])  # columns orthonormal, times the gain
        np.testing.assert_allclose(flat.T @ flat, gain**2 * np.eye(flat.shape[1]), atol=1e-6)
    else:
        assert kernel.std() == pytest.approx(expected, rel=0.05)
        assert abs(kernel.mean()) < expected / 10
    for layer in network.layers:
        if getattr(layer, "bias", None) is not None:
            assert not np.asarray(layer.bias).any(), layer.name
    gammas = np.concatenate(
        [np.asarray(layer.gamma) for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]
    )
    assert gammas.mean() == pytest.approx(1.0, abs=0.01) and gammas.std() == pytest.approx(gain, rel=0.15)


def test_serial_batches_take_both_domains_in_order():
    pre = data.Preprocessing(mode="none", channels=3)
    images_a = [np.full((8, 8, 3), 10 * i, np.uint8) for i in range(4)]
    images_b = [np.full((8, 8, 3), 100 + 10 * i, np.uint8) for i in range(3)]
    domain_a, domain_b = data.Domain("A", images=images_a), data.Domain("B", images=images_b)

    def firsts(serial):
        dataset = data.unpaired_dataset(domain_a, domain_b, pre, serial=serial, start_epoch=1, steps_per_epoch=4)
        pairs = [(a, b) for a, b in dataset.take(4).as_numpy_iterator()]
        return [(round((a[0, 0, 0, 0] + 1) * 127.5), round((b[0, 0, 0, 0] + 1) * 127.5)) for a, b in pairs]

    assert firsts(True) == [(0, 100), (10, 110), (20, 120), (30, 100)]
    assert firsts(False) != firsts(True)


def test_max_dataset_size_and_strict_data_list_both_domains(tmp_path, dataroot):
    from cyclegan_keras.training import load_domains, make_config

    config = make_config(dataroot=str(dataroot), max_dataset_size=3, **_tiny_settings())
    assert [len(d) for d in load_domains(config, "train")] == [3, 3]
    (dataroot / "trainA" / "bad_a.png").write_bytes(b"not a png")
    (dataroot / "trainB" / "bad_b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(data.DataError) as error:
        load_domains(make_config(dataroot=str(dataroot), strict_data=True, **_tiny_settings()), "train")
    assert "bad_a.png" in str(error.value) and "bad_b.jpg" in str(error.value)


def _tiny_settings(**extra):
    return dict(generator="resnet_6blocks", ngf=4, ndf=4, load_size=36, crop_size=32, pool_size=3, **extra)


@pytest.mark.parametrize("direction", ["a2b", "b2a"])
def test_one_channel_to_three_trains_in_both_directions(tmp_path, dataroot, eager_steps, direction):
    from cyclegan_keras.training import make_config
    from cyclegan_keras.training import train as train_run

    config = make_config(
        dataroot=str(dataroot),
        direction=direction,
        input_nc=1,
        output_nc=3,
        lambda_identity=0.0,
        n_epochs=1,
        n_epochs_decay=0,
        steps_per_epoch=2,
        snapshot_count=1,
        **_tiny_settings(),
    )
    model = train_run(config, tmp_path / "run", verbose=0)
    # input_nc is the model's domain A, whichever folder that is.
    assert model.generator_ab.input_shape[-1] == 1 and model.generator_ab.output_shape[-1] == 3
    assert model.generator_ba.input_shape[-1] == 3 and model.generator_ba.output_shape[-1] == 1
    # TensorBoard's snapshot shows the grayscale columns as gray beside the RGB ones: one pair, 6 columns.
    assert read_tensorboard(tmp_path / "run" / "tensorboard")["snapshots"] == [(1, (6 * 32, 32))]


def test_an_old_config_with_atob_still_resumes(tmp_path, dataroot):
    from cyclegan_keras.training import check_workdir, make_config

    config = make_config(dataroot=str(dataroot), **_tiny_settings())
    old = {k: v for k, v in json.loads(json.dumps(__import__("dataclasses").asdict(config))).items()}
    old["direction"], old["jit_compile"] = "AtoB", old.pop("xla")  # the names before issue 16
    for new_setting in ("init_type", "init_gain", "lr_policy", "serial_batches", "max_dataset_size"):
        del old[new_setting]  # written before these settings existed
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "checkpoints" / "checkpoint.json").write_text(json.dumps({"epoch": 1, "step": 0, "file": "x.keras"}))
    (workdir / "config.json").write_text(json.dumps(old))
    check_workdir(config, workdir)  # no ConfigError
    assert json.loads((workdir / "config.json").read_text())["direction"] == "a2b"


# -- Stops a user makes or meets (issue 12) ---------------------------------------------


def _nan_when_lr_above(limit):
    """A StopOnNonFinite.on_train_batch_end that sees a NaN loss in epoch 2 while the rate exceeds `limit`."""
    original = cb.StopOnNonFinite.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and float(self.model.generator_optimizer.learning_rate.numpy()) > limit:
            logs = {**(logs or {}), "cycle_loss": math.nan}
        return original(self, batch, logs)

    return on_train_batch_end


def test_a_nan_stop_then_a_lower_lr_resumes(tmp_path, dataroot, eager_steps, capsys, monkeypatch):
    monkeypatch.setattr(cb.StopOnNonFinite, "on_train_batch_end", _nan_when_lr_above(1e-2))
    flags = ["--dataroot", dataroot, "--workdir", tmp_path / "run", "--n-epochs", 2, "--n-epochs-decay", 0]
    flags += ["--steps-per-epoch", 2, *TINY_TRAIN_FLAGS]
    code, output = run_cli(train, [*flags, "--lr", 0.5], capsys)
    assert code == 1, output
    kept = tmp_path / "run" / "checkpoints" / "ckpt-epoch0001-step0000000.keras"
    assert f"cycle_loss became nan at epoch 2, step 1. The last good checkpoint, {kept}, is kept" in output
    code, output = run_cli(train, [*flags, "--lr", 1e-4], capsys)
    assert code == 0, output
    assert "Resuming with lr changed: 0.5 -> 0.0001" in output and "Resumed from" in output
    # The stopped epoch 2 is logged once, by the run that trained it to its end; the steps go on.
    rows = cb.read_log(tmp_path / "run" / "log.csv")
    assert [row["epoch"] for row in rows] == [1, 2] and [row["lr"] for row in rows] == ["0.5", "0.0001"]
    logged = read_tensorboard(tmp_path / "run" / "tensorboard")
    for name in ("cycle_loss", "gen_ab_loss", "disc_b_loss"):
        assert logged[f"losses/{name}"] == [(e, pytest.approx(float(rows[e - 1][name]), rel=1e-6)) for e in (1, 2)]
    for role in ("generator", "discriminator"):
        assert logged[f"learning_rate/{role}"] == [(1, 0.5), (2, pytest.approx(1e-4))]
    assert [step for step, _ in logged["seconds_per_step"]] == [1, 2]
    assert logged["snapshots"] == [(1, (6 * 32, 2 * 32)), (2, (6 * 32, 2 * 32))]  # 2 pairs, 6 columns


def test_a_nan_before_any_checkpoint_names_none(tmp_path, dataroot, eager_steps, capsys, monkeypatch):
    monkeypatch.setattr(cb.StopOnNonFinite, "on_train_batch_end", _nan_when_lr_above(1e-2))
    monkeypatch.setattr(cb.Checkpoint, "save", lambda *args: None)
    flags = ["--dataroot", dataroot, "--workdir", tmp_path / "run", "--n-epochs", 2, "--n-epochs-decay", 0]
    code, output = run_cli(train, [*flags, "--steps-per-epoch", 1, "--lr", 0.5, *TINY_TRAIN_FLAGS], capsys)
    assert code == 1 and "No checkpoint was written before it" in output and "checkpoints/" not in output


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, dataroot, eager_steps, capsys, monkeypatch):
    original = cb.StopOnNonFinite.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        original(self, batch, logs)
        if batch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cb.StopOnNonFinite, "on_train_batch_end", on_train_batch_end)
    flags = ["--dataroot", dataroot, "--workdir", tmp_path / "run", "--n-epochs", 1, "--n-epochs-decay", 0]
    code, output = run_cli(train, [*flags, "--checkpoint-every", 2, *TINY_TRAIN_FLAGS], capsys)
    assert code == 130
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert output.splitlines()[-1] == (
        "stopped at epoch 1 step 3; run the same command to resume (from the last checkpoint: epoch 1, step 2)"
    )


def test_snapshots_and_evaluation_use_the_reference_test_transform():
    # The reference's test options set load_size = crop_size: a resized image
    # is shown whole, not centre-cropped as in training (286 -> crop 256).
    from cyclegan_keras import data
    from cyclegan_keras.config import make_config

    config = make_config(load_size=72, crop_size=64)
    pre = config.test_preprocessing("A")
    assert (pre.load_size, pre.crop_size, pre.flip) == (64, 64, False)
    image = np.zeros((72, 72, 3), np.uint8)
    image[:4, :4] = 255  # a corner that a 64-of-72 centre crop would cut off
    whole = data.domain_images(data.array_domain([image], pre, "A"), pre)
    cropped = data.domain_images(data.array_domain([image], config.preprocessing("A"), "A"), config.preprocessing("A"))
    assert whole.shape == cropped.shape == (1, 64, 64, 3)
    assert whole[0, 0, 0, 0] > 0.5 and cropped[0, 0, 0, 0] < -0.5
