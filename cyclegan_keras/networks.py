"""The CycleGAN networks, layer for layer as in the authors' PyTorch code (models/networks.py).

Builders return functional models on `(None, None, channels)` with stable layer names (checkpoints
and converted weights match by them). Padding is PyTorch's: explicit pads, then valid convolutions
(Keras `"same"` pads `(0, 1)` on even sizes); a `ConvTranspose2d` is a cropped valid `Conv2DTranspose`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras

from cyclegan_keras.config import NORMS
from cyclegan_keras.layers import (
    BatchNormalization,
    Downsample,
    Dropout,
    InstanceNormalization,
    MaxLeakyReLU,
    ReflectionPadding2D,
    ReLU,
    Upsample,
)


def _check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}. Received: norm={norm!r}")


def _norm(norm, name, lean_gradient=False):
    """The normalization layer for `norm`, or None for `"none"`."""
    if norm == "instance":
        return InstanceNormalization(lean_gradient=lean_gradient, name=name)
    if norm == "batch":
        # PyTorch's momentum 0.1 is Keras's 0.9; gamma ~ N(1, 0.02) as the reference's init_weights.
        return BatchNormalization(
            momentum=0.9,
            epsilon=1e-5,
            gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02),
            name=name,
        )
    return None


def _padded_conv(x, filters, kernel_size, strides, padding, use_bias, name, pad_mode="zero"):
    """PyTorch-style `Conv2d(..., padding=padding)`: explicit pad, then valid conv."""
    if padding and pad_mode == "zero":
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    elif padding:
        x = ReflectionPadding2D(padding, mode=pad_mode, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=use_bias,
        kernel_initializer=keras.initializers.RandomNormal(mean=0.0, stddev=0.02),
        name=name,
    )(x)


def _conv_transpose(x, filters, kernel_size, padding, output_padding, use_bias, name):
    """PyTorch `ConvTranspose2d(k, stride=2, padding, output_padding)`."""
    x = keras.layers.Conv2DTranspose(
        filters,
        kernel_size,
        strides=2,
        padding="valid",
        use_bias=use_bias,
        kernel_initializer=keras.initializers.RandomNormal(mean=0.0, stddev=0.02),
        name=name,
    )(x)
    crop = (padding, padding - output_padding)
    return keras.layers.Cropping2D((crop, crop), name=f"{name}_crop")(x)


def _norm_act(x, norm, activation, name, lean_gradient=False):
    """`x`'s norm and activation. `lean_gradient`: the instance norm's gradient keeps only its output, which
    its ReLU's gradient reads too (always for a generator; for a discriminator unless a gradient penalty
    differentiates it twice)."""
    layer = _norm(norm, f"{name}_norm", lean_gradient)
    if layer is not None:
        x = layer(x)
    if activation == "relu":
        return ReLU(name=f"{name}_relu")(x)
    if activation == "leaky_relu":
        return MaxLeakyReLU(0.2, name=f"{name}_lrelu")(x)
    return x


def _float32_head(inputs, x, activation, layer_name, name):
    """The model, its last activation in float32 even under mixed precision."""
    outputs = keras.layers.Activation(activation, name=layer_name, dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet_generator(
    n_blocks: int = 9,
    filters: int = 64,
    input_channels: int = 3,
    output_channels: int = 3,
    norm: str = "instance",
    dropout: bool = False,
    padding: str = "reflect",
    antialias: bool = False,
    antialias_up: bool = False,
    name: str | None = None,
) -> keras.Model:
    """ResNet generator: c7s1-64, d128, d256, R256 x n_blocks, u128, u64, c7s1-3, on [-1, 1] images.

    Args:
        n_blocks: 9 for 256x256 images, 6 for 128x128.
        filters: of the first layer (the reference's `ngf`).
        norm: `"instance"`, `"batch"` or `"none"`.
        dropout: Dropout(0.5) in each residual block (off: the reference's `--no_dropout`).
        padding: `"reflect"`, `"replicate"` or `"zero"` in the residual blocks and the 7x7 convolutions.
        antialias: each stride-2 convolution becomes a stride-1 one, its norm and ReLU, then a blurred
            `Downsample` (`down{i}_blur`), as CUT's generator (the CUT reference's default; its
            `--no_antialias` turns it off).
        antialias_up: each transposed convolution becomes an `Upsample` (`up{i}_blur`, a fixed
            [1, 3, 3, 1] blur) then a 3x3 convolution, as CUT's (`--no_antialias_up` turns it off).

    Returns:
        A `keras.Model` whose input height and width must be multiples of 4.
    """
    _check_norm(norm)
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0. Received: n_blocks={n_blocks}")
    use_bias = norm == "instance"
    inputs = keras.Input((None, None, input_channels), name="image")
    x = _padded_conv(inputs, filters, 7, 1, 3, use_bias, "stem_conv", pad_mode=padding)
    x = _norm_act(x, norm, "relu", "stem", lean_gradient=True)
    for i in range(2):
        x = _padded_conv(x, filters * 2 ** (i + 1), 3, 1 if antialias else 2, 1, use_bias, f"down{i}_conv")
        x = _norm_act(x, norm, "relu", f"down{i}", lean_gradient=True)
        if antialias:
            x = Downsample(name=f"down{i}_blur")(x)
    for i in range(n_blocks):
        shortcut = x
        y = _padded_conv(x, filters * 4, 3, 1, 1, use_bias, f"res{i}_conv0", pad_mode=padding)
        y = _norm_act(y, norm, "relu", f"res{i}_0", lean_gradient=True)
        if dropout:
            y = Dropout(0.5, name=f"res{i}_dropout")(y)
        y = _padded_conv(y, filters * 4, 3, 1, 1, use_bias, f"res{i}_conv1", pad_mode=padding)
        y = _norm_act(y, norm, None, f"res{i}_1", lean_gradient=True)
        x = keras.layers.Add(name=f"res{i}_add")([shortcut, y])
    for i in range(2):
        if antialias_up:
            x = Upsample(name=f"up{i}_blur")(x)
            x = _padded_conv(x, filters * 2 ** (1 - i), 3, 1, 1, use_bias, f"up{i}_conv")
        else:
            x = _conv_transpose(x, filters * 2 ** (1 - i), 3, 1, 1, use_bias, f"up{i}_conv")
        x = _norm_act(x, norm, "relu", f"up{i}", lean_gradient=True)
    x = _padded_conv(x, output_channels, 7, 1, 3, True, "head_conv", pad_mode=padding)
    return _float32_head(inputs, x, "tanh", "head_tanh", name or f"resnet_{n_blocks}blocks")


def unet_generator(
    num_downs: int = 8,
    filters: int = 64,
    input_channels: int = 3,
    output_channels: int = 3,
    norm: str = "instance",
    dropout: bool = False,
    name: str | None = None,
) -> keras.Model:
    """U-Net generator with skip connections (the reference's `UnetGenerator`; `unet_256` has 8 downs).

    Args:
        num_downs: downsamplings; height and width must be multiples of `2**num_downs`.
        filters: of the outermost layer (`ngf`).
        norm: `"instance"`, `"batch"` or `"none"`.
        dropout: Dropout(0.5) in the decoder of the `num_downs - 5` innermost-but-one levels.
    """
    _check_norm(norm)
    if num_downs < 5:
        raise ValueError(f"num_downs must be >= 5. Received: num_downs={num_downs}")
    use_bias = norm == "instance"
    inner = [filters * min(2**k, 8) for k in range(num_downs)]
    outer = [output_channels] + inner[:-1]
    innermost = num_downs - 1

    inputs = keras.Input((None, None, input_channels), name="image")
    skips = []
    x = inputs
    for k in range(num_downs):
        skips.append(x)
        if k > 0:
            x = MaxLeakyReLU(0.2, name=f"down{k}_lrelu")(x)
        x = _padded_conv(x, inner[k], 4, 2, 1, use_bias, f"down{k}_conv")
        if 0 < k < innermost:
            x = _norm_act(x, norm, None, f"down{k}", lean_gradient=True)
    for k in reversed(range(num_downs)):
        if k < innermost:
            x = keras.layers.Concatenate(name=f"up{k}_concat")([skips[k + 1], x])
        x = ReLU(name=f"up{k}_relu")(x)
        x = _conv_transpose(x, outer[k], 4, 1, 0, use_bias if k > 0 else True, f"up{k}_conv")
        if k > 0:
            x = _norm_act(x, norm, None, f"up{k}", lean_gradient=True)
            if dropout and 4 <= k < innermost:
                x = Dropout(0.5, name=f"up{k}_dropout")(x)
    return _float32_head(inputs, x, "tanh", "head_tanh", name or f"unet_{2**num_downs}")


def patchgan_discriminator(
    n_layers: int = 3,
    filters: int = 64,
    input_channels: int = 3,
    norm: str = "instance",
    antialias: bool = False,
    lean_gradient: bool = False,
    name: str | None = None,
) -> keras.Model:
    """PatchGAN discriminator: one real/fake logit (no sigmoid) per overlapping patch, `(batch, H', W', 1)`.

    With `n_layers=3` (stride-2 convolutions) it is the reference's `basic` 70x70 PatchGAN. With
    `antialias` (CUT's default) each stride-2 convolution becomes a stride-1 one, its norm and
    LeakyReLU, then a blurred `Downsample` (`conv{n}_blur`); the output has the same size.
    `lean_gradient`: instance norms whose gradient keeps only their output (not twice
    differentiable: not under WGAN-GP's penalty).
    """
    _check_norm(norm)
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1. Received: n_layers={n_layers}")
    use_bias = norm == "instance"
    inputs = keras.Input((None, None, input_channels), name="image")
    x = _padded_conv(inputs, filters, 4, 1 if antialias else 2, 1, True, "conv0")
    x = MaxLeakyReLU(0.2, name="conv0_lrelu")(x)
    if antialias:
        x = Downsample(name="conv0_blur")(x)
    for n in range(1, n_layers + 1):
        strides = 2 if n < n_layers and not antialias else 1
        x = _padded_conv(x, filters * min(2**n, 8), 4, strides, 1, use_bias, f"conv{n}")
        x = _norm_act(x, norm, "leaky_relu", f"conv{n}", lean_gradient)
        if antialias and n < n_layers:
            x = Downsample(name=f"conv{n}_blur")(x)
    x = _padded_conv(x, 1, 4, 1, 1, True, "logits")
    return _float32_head(inputs, x, "linear", "logits_float32", name or f"patchgan_{n_layers}layers")


def pixel_discriminator(
    filters: int = 64,
    input_channels: int = 3,
    norm: str = "instance",
    lean_gradient: bool = False,
    name: str = "pixelgan",
) -> keras.Model:
    """1x1 PatchGAN (`pixel` in the reference): a real/fake logit per pixel.

    `lean_gradient` as `patchgan_discriminator`'s.
    """
    _check_norm(norm)
    use_bias = norm == "instance"
    inputs = keras.Input((None, None, input_channels), name="image")
    x = _padded_conv(inputs, filters, 1, 1, 0, True, "conv0")
    x = MaxLeakyReLU(0.2, name="conv0_lrelu")(x)
    x = _padded_conv(x, filters * 2, 1, 1, 0, use_bias, "conv1")
    x = _norm_act(x, norm, "leaky_relu", "conv1", lean_gradient)
    x = _padded_conv(x, 1, 1, 1, 0, use_bias, "logits")
    return _float32_head(inputs, x, "linear", "logits_float32", name)


GENERATORS: dict[str, Callable[..., keras.Model]] = {
    "resnet_9blocks": functools.partial(resnet_generator, n_blocks=9),
    "resnet_6blocks": functools.partial(resnet_generator, n_blocks=6),
    "unet_256": functools.partial(unet_generator, num_downs=8),
    "unet_128": functools.partial(unet_generator, num_downs=7),
    # Not the reference's: pix2pix's 1x1 bottleneck at 64x64 crops (the synthetic dataset's).
    "unet_64": functools.partial(unet_generator, num_downs=6),
}

DISCRIMINATORS: dict[str, Callable[..., keras.Model]] = {
    "basic": functools.partial(patchgan_discriminator, n_layers=3),
    "n_layers": patchgan_discriminator,
    "pixel": pixel_discriminator,
}


def _from_registry(registry, kind, name):
    if name not in registry:
        raise ValueError(f"Unknown {kind} {name!r}. Valid names: {', '.join(registry)}")
    return registry[name]


def build_generator(name: str, **kwargs) -> keras.Model:
    """Builds a generator by the reference's `--netG` name (see `GENERATORS`)."""
    return _from_registry(GENERATORS, "generator", name)(**kwargs)


def build_discriminator(name: str, **kwargs) -> keras.Model:
    """Builds a discriminator by the reference's `--netD` name (see `DISCRIMINATORS`)."""
    return _from_registry(DISCRIMINATORS, "discriminator", name)(**kwargs)


def downsampling(layer) -> int:
    """How many times smaller `layer` makes a map (1 for most; a stride-2 conv or `Downsample`: 2)."""
    if isinstance(layer, (keras.layers.Conv2D, Downsample)):
        return _stride(layer)
    return 1


def upsampling(layer) -> int:
    """How many times larger `layer` makes a map (a stride-2 transposed conv or `Upsample`: 2)."""
    if isinstance(layer, (keras.layers.Conv2DTranspose, Upsample)):
        return _stride(layer)
    return 1


def _stride(layer):
    strides = layer.strides
    return strides if isinstance(strides, int) else strides[0]


def size_multiple(network: keras.Model) -> int:
    """The number the input height and width must be a multiple of: the product of the strides."""
    multiple = 1
    for layer in network.layers:
        multiple *= downsampling(layer)
    return multiple


def min_size(network: keras.Model) -> int:
    """The smallest input side `network` accepts: every reflection pad below the map it pads (8 for ResNets)."""
    multiple = size_multiple(network)
    scale, needed = 1, 1
    for layer in network.layers:
        if isinstance(layer, ReflectionPadding2D) and layer.mode == "reflect":
            needed = max(needed, (max(map(max, layer.padding)) + 1) * scale)
        if isinstance(layer, Downsample) and layer.pad_mode == "reflect":
            needed = max(needed, (max(layer.padding) + 1) * scale)
        scale = scale * downsampling(layer) // upsampling(layer)
    return -(-needed // multiple) * multiple


def vgg16_features(weights: str | None = None, layer: str = "block4_conv2", input_channels: int = 3) -> keras.Model:
    """A non-trainable VGG16 feature model on [-1, 1] RGB images, for the "feature loss + GAN" baseline.

    VGG's preprocessing is a fixed 1x1 convolution inside, so the model serializes without custom code.

    Args:
        weights: `None` (random, for tests), `"imagenet"` (downloaded by Keras) or a path to that file.
        layer: compared layer; the paper's relu4_2 is `block4_conv2` (its ReLU is built in).
        input_channels: must be 3.
    """
    if input_channels != 3:
        raise ValueError(f"The VGG16 feature loss needs RGB images. Received: input_channels={input_channels}")
    import numpy as np

    vgg = keras.applications.VGG16(include_top=False, weights=weights)
    if layer not in [vgg_layer.name for vgg_layer in vgg.layers]:
        raise ValueError(f"VGG16 has no layer {layer!r}.")
    # [-1, 1] RGB -> caffe preprocessing: x * 127.5 + 127.5, RGB -> BGR, - mean.
    kernel = np.zeros((1, 1, 3, 3), "float32")
    for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
        kernel[0, 0, rgb, bgr] = 127.5
    bias = 127.5 - np.array([103.939, 116.779, 123.68], "float32")
    inputs = keras.Input((None, None, 3), name="image")
    preprocess = keras.layers.Conv2D(3, 1, name="vgg_preprocess", trainable=False)
    x = preprocess(inputs)
    preprocess.set_weights([kernel, bias])
    for vgg_layer in vgg.layers[1:]:
        x = vgg_layer(x)
        if vgg_layer.name == layer:
            break
    model = keras.Model(inputs, x, name=f"vgg16_{layer}")
    model.trainable = False
    return model


def receptive_field(network: keras.Model) -> int:
    """Receptive field in pixels of a stack of convolutions (70 for `basic`)."""
    field, jump = 1, 1
    for layer in network.layers:
        if isinstance(layer, (keras.layers.Conv2D, Downsample)):
            size = layer.filter_size if isinstance(layer, Downsample) else layer.kernel_size[0]
            field += (size - 1) * jump
            jump *= downsampling(layer)
    return field


def with_precision(network, policy="float32"):
    """A copy of `network` computing in the dtype `policy` (output layers stay float32), or `network` if unchanged."""
    config = network.get_config()
    outputs = {tensor._keras_history.operation.name for tensor in network.outputs}
    changed = False
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            continue
        wanted = "float32" if layer["name"] in outputs else policy
        if network.get_layer(layer["name"]).dtype_policy.name != wanted:
            layer["config"]["dtype"] = keras.saving.serialize_keras_object(keras.DTypePolicy(wanted))
            changed = True
    if not changed:
        return network
    copy = network.__class__.from_config(config)
    copy.set_weights(network.get_weights())
    return copy


def with_image_statistics(generator: keras.Model) -> keras.Model:
    """A copy of `generator` whose batch norms normalize each image by its own statistics, with the same weights.

    That is batch norm in training mode at batch size 1, as the reference's `test.py` runs without
    `--eval` (its default, which made the authors' published pix2pix results); `translate` and export
    use the running statistics instead (its `--eval`). The running statistics are unused and left out;
    dropout stays off. Each norm becomes an affine `InstanceNormalization`, so tiling keeps working.

    Raises:
        ValueError: `generator` has no batch norm.
    """
    norms = [layer for layer in generator.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        raise ValueError(
            f"{generator.name} has no batch norm: its norms use each image's own statistics already (instance "
            "norm) or none"
        )

    config = generator.get_config()
    for entry in config["layers"]:
        layer = generator.get_layer(entry["name"])
        if isinstance(layer, keras.layers.BatchNormalization):
            norm = InstanceNormalization(
                layer.epsilon, layer.center, layer.scale, name=layer.name, dtype=layer.dtype_policy
            )
            entry.update({k: v for k, v in keras.saving.serialize_keras_object(norm).items() if k != "build_config"})
            for node in entry["inbound_nodes"]:
                node["kwargs"].pop("mask", None)  # BatchNormalization's call argument
    copy = generator.__class__.from_config(config)
    for layer in generator.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            weights = [w for w, v in zip(weights, layer.weights) if v.name in ("gamma", "beta")]
        copy.get_layer(layer.name).set_weights(weights)
    return copy


def init_weights(network, init_type="normal", gain=0.02, seed=None):
    """Re-initializes `network` in place as the reference's `init_weights` does (the builders use `normal`).

    Untruncated normals as PyTorch's; `kaiming` ignores `gain`; biases 0, batch-norm gamma N(1, gain).
    Keras's fans of a `Conv2DTranspose` kernel `(kh, kw, out, in)` equal PyTorch's, so the scales match,
    and so do those of a `Dense` kernel `(in, out)` (PyTorch's `Linear` weight is `(out, in)`).
    """
    kernels = {
        "normal": lambda s: keras.initializers.RandomNormal(0.0, gain, seed=s),
        "xavier": lambda s: keras.initializers.VarianceScaling(gain**2, "fan_avg", "untruncated_normal", seed=s),
        "kaiming": lambda s: keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal", seed=s),
        "orthogonal": lambda s: keras.initializers.Orthogonal(gain, seed=s),
    }
    if init_type not in kernels:
        raise ValueError(f"init_type must be one of {tuple(kernels)}. Received: init_type={init_type!r}")
    for index, layer in enumerate(network.layers):
        layer_seed = None if seed is None else seed * 1000 + index
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense)):
            layer.kernel.assign(kernels[init_type](layer_seed)(layer.kernel.shape, layer.kernel.dtype))
            if layer.bias is not None:
                layer.bias.assign(keras.ops.zeros_like(layer.bias))
        elif isinstance(layer, keras.layers.BatchNormalization):
            normal = keras.initializers.RandomNormal(1.0, gain, seed=layer_seed)
            layer.gamma.assign(normal(layer.gamma.shape, layer.gamma.dtype))
            layer.beta.assign(keras.ops.zeros_like(layer.beta))
    return network


def reference_layers(generator: keras.Model) -> list[str]:
    """The layers of `generator` (built by `resnet_generator`) in the numbering of the reference's `nn.Sequential`.

    Entry `i` names the Keras layer whose output is that of the reference's `model[i]` (CUT's
    `nce_layers` index it; `0` is the stem's padding, `4` the first down convolution). Where the
    reference has a module we do not (an `Identity` norm of `norm="none"`), the previous layer stands in.

    Raises:
        ValueError: `generator` is not a ResNet generator of this package.
    """
    names = {layer.name for layer in generator.layers}
    if not {"stem_conv_pad", "stem_conv", "res0_add", "head_conv"} <= names:
        raise ValueError(
            "The reference's layer numbering (CUT's nce_layers) is that of its ResnetGenerator: expected a "
            f"generator of networks.resnet_generator (layers stem_conv, res0_add, ...). Received: {generator.name!r}"
        )

    def norm_act(prefix, conv):
        return [f"{prefix}_norm" if f"{prefix}_norm" in names else conv, f"{prefix}_relu"]

    sequence = ["stem_conv_pad", "stem_conv", *norm_act("stem", "stem_conv")]
    for i in range(2):
        sequence += [f"down{i}_conv", *norm_act(f"down{i}", f"down{i}_conv")]
        sequence += [f"down{i}_blur"] if f"down{i}_blur" in names else []
    sequence += [f"res{i}_add" for i in range(len(names)) if f"res{i}_add" in names]
    for i in range(2):
        if f"up{i}_blur" in names:  # Upsample, then a convolution
            sequence += [f"up{i}_blur", f"up{i}_conv", *norm_act(f"up{i}", f"up{i}_conv")]
        else:  # one ConvTranspose2d, whose output is our crop's
            sequence += [f"up{i}_conv_crop", *norm_act(f"up{i}", f"up{i}_conv_crop")]
    return [*sequence, "head_conv_pad", "head_conv", "head_tanh"]


def encoder_features(generator: keras.Model, layers: tuple[int, ...] = (0, 4, 8, 12, 16)) -> keras.Model:
    """A model sharing `generator`'s layers that outputs the features at `layers` of the reference's numbering.

    CUT's `netG(x, nce_layers, encode_only=True)`: with the defaults, the padded input, the two
    down convolutions, the first residual block and the fifth (resnet_9blocks).

    Raises:
        ValueError: `generator` is not a ResNet generator, or a layer index is out of its range.
    """
    sequence = reference_layers(generator)
    outside = [index for index in layers if not 0 <= index < len(sequence)]
    if outside or not layers:
        raise ValueError(
            f"nce_layers must be indexes 0..{len(sequence) - 1} of the layers of generator {generator.name!r} in "
            f"the reference's numbering. Received: {tuple(layers)}"
        )
    outputs = [generator.get_layer(sequence[index]).output for index in layers]
    return keras.Model(generator.input, outputs, name=f"{generator.name}_features")
