"""CUT and FastCUT: the anti-aliased layers and networks, PatchNCE and the head against the authors'
PyTorch code (fixtures from tests/torch_cut_reference.py), and the model's step, saving and resume."""

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_CUT_FLAGS, run_cli, tiny_cut

from cyclegan_keras import convert, networks
from cyclegan_keras.cut import CUT, PatchSampleMLP, _mirrored, layer_mean_nce, patch_nce_loss, sample_ids
from cyclegan_keras.layers import Downsample, Upsample, blur_filter

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CUT_LOSSES = ["disc_b_loss", "gen_ab_loss", "nce_idt_loss", "nce_loss"]


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "cut_reference.npz"))


def numpy_blur(x, kernel, stride):
    """Per-channel valid correlation of NHWC `x` with `kernel`, at `stride`."""
    k = kernel.shape[0]
    rows = (x.shape[1] - k) // stride + 1
    cols = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], rows, cols, x.shape[3]))
    for i in range(rows):
        for j in range(cols):
            window = x[:, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, i, j] = np.einsum("nhwc,hw->nc", window, kernel)
    return out


def numpy_upsample(x, size, stride):
    """The reference's `Upsample` on NHWC `x`, from its definition: replicate-pad 1, transposed convolution
    with `binomial * stride` on each axis, padding 1 + (size - 1) // 2, the first (and, even, last) output cut."""
    row = np.array([math.comb(size - 1, k) for k in range(size)], "float64")
    taps = row / row.sum() * stride
    padding = 1 + (size - 1) // 2
    for axis in (1, 2):
        padded = np.moveaxis(np.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(4)], mode="edge"), axis, 0)
        full = np.zeros((stride * (len(padded) - 1) + size, *padded.shape[1:]))
        for i, value in enumerate(padded):
            for t in range(size):
                full[stride * i + t] += taps[t] * value
        out = full[padding : len(full) - padding][1:]
        x = np.moveaxis(out if size % 2 else out[:-1], 0, axis)
    return x


# -- Layers -------------------------------------------------------------------------------


def test_blur_filters_are_the_reference_ones():
    np.testing.assert_allclose(blur_filter(3), np.outer([1, 2, 1], [1, 2, 1]) / 16)
    np.testing.assert_allclose(blur_filter(4), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)
    with pytest.raises(ValueError, match="filter_size=8"):
        blur_filter(8)


def test_downsample_and_upsample_equal_pytorch_and_numpy(reference):
    x = reference["blur_input"]  # 7x10: an odd side
    down, up = Downsample(), Upsample()
    np.testing.assert_allclose(down(x), reference["downsample"], atol=1e-6)
    np.testing.assert_allclose(up(x), reference["upsample"], atol=1e-6)
    reflected = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    np.testing.assert_allclose(down(x), numpy_blur(reflected, blur_filter(3), 2), atol=1e-6)
    # [1, 3, 3, 1] transposed, stride 2, edges replicated: the bilinear (half-pixel) interpolation.
    bilinear = tf.image.resize(x, (14, 20), method="bilinear")
    np.testing.assert_allclose(up(x), bilinear, atol=1e-6)
    assert down.compute_output_shape(x.shape) == (2, 4, 5, 3) and up.compute_output_shape(x.shape) == (2, 14, 20, 3)


def test_blur_layers_config_symbolic_and_errors():
    for layer in (Downsample(filter_size=5, pad_mode="zero", name="d"), Upsample(strides=3, name="u")):
        clone = type(layer).from_config(layer.get_config())
        assert (clone.filter_size, clone.strides, clone.pad_mode, clone.name) == (
            layer.filter_size,
            layer.strides,
            layer.pad_mode,
            layer.name,
        )
        assert not layer.weights  # fixed filters, as the reference's buffers
    assert Downsample()(keras.Input((None, 9, 6))).shape == (None, None, 5, 6)
    assert Upsample()(keras.Input((7, None, 6))).shape == (None, 14, None, 6)
    x = np.random.default_rng(0).normal(size=(1, 5, 4, 2)).astype("float32")
    for size, stride in ((4, 2), (3, 2), (4, 3), (5, 2), (2, 2), (7, 3)):
        layer = Upsample(filter_size=size, strides=stride)
        output = np.asarray(layer(x))
        np.testing.assert_allclose(output, numpy_upsample(x, size, stride), atol=1e-5, err_msg=(size, stride))
        assert output.shape == layer.compute_output_shape(x.shape), layer.get_config()
    down = Downsample(filter_size=4, strides=3)
    assert np.asarray(down(x)).shape == down.compute_output_shape(x.shape)
    with pytest.raises(ValueError, match="pad_mode"):
        Downsample(pad_mode="circular")
    with pytest.raises(ValueError, match="filter_size must be at least 2"):
        Upsample(filter_size=1)
    assert keras.saving.get_registered_name(Downsample) == "cyclegan_keras>Downsample"


