import keras
import numpy as np
import pytest
import tensorflow as tf

from cyclegan_keras import networks, ops
from cyclegan_keras.layers import (
    BatchNormalization,
    Downsample,
    Dropout,
    InstanceNormalization,
    MaxLeakyReLU,
    NarrowConv2D,
    ReflectionPadding2D,
    ReLU,
    normalized,
)


def numpy_instance_norm(x, epsilon=1e-5):
    mean = x.mean(axis=(1, 2), keepdims=True)
    variance = x.var(axis=(1, 2), keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon)


def numpy_pad(x, pad, mode):
    (top, bottom), (left, right) = pad
    numpy_mode = {"reflect": "reflect", "replicate": "edge", "zero": "constant"}[mode]
    return np.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)], mode=numpy_mode)


def test_instance_norm_matches_numpy(rng):
    x = rng.normal(3.0, 2.0, (2, 5, 7, 4)).astype("float32")
    np.testing.assert_allclose(InstanceNormalization()(x), numpy_instance_norm(x), atol=1e-5)


def test_instance_norm_affine(rng):
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    layer = InstanceNormalization(center=True, scale=True)
    layer.build(x.shape)
    layer.set_weights([np.array([1.0, 2.0, 3.0], "float32"), np.array([0.5, 0.0, -0.5], "float32")])
    expected = numpy_instance_norm(x) * [1.0, 2.0, 3.0] + [0.5, 0.0, -0.5]
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)
    assert len(InstanceNormalization().weights) == 0


def test_instance_norm_config_and_symbolic():
    layer = InstanceNormalization(epsilon=1e-3, scale=True, lean_gradient=True, name="norm")
    clone = InstanceNormalization.from_config(layer.get_config())
    settings = (clone.epsilon, clone.center, clone.scale, clone.lean_gradient, clone.name)
    assert settings == (1e-3, False, True, True, "norm")
    output = layer(keras.Input((None, None, 6)))
    assert tuple(output.shape) == (None, None, None, 6)
    with pytest.raises(ValueError, match="epsilon"):
        InstanceNormalization(epsilon=0)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "zero"])
@pytest.mark.parametrize("padding", [1, 3, ((1, 2), (0, 3))])
def test_padding_matches_numpy(rng, mode, padding):
    x = rng.normal(size=(2, 6, 5, 3)).astype("float32")
    layer = ReflectionPadding2D(padding, mode=mode)
    np.testing.assert_allclose(layer(x), numpy_pad(x, layer.padding, mode))
    assert layer.compute_output_shape(x.shape) == numpy_pad(x, layer.padding, mode).shape


def test_padding_config_and_symbolic():
    layer = ReflectionPadding2D((2, 1), mode="replicate")
    clone = ReflectionPadding2D.from_config(layer.get_config())
    assert clone.padding == ((2, 2), (1, 1)) and clone.mode == "replicate"
    assert tuple(layer(keras.Input((10, None, 3))).shape) == (None, 14, None, 3)
    with pytest.raises(ValueError, match="mode"):
        ReflectionPadding2D(1, mode="circular")
    with pytest.raises(ValueError, match="padding"):
        ReflectionPadding2D(-1)


def test_pad_wider_than_image_folds_reflection(rng):
    # tf.pad(REFLECT) refuses a pad >= the side; the gather path folds again,
    # as numpy does.
    x = rng.normal(size=(1, 3, 2, 1)).astype("float32")
    padded, crop = ops.pad_to_multiple(x, 8)
    assert crop == ((2, 3), (3, 3))
    np.testing.assert_allclose(padded, numpy_pad(x, crop, "reflect"))
    np.testing.assert_allclose(ops.crop_spatial(padded, crop), x)
    one_pixel = np.ones((1, 1, 1, 2), "float32")
    np.testing.assert_allclose(ops.pad_to_multiple(one_pixel, 4)[0], np.ones((1, 4, 4, 2)))


def test_max_leaky_relu_equals_keras_leaky_relu(rng):
    x = rng.normal(size=(2, 5, 7, 4)).astype("float32")
    x[0, 0, 0] = 0.0
    np.testing.assert_array_equal(MaxLeakyReLU(0.2)(x), keras.layers.LeakyReLU(0.2)(x))
    np.testing.assert_array_equal(MaxLeakyReLU(0.2)(x), np.where(x >= 0, x, np.float32(0.2) * x))


