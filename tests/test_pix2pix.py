"""pix2pix (issue 18): the paired model, its training step, saving, tf.distribute and mixed precision."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli, tiny_pix2pix

from cyclegan_keras import data, distribute, networks
from cyclegan_keras.pix2pix import Pix2Pix


def bce(logits, real):
    """The reference's vanilla GANLoss: BCE with logits against all-ones or all-zeros."""
    logits = np.asarray(logits, np.float64)
    return float(np.mean(np.maximum(logits, 0) - logits * real + np.log1p(np.exp(-np.abs(logits)))))


def pairs(rng, n=2, size=32, channels=(3, 3)):
    a = rng.uniform(-1, 1, (n, size, size, channels[0])).astype("float32")
    b = rng.uniform(-1, 1, (n, size, size, channels[1])).astype("float32")
    return a, b


def copy_of(network):
    copy = network.__class__.from_config(network.get_config())
    copy.set_weights(network.get_weights())
    return copy


def test_a_step_is_forward_then_d_then_g_against_the_updated_d(rng):
    # The logged losses of one step, recomputed from copies of the networks taken before and after it:
    # D's from the old D on (a, G_old(a)) and (a, b); G's GAN loss from the *updated* D on G_old's output.
    model = tiny_pix2pix()
    model.compile(run_eagerly=True)
    a, b = pairs(rng, n=1)
    old_g, old_d = copy_of(model.generator_ab), copy_of(model.discriminator)
    before = [np.array(v) for v in model.weights]
    history = model.fit(a, b, batch_size=1, epochs=1, verbose=0).history
    assert list(history) == ["disc_fake_loss", "disc_real_loss", "gen_ab_loss", "l1_loss"]
    fake = np.asarray(old_g(a, training=True))
    real_ab, fake_ab = np.concatenate([a, b], -1), np.concatenate([a, fake], -1)
    expected = {
        "disc_fake_loss": bce(old_d(fake_ab, training=True), 0.0),
        "disc_real_loss": bce(old_d(real_ab, training=True), 1.0),
        "gen_ab_loss": bce(model.discriminator(fake_ab, training=True), 1.0),
        "l1_loss": 100.0 * float(np.mean(np.abs(fake - b))),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(history[name][0], value, rtol=1e-5, err_msg=name)
    assert abs(bce(old_d(fake_ab, training=True), 1.0) - expected["gen_ab_loss"]) > 1e-3  # the order shows
    # Every weight of both networks moved, batch-norm running statistics included.
    for variable, old in zip(model.weights, before):
        assert not np.array_equal(variable, old), variable.path
    assert int(model.generator_optimizer.iterations) == int(model.discriminator_optimizer.iterations) == 1


def test_save_load_round_trip_and_one_direction(rng, tmp_path):
    model = tiny_pix2pix(input_channels=1)
    model.compile(lambda_l1=50.0, gan_mode="lsgan", run_eagerly=True)
    a, b = pairs(rng, n=2, channels=(1, 3))
    model.fit(a, b, batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "pix2pix.keras")
    loaded = keras.models.load_model(tmp_path / "pix2pix.keras")
    assert type(loaded) is Pix2Pix and (loaded.objective["lambda_l1"], loaded.objective["gan_mode"]) == (50.0, "lsgan")
    # translate uses the running statistics: the same after loading (and not the batch's statistics).
    columns = loaded.snapshot_columns(a, b)
    assert list(columns) == ["input", "output", "target"] and columns["target"] is b
    np.testing.assert_array_equal(columns["output"], model.translate(a))
    assert columns["output"].shape == (2, 32, 32, 3)
    assert np.abs(columns["output"] - np.asarray(model.generator_ab(a, training=True))).max() > 1e-3
    with pytest.raises(ValueError, match="translates a2b only: pix2pix learns the one direction it was trained in"):
        loaded.generator("b2a")
    for v1, v2 in zip(model.generator_optimizer.variables, loaded.generator_optimizer.variables):
        np.testing.assert_array_equal(v1, v2, err_msg=v1.path)
    with pytest.raises(ValueError, match="input_channels \\+ output_channels = 4 channels"):
        Pix2Pix(model.generator_ab, tiny_pix2pix().discriminator)


def test_two_replicas_average_their_steps_with_per_replica_batch_norm(rng, mirrored):
    # D's step comes first and sees G's untouched output, so with SGD, D after one step on two
    # replicas (one pair each, batch norm over each replica's own pair, as PyTorch's DataParallel)
    # is the mean of D after a one-device step on each pair alone. A loss summed over the replicas
    # instead of averaged would double the step.
    # A pixel discriminator: fewer variables to all-reduce, eagerly, one at a time.
    def build():
        generator = networks.unet_generator(5, 4, norm="batch")
        return Pix2Pix(generator, networks.pixel_discriminator(filters=4, input_channels=6, norm="batch"))

    keras.utils.set_random_seed(3)
    reference = build()
    reference.build((None, 32, 32, 3))
    weights = reference.get_weights()
    a, b = pairs(rng, n=2)

    def compiled(strategy):
        with strategy.scope():
            model = build()
            sgd = dict(generator_optimizer=keras.optimizers.SGD(1.0), discriminator_optimizer=keras.optimizers.SGD(1.0))
            model.compile(**sgd, run_eagerly=True)
        return model

    def stepped(model, images_a, images_b):
        model.set_weights(weights)  # SGD keeps no state to reset
        model.fit(images_a, images_b, batch_size=len(images_a), epochs=1, verbose=0, shuffle=False)
        return [np.asarray(v) for v in model.discriminator.trainable_weights]

    one_device = compiled(tf.distribute.OneDeviceStrategy("/cpu:0"))
    alone = [stepped(one_device, a[i : i + 1], b[i : i + 1]) for i in (0, 1)]
    together = stepped(compiled(mirrored), a, b)
    moved = max(np.abs(w - w0).max() for w, w0 in zip(alone[0], reference.discriminator.trainable_weights))
    assert moved > 1e-3
    for first, second, both in zip(*alone, together):
        np.testing.assert_allclose(both, (first + second) / 2, atol=1e-6)


def test_mixed_precision_trains_with_float32_batch_norm_statistics(rng):
    with distribute.precision_policy("mixed_float16"):
        model = tiny_pix2pix()
        model.compile(run_eagerly=True)
    assert isinstance(model.generator_optimizer, keras.optimizers.LossScaleOptimizer)
    a, b = pairs(rng, n=1)
    history = model.fit(a, b, batch_size=1, epochs=1, verbose=0).history
    assert all(np.isfinite(values[0]) for values in history.values()), history
    norm = model.generator_ab.get_layer("down1_norm")
    assert norm.compute_dtype == "float16" and norm.moving_variance.dtype == "float32"
    assert model.translate(a).dtype == np.float32


@pytest.fixture
def facades(tmp_path):
    """pix2pix's layout: train/ and test/ of A|B files (B the synthetic mapping of A), one odd-width file."""
    from PIL import Image

    root = tmp_path / "facades"
    for phase, count, seed in (("train", 2, 0), ("test", 2, 7)):
        (root / phase).mkdir(parents=True)
        for i, a in enumerate(data.synthetic_images("A", count, 72, seed=seed)):
            Image.fromarray(np.concatenate([a, data.synthetic_mapping(a)], axis=1)).save(root / phase / f"{i}.png")
    Image.fromarray(np.zeros((72, 145, 3), np.uint8)).save(root / "train" / "odd.png")
    return root


def test_cli_train_export_translate_evaluate_on_aligned_files(tmp_path, facades, eager_steps, capsys):
    from PIL import Image

    from cyclegan_keras.cli import evaluate, train, translate

    workdir = tmp_path / "run"
    flags = ["--model", "pix2pix", "--dataroot", facades, "--workdir", workdir, "--generator", "unet_64"]
    flags += ["--ngf", 4, "--ndf", 4, "--load-size", 72, "--crop-size", 64, "--n-epochs", 1, "--n-epochs-decay", 0]
    code, output = run_cli(train.main, [*flags, "--snapshot-count", 1], capsys)
    assert code == 0, output
    assert "[train/A]" in output and "odd.png: width 145 is odd" in (workdir / "bad_files.txt").read_text()
    settings = json.loads((workdir / "config.json").read_text())
    expected = dict(norm="batch", gan_mode="vanilla", dataset_mode="aligned", dropout=True, lambda_l1=100.0)
    assert {key: settings[key] for key in expected} == expected
    assert (workdir / "log.csv").read_text().startswith("epoch,disc_fake_loss,disc_real_loss,gen_ab_loss,l1_loss,")
    assert (workdir / "snapshots" / "epoch_001.png").exists()
    model = keras.models.load_model(workdir / "model.keras")
    assert type(model) is Pix2Pix and int(model.generator_optimizer.iterations) == 2

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pairs_ = [np.asarray(Image.open(facades / "test" / f"{i}.png")) for i in range(2)]
    for i, pair in enumerate(pairs_):
        Image.fromarray(pair[:, :72]).save(inputs / f"{i}.png")
    code, output = run_cli(translate.main, ["--model", workdir, "--input", inputs, "--out", tmp_path / "out"], capsys)
    assert code == 0, output
    translated = np.asarray(Image.open(tmp_path / "out" / "0.png"))
    np.testing.assert_array_equal(translated, data.to_uint8(model.translate(pairs_[0][None, :, :72] / 127.5 - 1))[0])
    argv = ["--model", workdir, "--input", inputs, "--out", tmp_path / "out_b2a", "--direction", "b2a"]
    code, output = run_cli(translate.main, argv, capsys)
    assert code == 2 and "pix2pix learns the one direction it was trained in" in output, output

    # evaluate.py on its own test split: the PSNR of G(left half) against the right half.
    argv = ["--model", workdir, "--aligned", facades / "test", "--quiet", "--json", tmp_path / "scores.json"]
    code, output = run_cli(evaluate.main, argv, capsys)
    assert code == 0, output
    scores = json.loads((tmp_path / "scores.json").read_text())
    outputs = data.to_uint8(model.translate(np.stack([p[:, :72] for p in pairs_]) / 127.5 - 1))
    mse = [np.mean((o.astype(np.float64) - p[:, 72:]) ** 2) for o, p in zip(outputs, pairs_)]
    np.testing.assert_allclose(scores["psnr"], np.mean([10 * np.log10(255**2 / m) for m in mse]), rtol=1e-6)
    assert scores["identity"]["psnr"] != scores["psnr"] and scores["settings"]["aligned_direction"] == "a2b"


# Each export verifies its artifacts in a fresh process (about 14 s here).
@pytest.mark.slow
def test_cli_exports_a_pix2pix_and_the_authors_generator_in_either_batch_norm_mode(tmp_path, capsys):
    from pathlib import Path

    from cyclegan_keras.cli import export

    model = tiny_pix2pix(dropout=True)
    model.compile()
    model.build((None, 32, 32, 3))
    model.save(tmp_path / "pix2pix.keras")
    fixture = Path(__file__).resolve().parent / "fixtures" / "unet_batchnorm_tiny.pth"
    for name, source in (
        ("model", ["--model", tmp_path / "pix2pix.keras"]),
        ("torch", ["--from-torch", fixture, "--batch-norm", "image"]),
    ):
        out = tmp_path / name
        code, output = run_cli(export.main, [*source, "--out", out, "--sample-size", 64], capsys)
        assert code == 0, output
        report = json.loads((out / "export_report.json").read_text())
        assert len(report["artifacts"]) == 2 and all(a["max_abs_error"] < 1e-4 for a in report["artifacts"]), report
    code, output = run_cli(
        export.main, ["--model", tmp_path / "pix2pix.keras", "--out", out, "--direction", "b2a"], capsys
    )
    assert code == 2 and "argument --direction: " in output and "one direction it was trained in" in output


# -- train.py --model pix2pix: its settings, checked before TensorFlow starts ---------------


def test_pix2pix_takes_the_reference_defaults_and_its_own_settings(tmp_path):
    from cyclegan_keras import config

    synthetic = config.make_config(model="pix2pix")
    expected = dict(norm="batch", dropout=True, gan_mode="vanilla", lambda_l1=100.0, dataset_mode="aligned")
    assert {key: getattr(synthetic, key) for key in expected} == expected
    assert (synthetic.generator, synthetic.crop_size, synthetic.n_epochs) == ("unet_64", 64, 3)  # minutes on a CPU
    folders = config.make_config(model="pix2pix", dataroot="facades")
    assert (folders.generator, folders.crop_size, folders.n_epochs, folders.n_epochs_decay) == (
        "unet_256",
        256,
        100,
        100,
    )
    assert config.make_config(model="pix2pix", train_a="a", train_b="b").dataset_mode == "paired"
    assert config.make_config(model="pix2pix", dropout=False).dropout is False  # --no-dropout
    assert config.make_config(model="cyclegan").dataset_mode == "unaligned"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "pix2pix", "--pool-size", "3"], "--pool-size means nothing for --model pix2pix"),
        (["--lambda-l1", "10"], "--lambda-l1 means nothing for --model cyclegan: it is a setting of --model pix2pix"),
        (["--model", "pix2pix", "--dataset-mode", "unaligned"], "--model pix2pix learns from pairs"),
        (["--model", "pix2pix", "--dataset", "facades"], "--dataset facades has no pairs"),
        (["--model", "pix2pix", "--dataroot", "@cyclegan_layout"], "has no train/ folder of A|B files"),
        (["--dataroot", "@pix2pix_layout"], "add --dataset-mode aligned"),
        (
            ["--model", "pix2pix", "--train-a", "@images", "--train-b", "@images", "--dataset-mode", "aligned"],
            "use --dataset-mode paired",
        ),
    ],
)
def test_pix2pix_refusals_are_one_line_before_tensorflow(argv, message, tmp_path, capsys, monkeypatch):
    import sys

    from cyclegan_keras.cli import train

    for folder in ("cyclegan_layout/trainA", "cyclegan_layout/trainB", "pix2pix_layout/train", "images"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "images" / "a.png").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    argv = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in argv]
    code, output = run_cli(train.main, [*argv, "--workdir", tmp_path / "run"], capsys)
    errors = [line for line in output.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0], output
    assert not (tmp_path / "run").exists()


