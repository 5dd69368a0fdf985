import keras
import numpy as np
import pytest

from cyclegan_keras import ops
from cyclegan_keras.layers import (
    BatchNormalization,
    Dropout,
    InstanceNormalization,
    MaxLeakyReLU,
    NarrowConv2D,
    ReflectionPadding2D,
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
    layer = InstanceNormalization(epsilon=1e-3, scale=True, name="norm")
    clone = InstanceNormalization.from_config(layer.get_config())
    assert (clone.epsilon, clone.center, clone.scale, clone.name) == (1e-3, False, True, "norm")
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
