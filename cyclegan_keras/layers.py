"""Keras layers the CycleGAN networks need and Keras does not ship, registered serializable."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import ops


def _spatial_mean(x):
    """Mean over H and W, one axis at a time.

    TFLite sums sequentially in float32: one 256x256 reduction put its output 1e-3 from TensorFlow's, two 8e-6.
    """
    return tf.reduce_mean(tf.reduce_mean(x, axis=1, keepdims=True), axis=2, keepdims=True)


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class InstanceNormalization(keras.layers.Layer):
    """Instance normalization (Ulyanov et al.), by default PyTorch's `nn.InstanceNorm2d()` as the reference uses it.

    Not `GroupNormalization(groups=-1)`, as fast: exported to TFLite this drifts less (max abs 9e-6 vs
    3e-5 at 256x256), and it keeps its statistics in float32 under mixed precision.

    Args:
        center, scale: learn a per-channel offset and scale (PyTorch `affine=True`).
    """

    def __init__(
        self, epsilon: float = 1e-5, center: bool = False, scale: bool = False, lean_gradient: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive. Received: epsilon={epsilon}")
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.lean_gradient = lean_gradient
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"InstanceNormalization needs a known channel count. Received: input_shape={input_shape}")
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma") if self.scale else None
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta") if self.center else None

    def call(self, inputs, training=None):
        if not (training and self.lean_gradient):
            return self.normalize(inputs, *self.moments(inputs))
        outputs = normalized(inputs, self.epsilon)
        if self.gamma is None and self.beta is None:
            return outputs  # kept by its gradient: no float32 copy
        return self._scaled(tf.cast(outputs, "float32"))

    def moments(self, inputs):
        """`(mean, variance)` of each sample and channel over H and W, float32 `(n, 1, 1, c)`."""
        # In float32 even under mixed precision: a float16 variance of a large feature map underflows.
        x = tf.cast(inputs, "float32")
        mean = _spatial_mean(x)
        return mean, _spatial_mean(tf.math.squared_difference(x, mean))

    def normalize(self, inputs, mean, variance):
        """`inputs` normalized with the given statistics (tiled inference passes the whole image's)."""
        x = tf.cast(inputs, "float32")
        return self._scaled((x - mean) * tf.math.rsqrt(variance + self.epsilon))

    def _scaled(self, outputs):
        """The normalized float32 `outputs` times gamma plus beta, where learned, in the compute dtype."""
        if self.gamma is not None:
            outputs = outputs * tf.cast(self.gamma, outputs.dtype)
        if self.beta is not None:
            outputs = outputs + tf.cast(self.beta, outputs.dtype)
        return tf.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, center=self.center, scale=self.scale, lean_gradient=self.lean_gradient)
        return config