# -- Networks and conversion ------------------------------------------------------------------


def test_antialiased_networks_keep_the_convolutions_and_sizes():
    # The same convolutions, other strides: the reference's counts (resnet_9blocks 11,378,179, basic
    # PatchGAN 2,764,737) hold for CUT's networks too.
    generator = networks.resnet_generator(n_blocks=2, filters=8, antialias=True, antialias_up=True)
    assert generator.count_params() == networks.resnet_generator(n_blocks=2, filters=8).count_params()
    assert (networks.size_multiple(generator), networks.min_size(generator)) == (4, 8)
    assert generator(np.zeros((1, 8, 12, 3), "float32")).shape == (1, 8, 12, 3)
    discriminator = networks.patchgan_discriminator(filters=8, antialias=True)
    assert discriminator.count_params() == networks.patchgan_discriminator(filters=8).count_params()
    assert discriminator.compute_output_shape((1, 256, 256, 3)) == (1, 30, 30, 1)
    assert [layer.name for layer in discriminator.layers if isinstance(layer, Downsample)] == [
        "conv0_blur",
        "conv1_blur",
        "conv2_blur",
    ]


def test_reference_numbering_of_the_generator_layers():
    antialiased = networks.resnet_generator(n_blocks=9, filters=2, antialias=True, antialias_up=True)
    sequence = networks.reference_layers(antialiased)
    assert len(sequence) == 32  # the reference's nn.Sequential of CUT's resnet_9blocks
    assert [sequence[i] for i in (0, 4, 8, 12, 16)] == [
        "stem_conv_pad",
        "down0_conv",
        "down1_conv",
        "res0_add",
        "res4_add",
    ]
    plain = networks.reference_layers(networks.resnet_generator(n_blocks=9, filters=2, norm="none"))
    assert len(plain) == 28 and plain[2] == "stem_conv" and plain[10] == "res0_add"
    with pytest.raises(ValueError, match="ResnetGenerator"):
        networks.reference_layers(networks.unet_generator(num_downs=5, filters=2))
    with pytest.raises(ValueError, match=r"indexes 0\.\.19 of the layers of generator 'resnet_1blocks'"):
        networks.encoder_features(networks.resnet_generator(n_blocks=1, filters=2), (0, 25))


@pytest.mark.parametrize(
    "name, antialias",
    [("cut_tiny", (True, True)), ("cut_tiny_no_antialias_up", (True, False)), ("cut_tiny_no_antialias", (False, True))],
)
def test_converted_cut_generator_equals_pytorch(reference, name, antialias):
    # The anti-aliased layout (and its filt buffers) is recognised from the keys.
    generator = convert.load_torch_generator(FIXTURES / f"{name}.pth")
    _, settings = convert.infer_architecture(convert.read_state_dict(FIXTURES / f"{name}.pth"))
    assert (settings["antialias"], settings["antialias_up"]) == antialias
    error = float(np.max(np.abs(np.asarray(generator(reference["input"])) - reference[name])))
    assert error < 1e-5, error
    if name == "cut_tiny":  # and the encoder's NCE features, layer for layer
        features = networks.encoder_features(generator)(reference["input"])
        for layer, feature in zip((0, 4, 8, 12, 16), features):
            np.testing.assert_allclose(feature, reference[f"cut_tiny_layer{layer}"], atol=1e-5, err_msg=layer)