def test_help_offers_no_dropout_where_a_method_turns_dropout_on():
    from cyclegan_keras.cli import train

    shown = " ".join(train.parser().format_help().split())
    assert "--dropout, --no-dropout" in shown and "True for --model pix2pix" in shown
    assert "unet_256 for --model pix2pix (unet_64 on the synthetic dataset)" in shown


def test_eval_every_scores_the_test_split_against_its_pairs_and_strict_data_refuses(facades, tmp_path):
    from cyclegan_keras import config, metrics, training

    settings = dict(model="pix2pix", dataroot=str(facades), generator="unet_64", load_size=72, crop_size=64)
    run = config.make_config(**settings, eval_every=1)
    test_a, test_b = training.load_domains(run, "test")
    evaluation, line = training.make_evaluation(run, (test_a, test_b), None, tmp_path)
    assert "psnr, ssim, mae (vs each input's pair)" in line and evaluation.monitor == "psnr"
    scores = evaluation.score(lambda images: images)  # the input itself, against each one's own pair
    inputs, truths = (
        data.to_uint8(data.domain_images(d, run.test_preprocessing(n))) for d, n in ((test_a, "A"), (test_b, "B"))
    )
    assert scores["psnr"] == pytest.approx(np.mean([metrics.psnr(x, y) for x, y in zip(inputs, truths)]))
    with pytest.raises(data.DataError, match="(?s)--strict-data: Skipped 1 image file.*odd.png: width 145 is odd"):
        training.load_domains(config.make_config(**settings, strict_data=True), "train")
