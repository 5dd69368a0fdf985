"""Keras layers the CycleGAN networks need and Keras does not ship, registered serializable."""

from __future__ import annotations

import keras
import tensorflow as tf

from cyclegan_keras import ops


def _spatial_mean(x):
    """Mean over H and W, one axis at a time.

    TFLite accumulates sequentially in float32: with one reduction over
    256x256 values a small generator's TFLite output was 1e-3 away from
    TensorFlow's; reducing each axis apart (hundreds of values), 8e-6.
    """
    return tf.reduce_mean(tf.reduce_mean(x, axis=1, keepdims=True), axis=2, keepdims=True)


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class InstanceNormalization(keras.layers.Layer):
    """Instance normalization: each sample and channel normalized over H and W.

    Equal to PyTorch's `nn.InstanceNorm2d(affine=False,
    track_running_stats=False)` by default, as the CycleGAN reference uses it:
    no learned scale or offset, no running statistics, the same computation in
    training and inference. The variance is the biased one.

    Why not `keras.layers.GroupNormalization(groups=-1)`, which computes the
    same as fast (bench/results/instance_norm.json): exported to TFLite this
    layer drifts less from TensorFlow (max abs 9e-6 vs 3e-5 at 256x256, see
    `_spatial_mean`), keeps its statistics in float32 under mixed precision,
    and has PyTorch's `InstanceNorm2d` defaults, which the converter uses.

    Args:
        epsilon: float. Added to the variance. Defaults to `1e-5`.
        center: bool. Learn a per-channel offset (PyTorch `affine=True`).
            Defaults to `False`.
        scale: bool. Learn a per-channel scale (PyTorch `affine=True`).
            Defaults to `False`.

    Reference:
        Ulyanov et al., "Instance Normalization: The Missing Ingredient for
        Fast Stylization", arXiv 1607.08022.
    """

    def __init__(self, epsilon: float = 1e-5, center: bool = False, scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive. Received: epsilon={epsilon}")
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"InstanceNormalization needs a known channel count. Received: input_shape={input_shape}")
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma") if self.scale else None
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta") if self.center else None

    def call(self, inputs):
        return self.normalize(inputs, *self.moments(inputs))

    def moments(self, inputs):
        """`(mean, variance)` of each sample and channel over H and W, float32 `(n, 1, 1, c)`."""
        # Statistics in float32 even under mixed precision: a float16 variance
        # of a large feature map underflows.
        x = tf.cast(inputs, "float32")
        mean = _spatial_mean(x)
        return mean, _spatial_mean(tf.math.squared_difference(x, mean))

    def normalize(self, inputs, mean, variance):
        """`inputs` normalized with the given statistics (tiled inference passes the whole image's)."""
        x = tf.cast(inputs, "float32")
        outputs = (x - mean) * tf.math.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            outputs = outputs * tf.cast(self.gamma, outputs.dtype)
        if self.beta is not None:
            outputs = outputs + tf.cast(self.beta, outputs.dtype)
        return tf.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, center=self.center, scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class ReflectionPadding2D(keras.layers.Layer):
    """Pads height and width by reflection or replication, as `keras.layers.ZeroPadding2D` pads with zeros.

    The networks pad with zeros by `ZeroPadding2D`; `mode="zero"` is
    accepted so that models saved before that still load.

    Args:
        padding: int, `(height_pad, width_pad)` or
            `((top, bottom), (left, right))`. Defaults to `1`.
        mode: `"reflect"` (PyTorch `ReflectionPad2d`: the edge pixel is not
            repeated) or `"replicate"` (`ReplicationPad2d`). Defaults to
            `"reflect"`.
    """

    def __init__(
        self,
        padding: int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] = 1,
        mode: str = "reflect",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in ops.PAD_MODES:
            raise ValueError(f"mode must be one of {ops.PAD_MODES}. Received: mode={mode!r}")
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        elif len(padding) == 2 and all(isinstance(p, int) for p in padding):
            padding = ((padding[0], padding[0]), (padding[1], padding[1]))
        padding = tuple(tuple(int(v) for v in p) for p in padding)
        if len(padding) != 2 or any(len(p) != 2 or min(p) < 0 for p in padding):
            raise ValueError(
                "padding must be a non-negative int, a pair of ints or a pair "
                f"of pairs of ints. Received: padding={padding}"
            )
        self.padding = padding
        self.mode = mode
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        return ops.pad_spatial(inputs, self.padding, self.mode)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        (top, bottom), (left, right) = self.padding
        height = None if height is None else height + top + bottom
        width = None if width is None else width + left + right
        return (batch, height, width, channels)

    def get_config(self):
        config = super().get_config()
        config.update(padding=self.padding, mode=self.mode)
        return config


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class MaxLeakyReLU(keras.layers.LeakyReLU):
    """`keras.layers.LeakyReLU` computed as `maximum(x, negative_slope * x)`.

    The same function for `0 <= negative_slope <= 1`, and the same values to
    the last bit (both round `negative_slope * x` once); the gradient differs
    only at exactly 0 (1 instead of the slope), as subgradients may.

    Why not Keras's layer: in a training step TensorFlow's grappler
    remapper fuses Conv2D + BiasAdd + LeakyRelu (tensorflow/tensorflow#42551)
    though `LeakyReluGrad` still reads the BiasAdd, so the whole pass fails
    (`remapper failed: ... fanout '.../LeakyReluGrad' exist for missing node
    '.../BiasAdd'`) and drops every other fusion of the graph. The
    discriminators' first convolution and the U-Net's encoder have this
    pattern; `Maximum` and `Mul` match no fusion.

    Args:
        negative_slope: float in [0, 1]. Slope for `x < 0`. Defaults to `0.3`
            (Keras's default; the CycleGAN networks use `0.2`).
    """

    def __init__(self, negative_slope: float = 0.3, **kwargs):
        super().__init__(negative_slope=negative_slope, **kwargs)
        if not 0.0 <= negative_slope <= 1.0:
            raise ValueError(f"negative_slope must be in [0, 1]. Received: negative_slope={negative_slope}")

    def call(self, inputs):
        return keras.ops.maximum(inputs, inputs * self.negative_slope)