@pytest.mark.slow
def test_full_size_antialiased_generator_equals_pytorch(tmp_path):
    # Where torch is installed (not a dependency): CUT's resnet_9blocks at 256x256, measured 1.7e-5.
    torch = pytest.importorskip("torch")
    import torch_cut_reference as reference

    net = reference.init_weights(reference.ResnetGenerator(3, 3, ngf=64, n_blocks=9), seed=3)
    images = np.random.default_rng(1).uniform(-1, 1, (1, 256, 256, 3)).astype("float32")
    with torch.no_grad():
        expected = reference.nhwc(net(reference.nchw(images)))
    torch.save(net.state_dict(), tmp_path / "latest_net_G.pth")
    generator = convert.load_torch_generator(tmp_path / "latest_net_G.pth")
    assert generator.count_params() == 11_378_179
    assert float(np.max(np.abs(np.asarray(generator(images)) - expected))) < 1e-4


def test_a_changed_blur_buffer_is_refused():
    state = convert.read_state_dict(FIXTURES / "cut_tiny.pth")
    state["model.7.filt"] = state["model.7.filt"] * 2
    with pytest.raises(convert.ConversionError, match=r"model.7.filt is not the reference's fixed blur"):
        convert.infer_architecture(state)


# -- PatchNCE ---------------------------------------------------------------------------------


def _nce_case(reference):
    layers = range(3)
    head = PatchSampleMLP([reference[f"nce_feat_q{i}"].shape[-1] for i in layers], units=8)
    head.set_weights(
        [reference[f"nce_mlp{i}_dense{d}_{w}"] for i in layers for d in (0, 1) for w in ("kernel", "bias")]
    )
    queries = [tf.constant(reference[f"nce_feat_q{i}"]) for i in layers]
    keys = [tf.constant(reference[f"nce_feat_k{i}"]) for i in layers]
    ids = [tf.constant(reference[f"nce_ids{i}"], tf.int32) for i in layers]
    return head, queries, keys, ids


@pytest.mark.parametrize("all_negatives", [False, True])
def test_patch_nce_and_its_gradients_equal_pytorch(reference, all_negatives):
    # Batch 2, three layers (3, 8, 16 channels), 20 samples but 16 locations in the last; the
    # gradients with respect to both feature sets (the key's taken without the reference's detach).
    head, queries, keys, ids = _nce_case(reference)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(queries + keys)
        loss = layer_mean_nce(head(queries, sample_ids=ids), head(keys, sample_ids=ids), ids, 1.0, 0.07, all_negatives)
    suffix = "_all" if all_negatives else ""
    np.testing.assert_allclose(float(loss), reference[f"nce_loss{suffix}"], atol=1e-5)
    errors = []
    for name, features in (("q", queries), ("k", keys)):
        for layer, gradient in enumerate(tape.gradient(loss, features)):
            expected = reference[f"nce_grad_{name}{layer}{suffix}"]
            assert np.abs(expected).max() > 1e-4  # a gradient to compare
            errors.append(float(np.abs(np.asarray(gradient) - expected).max()))
    assert max(errors) < 1e-5, errors


def test_patch_nce_matches_its_definition_in_numpy(rng):
    query = rng.normal(size=(6, 4)).astype("float32")
    key = rng.normal(size=(6, 4)).astype("float32")
    loss = np.asarray(patch_nce_loss(query, key, batch_size=2, temperature=0.5))
    expected = []
    for row in range(6):
        image = row // 3
        others = [key[j] @ query[row] if j != row else -10.0 for j in range(image * 3, image * 3 + 3)]
        logits = np.array([query[row] @ key[row], *others]) / 0.5
        expected.append(np.log(np.exp(logits).sum()) - logits[0])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_sample_ids_are_distinct_locations_and_follow_the_seed():
    features = [tf.zeros((2, 4, 5, 3)), tf.zeros((2, 30, 30, 1))]
    ids = sample_ids(features, 16, keras.random.SeedGenerator(1))
    assert [len(i) for i in ids] == [16, 16] and len(set(ids[0].numpy())) == 16
    assert int(tf.reduce_max(ids[0])) < 20 and len(sample_ids(features[:1], 64, 3)[0]) == 20  # all 20 locations
    again = sample_ids(features, 16, keras.random.SeedGenerator(1))
    np.testing.assert_array_equal(ids[1], again[1])
    assert not np.array_equal(sample_ids(features, 16, keras.random.SeedGenerator(2))[1], ids[1])


# -- The model ----------------------------------------------------------------------------------