def test_max_leaky_relu_training_gradient_is_maximums_to_the_second_order(rng):
    x = rng.normal(size=(2, 3, 4, 2)).astype("float32")
    x[0, 0, 0] = 0.0  # the tie goes to x, as Maximum's
    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    scale = tf.Variable(1.5)
    layer = MaxLeakyReLU(0.2)

    def gradients(training):
        with tf.GradientTape() as outer:
            inputs = tf.constant(x)
            with tf.GradientTape() as inner:
                inner.watch(inputs)
                loss = tf.reduce_sum(layer(inputs * scale, training=training) * upstream)
            first = inner.gradient(loss, inputs)
            penalty = tf.reduce_sum(tf.square(first))  # as WGAN-GP's, differentiated again
        return first, outer.gradient(penalty, scale)

    for ours, theirs in zip(gradients(True), gradients(False), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_max_leaky_relu_config_symbolic_and_slope():
    layer = MaxLeakyReLU(0.2, name="lrelu")
    clone = MaxLeakyReLU.from_config(layer.get_config())
    assert (clone.negative_slope, clone.name) == (0.2, "lrelu")
    assert layer(keras.Input((None, None, 6))).shape == (None, None, None, 6)
    assert keras.saving.get_registered_name(MaxLeakyReLU) == "cyclegan_keras>MaxLeakyReLU"
    with pytest.raises(ValueError, match=r"negative_slope=1.5"):
        MaxLeakyReLU(1.5)


def test_batch_norm_keeps_pytorchs_running_variance(rng):
    # nn.BatchNorm2d: normalize by the biased batch variance, track the unbiased one (momentum 0.1).
    norm = BatchNormalization(momentum=0.9, epsilon=1e-5)
    x = rng.normal(2.0, 3.0, (1, 2, 2, 3)).astype("float32")  # 4 values a channel: ddof matters by 4/3
    y = np.asarray(norm(x, training=True))
    np.testing.assert_allclose(y, (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5), atol=1e-5)
    np.testing.assert_allclose(norm.moving_variance, 0.9 + 0.1 * x.var((0, 1, 2), ddof=1), rtol=1e-6)
    np.testing.assert_allclose(norm.moving_mean, 0.1 * x.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(norm(x), keras.layers.BatchNormalization.call(norm, x), atol=1e-6)  # inference
    assert type(BatchNormalization.from_config(norm.get_config())) is BatchNormalization


def test_dropout_state_is_saved_with_the_model(tmp_path):
    # So a resumed run draws the masks the uninterrupted one would.
    inputs = keras.Input((64,))
    model = keras.Model(inputs, Dropout(0.5)(inputs))
    ones = np.ones((1, 64), "float32")
    model(ones, training=True)
    model.save(tmp_path / "dropout.keras")
    loaded = keras.models.load_model(tmp_path / "dropout.keras")
    np.testing.assert_array_equal(loaded(ones, training=True), model(ones, training=True))


def test_models_saved_with_a_narrow_conv_still_load(tmp_path, rng):
    # NarrowConv2D was a Conv2D with its own gradients for a few days; files saved then must load.
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, NarrowConv2D(3, 3, name="head_conv")(inputs))
    model.save(tmp_path / "narrow.keras")
    loaded = keras.models.load_model(tmp_path / "narrow.keras")
    x = rng.normal(size=(1, 8, 8, 4)).astype("float32")
    assert type(loaded.get_layer("head_conv")) is NarrowConv2D
    np.testing.assert_array_equal(loaded(x), model(x))


def _values_and_gradients(layer, x, upstream, training):
    """`layer(x)` and the gradients of `sum(layer(x) * upstream)` with respect to `x` and the layer's weights."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
    return y, tape.gradient(loss, [x, *layer.trainable_weights])


@pytest.mark.parametrize("affine", [False, True])
def test_lean_instance_norm_gradient_is_tensorflows(rng, affine):
    x = rng.normal(3.0, 2.0, (2, 6, 5, 4)).astype("float32")
    upstream = rng.normal(size=x.shape).astype("float32")
    layer = InstanceNormalization(center=affine, scale=affine, lean_gradient=True)
    layer.build(x.shape)
    if affine:
        layer.set_weights([rng.normal(1.0, 0.5, 4).astype("float32"), rng.normal(size=4).astype("float32")])
    lean_y, lean = _values_and_gradients(layer, x, upstream, training=True)
    y, tensorflows = _values_and_gradients(layer, x, upstream, training=False)  # TensorFlow's own gradient
    np.testing.assert_allclose(lean_y, y, atol=1e-6)
    for ours, theirs in zip(lean, tensorflows, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_lean_instance_norm_under_mixed_precision(rng):
    x = rng.normal(3.0, 2.0, (1, 8, 8, 3)).astype("float32")
    upstream = rng.normal(size=x.shape).astype("float32")
    _, (exact,) = _values_and_gradients(InstanceNormalization(), x, upstream, training=False)
    layer = InstanceNormalization(lean_gradient=True, dtype="mixed_bfloat16")
    y, (gradient,) = _values_and_gradients(layer, x.astype("float32"), upstream, training=True)
    assert y.dtype == tf.bfloat16  # the kept output is bfloat16, half of float32's memory
    # Against the float32 gradient, within bfloat16's 8 bits of the normalized output.
    np.testing.assert_allclose(gradient, exact, atol=0.05 * np.abs(exact).max())


def test_relu_gradient_reads_its_input_with_the_same_result(rng):
    x = np.concatenate([rng.normal(size=20), np.zeros(4)]).astype("float32").reshape(1, 2, 3, 4)
    upstream = rng.normal(size=x.shape).astype("float32")
    y, (gradient,) = _values_and_gradients(ReLU(), x, upstream, training=True)
    expected_y, (expected,) = _values_and_gradients(keras.layers.ReLU(), x, upstream, training=True)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(gradient, expected)  # 0 at exactly 0, as TensorFlow's
    capped = ReLU(max_value=1.0)  # settings beyond the plain ReLU take Keras's own
    np.testing.assert_array_equal(capped(x, training=True), keras.layers.ReLU(max_value=1.0)(x))


@pytest.mark.parametrize("pad_mode", ["reflect", "zero"])
def test_downsample_gradient_in_training_is_tensorflows(rng, pad_mode):
    x = rng.normal(size=(2, 7, 6, 3)).astype("float32")
    layer = Downsample(pad_mode=pad_mode)
    upstream = rng.normal(size=(2, 4, 3, 3)).astype("float32")
    lean_y, (lean,) = _values_and_gradients(layer, x, upstream, training=True)
    y, (tensorflows,) = _values_and_gradients(layer, x, upstream, training=False)
    np.testing.assert_array_equal(lean_y, y)
    np.testing.assert_allclose(lean, tensorflows, atol=1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda: networks.resnet_generator(1, 8, antialias=True, antialias_up=True),
        lambda: networks.unet_generator(5, 8),
    ],
    ids=["resnet_antialiased", "unet"],
)
def test_generators_train_on_lean_gradients_equal_to_tensorflows(rng, build, monkeypatch):
    from cyclegan_keras import layers

    generator = build()
    lean = [layer for layer in generator.layers if isinstance(layer, InstanceNormalization)]
    assert lean and all(layer.lean_gradient for layer in lean)
    x = tf.constant(rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32"))
    calls = []
    monkeypatch.setattr(layers, "normalized", lambda *args: calls.append(1) or normalized(*args))
    generator(x, training=True)  # the flag reaches every norm through the functional model
    assert len(calls) == len(lean)
    generator(x, training=False)
    assert len(calls) == len(lean)
    monkeypatch.undo()

    def kernel_gradients(training):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(generator(x, training=training) - 0.3))
        gradients = tape.gradient(loss, generator.trainable_variables)
        return [g for v, g in zip(generator.trainable_variables, gradients) if "kernel" in v.path]

    for ours, theirs in zip(kernel_gradients(True), kernel_gradients(False), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5 * float(np.abs(theirs).max()))


@pytest.mark.parametrize("model", ["cyclegan", "cut"])
def test_discriminators_are_lean_except_under_a_gradient_penalty(model):
    from cyclegan_keras import training

    def lean_norms(gan_mode):
        built = training.build_model(training.make_config(model=model, ngf=4, ndf=4, gan_mode=gan_mode))
        return {
            layer.lean_gradient
            for d in built.discriminators
            for layer in d.layers
            if isinstance(layer, InstanceNormalization)
        }

    assert lean_norms("lsgan") == {True}
    assert lean_norms("wgangp") == {False}  # the penalty differentiates D twice


def test_a_gradient_penalty_refuses_lean_discriminators():
    from cyclegan_keras import CycleGAN

    generators = [networks.resnet_generator(1, 4) for _ in range(2)]
    discriminators = [networks.patchgan_discriminator(filters=4, lean_gradient=True) for _ in range(2)]
    model = CycleGAN(*generators, *discriminators)
    with pytest.raises(ValueError, match=r"wgangp.*twice.*lean_gradient=False"):
        model.compile(gan_mode="wgangp")
    model.compile(gan_mode="lsgan")