def normalized(x, epsilon=1e-5):
    """`x` normalized per sample and channel over H and W (statistics in float32), in `x`'s dtype.

    Its gradient keeps only the output and the inverse deviation: `dx = (dy - mean(dy) - y * mean(dy * y))
    / std`, where TensorFlow's own keeps the input and the centred input as well. Not twice
    differentiable (the second derivative through the statistics is lost): not for a discriminator
    under a gradient penalty.
    """

    @tf.custom_gradient
    def normalize(x):
        x32 = tf.cast(x, "float32")
        mean = _spatial_mean(x32)
        inverse_std = tf.math.rsqrt(_spatial_mean(tf.math.squared_difference(x32, mean)) + epsilon)
        y = tf.cast((x32 - mean) * inverse_std, x.dtype)

        def gradient(dy):
            y32, dy32 = tf.cast(y, "float32"), tf.cast(dy, "float32")
            dx = inverse_std * (dy32 - _spatial_mean(dy32) - y32 * _spatial_mean(dy32 * y32))
            return tf.cast(dx, x.dtype)

        return y, gradient

    return normalize(x)


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class NarrowConv2D(keras.layers.Conv2D):
    """A plain `Conv2D`, kept under this name so that `.keras` files saved with it still load.

    For a few days the generators' last convolution and the discriminators' logits computed their
    gradients by forward convolutions: less memory on a CPU without AVX-512 (whose oneDNN kernels
    build im2col buffers), but a process-killing oneDNN CHECK on CPUs with it, where TensorFlow's
    kernels need no buffer anyway. The networks build `Conv2D`s again; the weights are the same.
    """


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class ReflectionPadding2D(keras.layers.Layer):
    """Pads height and width by reflection or replication, as `keras.layers.ZeroPadding2D` pads with zeros.

    Args:
        padding: int, `(height_pad, width_pad)` or `((top, bottom), (left, right))`.
        mode: `"reflect"` (PyTorch `ReflectionPad2d`) or `"replicate"`; `"zero"` loads older models.
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
    """`keras.layers.LeakyReLU` as `maximum(x, negative_slope * x)`: the same values; gradient 1 at exactly 0.

    Grappler's remapper fuses Conv2D + BiasAdd + LeakyRelu though `LeakyReluGrad` reads the BiasAdd, so
    the pass fails and drops every fusion of the graph (tensorflow/tensorflow#42551); `Maximum` fuses none.
    In training its gradient keeps only the input, where `Maximum`'s keeps the scaled input too.

    Args:
        negative_slope: in [0, 1].
    """

    def __init__(self, negative_slope: float = 0.3, **kwargs):
        super().__init__(negative_slope=negative_slope, **kwargs)
        if not 0.0 <= negative_slope <= 1.0:
            raise ValueError(f"negative_slope must be in [0, 1]. Received: negative_slope={negative_slope}")

    def call(self, inputs, training=None):
        if not training:
            return keras.ops.maximum(inputs, inputs * self.negative_slope)
        slope = tf.cast(self.negative_slope, inputs.dtype)

        @tf.custom_gradient
        def leaky_relu(x):
            # Maximum's gradient, ties (x = 0) to x: twice differentiable as it (the mask has no gradient).
            return tf.maximum(x, x * slope), lambda dy: tf.where(x >= 0, dy, dy * slope)

        return leaky_relu(inputs)


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class ReLU(keras.layers.ReLU):
    """`keras.layers.ReLU` whose gradient in training reads its input, where TensorFlow's reads the output.

    After an `InstanceNormalization(lean_gradient=True)`, whose gradient keeps its output (this
    layer's input) anyway, the ReLU's output is freed once the next layer has read it: one
    activation map fewer to keep per block. The same values and gradient (0 at exactly 0).
    """

    def call(self, inputs, training=None):
        if not training or self.max_value is not None or self.negative_slope or self.threshold:
            return super().call(inputs)
        return _relu_reading_input(inputs)


@tf.custom_gradient
def _relu_reading_input(x):
    return tf.nn.relu(x), lambda dy: tf.raw_ops.ReluGrad(gradients=dy, features=x)


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout` whose random state is saved with the model, as Keras's is not.

    So a run resumed from a checkpoint draws the masks the uninterrupted run would (pix2pix trains
    with dropout).
    """

    def save_own_variables(self, store):
        store["0"] = np.asarray(self.seed_generator.state)

    def load_own_variables(self, store):
        self.seed_generator.state.assign(np.asarray(store["0"]))


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` keeping PyTorch's running variance: the unbiased batch variance's.

    A training batch is normalized as Keras does (by its biased variance); the moving variance takes
    `n / (n - 1)` times it, `n` the values per channel, as `nn.BatchNorm2d`'s `running_var`. That is
    what inference uses: on a pix2pix U-Net's 2x2 maps at batch size 1 (n = 4) it is a third larger.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, None)
        count = tf.cast(tf.size(x) // tf.shape(x)[self.axis], x.dtype)
        unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, unbiased)):
            moving.assign(moving * self.momentum + tf.cast(batch, moving.dtype) * (1.0 - self.momentum))
        gamma = tf.cast(self.gamma, x.dtype) if self.scale else None
        beta = tf.cast(self.beta, x.dtype) if self.center else None
        outputs = keras.ops.batch_normalization(x, mean, variance, self.axis, beta, gamma, self.epsilon)
        return tf.cast(outputs, self.compute_dtype)


def blur_filter(size: int):
    """The reference's `get_filter`: the outer product of a binomial row ([1, 2, 1] for 3), summing to 1."""
    row = _binomial(size)
    return np.outer(row, row)


def _binomial(size):
    """The binomial row of `size` taps, summing to 1 ([1, 2, 1] / 4 for 3)."""
    if not 1 <= size <= 7:
        raise ValueError(f"filter_size must be between 1 and 7 (the reference's filters). Received: filter_size={size}")
    row = np.array([math.comb(size - 1, k) for k in range(size)], "float64")
    return row / row.sum()


class _Blur(keras.layers.Layer):
    """A fixed per-channel blur (not a weight: the reference keeps it as the `filt` buffer)."""

    def __init__(self, filter_size, strides, pad_mode, **kwargs):
        super().__init__(**kwargs)
        if pad_mode not in ops.PAD_MODES:
            raise ValueError(f"pad_mode must be one of {ops.PAD_MODES}. Received: pad_mode={pad_mode!r}")
        if not isinstance(strides, int) or strides < 1:
            raise ValueError(f"strides must be a positive int. Received: strides={strides!r}")
        self.filter = blur_filter(filter_size)
        self.filter_size = filter_size
        self.strides = strides
        self.pad_mode = pad_mode
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} needs a known channel count. Received: input_shape={input_shape}")
        self.channels = input_shape[-1]

    def _blur(self, x, training):
        """The filter on each channel of `x`, valid, as PyTorch's `conv2d(groups=channels)`.

        In training its gradient keeps no activation: the filter is fixed, so only the input's gradient
        is needed, and that needs only the input's shape (TensorFlow's keeps the input for the filter's).
        """
        weights = np.repeat(self.filter[:, :, None, None], self.channels, axis=2).astype("float32")
        filter_ = tf.constant(weights, x.dtype)
        strides = (1, self.strides, self.strides, 1)
        if not training:
            return tf.nn.depthwise_conv2d(x, filter_, strides, "VALID")
        shape = x.shape if x.shape.is_fully_defined() else tf.shape(x)

        @tf.custom_gradient
        def blur(x):
            def gradient(dy):
                return tf.nn.depthwise_conv2d_backprop_input(shape, filter_, dy, strides, "VALID")

            return tf.nn.depthwise_conv2d(x, filter_, strides, "VALID"), gradient

        return blur(x)

    def get_config(self):
        config = super().get_config()
        config.update(filter_size=self.filter_size, strides=self.strides, pad_mode=self.pad_mode)
        return config


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class Downsample(_Blur):
    """Anti-aliased downsampling (Zhang, ICML 2019) as the CUT reference's `Downsample`: pad, blur, subsample.

    Pads `(filter_size - 1) / 2` (floor before, ceil after) by `pad_mode`, then convolves each channel
    with `blur_filter(filter_size)` at stride `strides`: a `(h, w)` map becomes `(ceil(h / 2), ceil(w / 2))`
    for the defaults.

    Args:
        filter_size: side of the binomial filter, 1 to 7 (3: [1, 2, 1]).
        strides: the subsampling factor.
        pad_mode: `"reflect"` (the reference's), `"replicate"` or `"zero"`.
    """

    def __init__(self, filter_size: int = 3, strides: int = 2, pad_mode: str = "reflect", **kwargs):
        super().__init__(filter_size, strides, pad_mode, **kwargs)
        self.padding = ((filter_size - 1) // 2, filter_size // 2)

    def call(self, inputs, training=None):
        padded = ops.pad_spatial(inputs, (self.padding, self.padding), self.pad_mode)
        return self._blur(padded, training)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        pad = sum(self.padding)

        def side(size):
            if size is None:
                return None
            if self.pad_mode == "reflect" and size <= max(self.padding):
                raise ValueError(f"Downsample cannot reflect-pad a side of {size} by {max(self.padding)}")
            return (size + pad - self.filter_size) // self.strides + 1

        return (batch, side(height), side(width), channels)


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class Upsample(_Blur):
    """Anti-aliased upsampling as the CUT reference's `Upsample`: a transposed convolution with a fixed blur.

    PyTorch: `conv_transpose2d(pad(x, 1), filt * strides**2, stride, padding=1 + (filter_size - 1) // 2)`,
    then the first row and column dropped (and the last, for an even filter). The blur is separable, so
    each axis is done on its own, one output phase (position modulo `strides`) at a time as a weighted
    sum of shifted slices, then interleaved: the same sums, without a grouped transposed convolution
    (TFLite and XLA lack one; a depthwise one on zero-inserted maps took 5x a 3x3 convolution on a CPU).
    A `(h, w)` map becomes `(2h, 2w)` for the defaults: the bilinear interpolation of the input with
    its edges replicated.

    Args:
        filter_size: side of the binomial filter, 2 to 7 (4: [1, 3, 3, 1]).
        strides: the upsampling factor.
        pad_mode: `"replicate"` (the reference's), `"reflect"` or `"zero"`.
    """

    def __init__(self, filter_size: int = 4, strides: int = 2, pad_mode: str = "replicate", **kwargs):
        if filter_size < 2:
            raise ValueError(f"Upsample's filter_size must be at least 2. Received: filter_size={filter_size}")
        super().__init__(filter_size, strides, pad_mode, **kwargs)
        taps = _binomial(filter_size) * strides  # one axis of filt * strides**2
        # Output m of an axis (after the reference's crops) sums taps[t] * padded[(m + 1 + padding - t) / strides]
        # over the t where that divides: for the phase p = m % strides, a fixed set of (tap, shift).
        padding = 1 + (filter_size - 1) // 2
        self.phases = [
            [
                (float(taps[t]), (p + 1 + padding - t) // strides)
                for t in range(filter_size)
                if not (p + 1 + padding - t) % strides
            ]
            for p in range(strides)
        ]
        shifts = [shift for phase in self.phases for _, shift in phase]
        # An output side is strides * (n + 1) + excess; each phase computes n + 1 + ceil(excess / strides).
        excess = filter_size - 2 * padding - 1 - (1 - filter_size % 2)
        self.extra = -(-excess // strides)
        self.zero_pad = (max(0, -min(shifts)), max(0, self.extra - 1 + max(shifts)))
        self.cut = strides * self.extra - excess

    def call(self, inputs):
        if (self.filter_size, self.strides, self.pad_mode) == (4, 2, "replicate"):
            # The reference's Upsample is this exactly (tests/test_cut.py), in one fused kernel: 3.7x faster
            # forward and backward than the slices on a CPU.
            height, width = inputs.shape[1:3]
            size = (2 * height, 2 * width) if height and width else tf.shape(inputs)[1:3] * 2
            return tf.cast(tf.image.resize(inputs, size, method="bilinear"), inputs.dtype)
        x = ops.pad_spatial(inputs, ((1, 1), (1, 1)), self.pad_mode)
        for axis in (1, 2):
            x = self._upsample_axis(x, axis)
        return x

    def _upsample_axis(self, x, axis):
        shape = [x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in range(4)]
        count = shape[axis] - 1 + self.extra  # outputs per phase
        front, back = self.zero_pad
        if front or back:
            paddings = [[0, 0]] * 4
            paddings[axis] = [front, back]
            x = tf.pad(x, paddings)
        phases = []
        for phase in self.phases:
            total = 0.0
            for tap, shift in phase:
                begin = [0, 0, 0, 0]
                begin[axis] = front + shift
                size = [-1, -1, -1, -1]
                size[axis] = count
                total += tf.cast(tap, x.dtype) * tf.slice(x, begin, size)
            phases.append(total)
        spread = tf.stack(phases, axis=axis + 1)
        length = count * self.strides
        spread = tf.reshape(spread, [*shape[:axis], length, *shape[axis + 1 :]])
        if not self.cut:
            return spread
        return spread[:, : length - self.cut] if axis == 1 else spread[:, :, : length - self.cut]

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape

        def side(size):
            return None if size is None else (size + 1 + self.extra) * self.strides - self.cut

        return (batch, side(height), side(width), channels)