def unpaired(rng, n=2, size=32, batch_size=2):
    a = rng.uniform(-1, 1, (n, size, size, 3)).astype("float32")
    b = rng.uniform(-1, 1, (n, size, size, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((a, b)).batch(batch_size), a, b


def weights_of(network):
    return [np.array(v) for v in network.weights]


def test_one_step_trains_the_generator_the_head_and_the_discriminator(rng, tmp_path):
    from PIL import Image

    from cyclegan_keras.callbacks import ImageSnapshot

    model = tiny_cut()
    model.compile(num_patches=16, run_eagerly=True)
    data, a, b = unpaired(rng)
    networks_ = [model.generator_ab, model.patch_sampler, model.discriminator_b]
    before = [weights_of(network) for network in networks_]
    history = model.fit(data, epochs=1, verbose=0).history
    for network, old in zip(networks_, before):
        changed = [not np.array_equal(w, o) for w, o in zip(weights_of(network), old)]
        assert all(changed), f"{network.name}: {changed.count(False)} weights unchanged"
    assert sorted(history) == CUT_LOSSES
    assert int(model.generator_optimizer.iterations) == int(model.discriminator_optimizer.iterations) == 1
    # The head trains with G's optimizer (so the schedule sets its rate too).
    assert {v.path for v in model.patch_sampler.trainable_variables} <= {v.path for v in model.generator_variables}
    snapshot = ImageSnapshot(a[:1], b[:1], tmp_path, cell_size=32)
    snapshot.set_model(model)
    snapshot.on_epoch_end(0, {name: values[-1] for name, values in history.items()})
    with Image.open(tmp_path / "epoch_001.png") as grid:  # real_a | fake_b | real_b | idt_b
        assert grid.size == (4 * 32, 32 + ImageSnapshot.TITLE_PIXELS)


def test_the_identity_term_under_its_own_tape_takes_the_same_step(rng, monkeypatch):
    # real_b's translation is made after real_a's gradients are taken (half the activations kept at once);
    # the step must be the one of a single tape over both, as the reference's netG(cat(real_A, real_B)).
    data, _, _ = unpaired(rng)
    models = [tiny_cut(seed=3), tiny_cut(seed=3)]
    models[1].set_weights(models[0].get_weights())
    for model in models:
        model.compile(keras.optimizers.SGD(0.5), keras.optimizers.SGD(0.5), num_patches=16, run_eagerly=True)
    assert models[0]._tape_groups(2) == [[0], [1]]
    monkeypatch.setattr(models[1], "_tape_groups", lambda parts: [list(range(parts))])
    before = [np.array(v) for v in models[0].generator_variables]
    split, together = (model.fit(data, epochs=1, verbose=0).history for model in models)
    for name in CUT_LOSSES:
        np.testing.assert_allclose(split[name], together[name], rtol=1e-5, err_msg=name)
    for ours, theirs, old in zip(models[0].generator_variables, models[1].generator_variables, before, strict=True):
        expected = np.array(theirs) - old  # SGD: the gradient, times the rate
        np.testing.assert_allclose(
            np.array(ours) - old, expected, atol=1e-5 * np.abs(expected).max() + 1e-6, err_msg=ours.path
        )
    with_batch_norm = CUT(networks.resnet_generator(1, 4, norm="batch"), networks.patchgan_discriminator(filters=4))
    assert with_batch_norm._tape_groups(2) == [[0, 1]]  # its statistics are of both parts, as the reference's


def test_the_keys_come_with_the_translation(rng):
    # The step takes the keys (G's features of real_a) from G's forward pass instead of a second encoder pass.
    model = tiny_cut()
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    fake, *features = model._translator(x, training=True)
    np.testing.assert_array_equal(fake, model.generator_ab(x, training=True))
    for ours, theirs in zip(features, networks.encoder_features(model.generator_ab)(x, training=True), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_mirrored_locations_sample_the_flipped_map(rng):
    # FastCUT's mirrored steps sample the query maps at mirrored locations instead of flipping the maps back.
    feature = tf.constant(rng.normal(size=(2, 5, 7, 3)).astype("float32"))
    ids = tf.constant([0, 6, 7, 20, 34])

    def sampled(maps, locations):
        return tf.gather(tf.reshape(maps, (2, -1, 3)), locations, axis=1)

    flipped = sampled(tf.reverse(feature, axis=[2]), ids)
    np.testing.assert_array_equal(sampled(feature, _mirrored(tf.constant(True), ids, feature)), flipped)
    np.testing.assert_array_equal(_mirrored(tf.constant(False), ids, feature), ids)


def test_losses_follow_the_objective(rng):
    # evaluate() draws the locations from the fixed seed: recompute each loss from the parts.
    model = tiny_cut(seed=5)
    model.compile(lambda_nce=2.0, num_patches=16, run_eagerly=True)
    _, a, b = unpaired(rng)
    results = model.evaluate(a, b, batch_size=2, verbose=0, return_dict=True)
    g, d, head = model.generator_ab, model.discriminator_b, model.patch_sampler
    encoder = networks.encoder_features(g)
    mse = lambda x, t: np.mean((np.asarray(x) - t) ** 2)  # noqa: E731

    def nce(source, target):
        keys = encoder(source)
        ids = sample_ids(keys, 16, 5)
        return float(layer_mean_nce(head(encoder(target), sample_ids=ids), head(keys, sample_ids=ids), ids, 2.0))

    fake_b, idt_b = g(a), g(b)
    expected = {
        "gen_ab_loss": mse(d(fake_b), 1.0),
        "disc_b_loss": 0.5 * (mse(d(fake_b), 0.0) + mse(d(b), 1.0)),
        "nce_loss": nce(a, fake_b),
        "nce_idt_loss": nce(b, idt_b),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(results[name], value, rtol=1e-4, err_msg=name)


def test_fastcut_settings_and_refusals():
    # FastCUT's step (the flips) trains in test_save_load_and_resume_exactly.
    model = tiny_cut()
    model.compile(lambda_nce=10.0, nce_idt=False, flip_equivariance=True, num_patches=16)
    assert [metric.name for metric in model.metrics] == ["gen_ab_loss", "nce_loss", "disc_b_loss"]
    assert model.get_compile_config()["flip_equivariance"] and model.plateau_monitor == "nce_loss"
    with pytest.raises(ValueError, match="gan_mode"):
        model.compile(gan_mode="hinge")
    with pytest.raises(ValueError, match="num_patches"):
        model.compile(num_patches=0)
    with pytest.raises(ValueError, match="nce_idt=False"):
        tiny_cut(channels=1).__class__(
            networks.resnet_generator(n_blocks=1, filters=4, input_channels=1, output_channels=3),
            networks.patchgan_discriminator(filters=4),
        ).compile()
    with pytest.raises(ValueError, match=r"CUT learns one direction, a2b.*Received: direction='b2a'"):
        model.translate(np.zeros((1, 8, 8, 3), "float32"), "b2a")


def test_save_load_and_resume_exactly(rng, tmp_path):
    # The flips, the sample locations, Adam over G and the head: a loaded model continues as the original.
    model = tiny_cut()
    model.compile(lambda_nce=10.0, flip_equivariance=True, num_patches=16, run_eagerly=True)
    data, a, _ = unpaired(rng)
    model.fit(data, epochs=1, verbose=0)
    model.save(tmp_path / "cut.keras")
    loaded = keras.models.load_model(tmp_path / "cut.keras")
    assert type(loaded) is CUT and loaded.objective == model.objective and loaded.nce_layers == (0, 4, 8, 12, 16)
    np.testing.assert_array_equal(loaded.generator_ab(a), model.generator_ab(a))
    np.testing.assert_array_equal(loaded.seed_generator.state, model.seed_generator.state)
    loaded.run_eagerly = True
    model.fit(data, epochs=1, verbose=0)
    loaded.fit(data, epochs=1, verbose=0)
    assert int(loaded.generator_optimizer.iterations) == 2
    for v1, v2 in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(v2, v1, atol=1e-6, err_msg=v1.path)
    for v1, v2 in zip(model.generator_optimizer.variables, loaded.generator_optimizer.variables):
        np.testing.assert_allclose(v2, v1, atol=1e-6, err_msg=v1.path)


# -- The command line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "cut", "--pool-size", "3"], "--pool-size means nothing for --model cut: it is a setting of"),
        (["--lambda-nce", "10"], "--lambda-nce means nothing for --model cyclegan: it is a setting of --model cut"),
        (["--model", "fastcut", "--generator", "unet_256"], "--generator unet_256 cannot be used with --model fastcut"),
        (["--model", "cut", "--nce-layers", "0,4,29"], "--nce-layers 0,4,29: --generator resnet_6blocks has layers"),
        (["--model", "cut", "--nce-layers", "4,0"], "argument --nce-layers: must be increasing layer indexes"),
        (["--model", "cut", "--input-nc", "1"], "--nce-idt translates B images"),
    ],
)
def test_settings_of_another_method_are_refused_in_one_line(tmp_path, capsys, argv, message):
    from cyclegan_keras.cli import train

    code, output = run_cli(train.main, [*argv, "--workdir", tmp_path / "run"], capsys)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], output
    assert not (tmp_path / "run").exists()


def _train_cut(workdir, capsys, *flags):
    from cyclegan_keras.cli import train

    argv = [*TINY_CUT_FLAGS, "--synthetic-count", 2, "--n-epochs", 1, "--n-epochs-decay", 0, "--steps-per-epoch", 1]
    argv += flags
    code, output = run_cli(train.main, [*argv, "--workdir", workdir], capsys)
    assert code == 0, output
    return output


def _images(folder, count=2, size=(24, 20)):
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((*size, 3), 50 * (i + 1), np.uint8)).save(folder / f"{i}.png")
    return folder


def test_train_py_trains_cut_and_translate_py_takes_its_one_direction(
    tmp_path, capsys, eager_steps, one_residual_block
):
    from PIL import Image

    from cyclegan_keras.cli import translate

    workdir = tmp_path / "run"
    output = _train_cut(workdir, capsys, "--snapshot-every-epochs", 0)  # the snapshot: test_one_step_...
    assert "Synthetic test set: mean |G(a) - true mapping|" in output
    header = (workdir / "log.csv").read_text().splitlines()[0].split(",")
    assert {"nce_loss", "nce_idt_loss", "gen_ab_loss", "disc_b_loss", "lr"} <= set(header)
    model = keras.models.load_model(workdir / "model.keras")
    assert type(model) is CUT and model.objective["nce_idt"] and model.objective["num_patches"] == 16
    assert model.generator_ab.get_layer("down0_blur") and model.discriminator_b.get_layer("conv0_blur")
    inputs = _images(tmp_path / "inputs")
    code, output = run_cli(translate.main, ["--model", workdir, "--input", inputs, "--out", tmp_path / "out"], capsys)
    assert code == 0, output
    with Image.open(tmp_path / "out" / "0.png") as image:
        assert image.size == (20, 24)
    code, output = run_cli(
        translate.main, ["--model", workdir, "--input", inputs, "--out", tmp_path / "b2a", "--direction", "b2a"], capsys
    )
    assert code == 2 and "error: argument --direction: CUT learns one direction, a2b" in output
    assert not (tmp_path / "b2a").exists()


# train.py, export.py (SavedModel and TFLite, verified in a fresh process) and evaluate.py: 45 s.
@pytest.mark.slow
def test_a_trained_fastcut_exports_and_evaluates(tmp_path, capsys, eager_steps, small_inception):
    import json

    from cyclegan_keras.cli import evaluate, export

    workdir = tmp_path / "run"
    _train_cut(workdir, capsys, "--model", "fastcut")
    code, output = run_cli(export.main, ["--model", workdir, "--out", tmp_path / "exported"], capsys)
    assert code == 0, output
    report = json.loads((tmp_path / "exported" / "export_report.json").read_text())
    assert all(artifact["max_abs_error"] < 1e-4 for artifact in report["artifacts"]), report["artifacts"]
    code, output = run_cli(export.main, ["--model", workdir, "--out", tmp_path / "b2a", "--direction", "b2a"], capsys)
    assert code == 2 and "CUT learns one direction" in output
    inputs, reals = _images(tmp_path / "inputs", 3), _images(tmp_path / "reals", 3)
    for model in (workdir, tmp_path / "exported"):
        argv = ["--model", model, "--input", inputs, "--real", reals, "--inception-weights", small_inception]
        code, output = run_cli(evaluate.main, [*argv, "--json", tmp_path / f"{model.name}.json"], capsys)
        assert code == 0, output
        assert np.isfinite(json.loads((tmp_path / f"{model.name}.json").read_text())["fid"])
