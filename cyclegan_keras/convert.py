"""The authors' pretrained PyTorch generators (`latest_net_G.pth`, or the `pretrained_models/{name}.pth` that
their `scripts/download_cyclegan_model.sh` fetches, and the pix2pix `models-pytorch/{name}.pth` of
`download_pix2pix_model.sh`) as Keras models, read by the safe unpickler of `cyclegan_keras.pth`.

CycleGAN's are ResNets with instance norm; pix2pix's are U-Nets with batch norm, whose running
statistics become the Keras layers' moving mean and variance.
"""

import re

import numpy as np

from cyclegan_keras import networks
from cyclegan_keras.layers import blur_filter
from cyclegan_keras.pth import (  # noqa: F401  (its errors are re-exported: load_torch_generator raises them)
    ConversionError,
    CorruptCheckpointError,
    UnsafePickleError,
    read_state_dict,
)


def _kernel(weight):
    """PyTorch Conv2d (out, in, kh, kw) -> Keras (kh, kw, in, out); ConvTranspose2d (in, out, ...) alike.

    No spatial flip: both frameworks' transposed convolutions are the gradient of the same cross-correlation.
    """
    return weight.transpose(2, 3, 1, 0)


def _batch_norms(state):
    """The prefixes of the norms with weights and running statistics: batch norms (instance norms have neither)."""
    running = [k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")]
    return [prefix for prefix in running if f"{prefix}.weight" in state]


def infer_architecture(state):
    """`(builder name, kwargs)` of the reference generator `state` belongs to; ConversionError says what it found."""
    keys = list(state)
    batch_norms = _batch_norms(state)
    if any(k.startswith("model.model.") for k in keys):
        depth = max(k.count(".model.") for k in keys if k.startswith("model.model."))
        num_downs = depth  # "model.model." + "1.model." / "3.model." per level below the outermost
        outer = state["model.model.0.weight"]
        final = state["model.model.3.weight"]
        norm = "batch" if batch_norms else "instance"
        return "unet", dict(
            num_downs=num_downs,
            filters=outer.shape[0],
            input_channels=outer.shape[1],
            output_channels=final.shape[1],
            norm=norm,
            # The keys cannot tell (Dropout has none); pix2pix trains its batch-norm U-Nets with it.
            dropout=norm == "batch",
        )
    if batch_norms:
        raise ConversionError(
            "This is a batch-norm generator (found norm weights and running statistics, e.g. "
            f"{batch_norms[0]}.weight) with the ResNet layout; ResNets convert with instance norm, as the "
            "authors publish their CycleGAN models, and U-Nets with either (pix2pix's have batch norm)"
        )
    blocks = sorted({int(m.group(1)) for k in keys for m in [re.match(r"model\.(\d+)\.conv_block\.", k)] if m})
    if "model.1.weight" in state and blocks:
        stem = state["model.1.weight"]
        if stem.shape[2:] != (7, 7):
            raise ConversionError(f"Expected a 7x7 first convolution (model.1.weight), found {stem.shape}")
        layout = _resnet_layout(state, len(blocks))
        first = layout["blocks"]
        if blocks != list(range(first, first + len(blocks))) or f"{layout['head_conv']}.weight" not in state:
            raise ConversionError(
                f"Residual blocks at model.{blocks[0]}..model.{blocks[-1]} do not follow the reference's "
                f"ResnetGenerator layout (blocks from model.{first}, final conv {layout['head_conv']})"
            )
        for key in layout["blurs"]:
            _check_blur(state, key)
        dropout = f"model.{first}.conv_block.6.weight" in state  # Dropout shifts the second conv from 5 to 6
        return "resnet", dict(
            n_blocks=len(blocks),
            filters=stem.shape[0],
            input_channels=stem.shape[1],
            output_channels=state[f"{layout['head_conv']}.weight"].shape[0],
            dropout=dropout,
            antialias=layout["antialias"],
            antialias_up=layout["antialias_up"],
        )
    if "model.0.weight" in state and state["model.0.weight"].shape[2:] in ((4, 4), (1, 1)):
        raise ConversionError(
            "This is a discriminator's state dict (4x4 or 1x1 convolutions from model.0, found "
            f"{len(keys)} keys such as {keys[0]}); expected a generator: latest_net_G.pth or *_net_G_A.pth"
        )
    raise ConversionError(
        "Not a reference generator: expected ResnetGenerator keys (model.1.weight, "
        "model.10.conv_block.1.weight, ...) or UnetGenerator keys (model.model.0.weight, ...); "
        f"found {len(keys)} keys such as {', '.join(keys[:4])}"
    )


def _resnet_layout(state, n_blocks):
    """Where the reference's ResnetGenerator keeps each weight: CUT's anti-aliased layers shift the indexes.

    Anti-aliased (CUT's default), `Downsample` follows each down conv's ReLU (blocks from model.12, not
    10) and each `Upsample` comes before a 3x3 conv (no ConvTranspose2d weight at its index); both keep
    their fixed blur as a `filt` buffer, and the layout tells them apart even without it.
    """
    antialias = "model.7.weight" not in state and "model.8.weight" in state
    first = 12 if antialias else 10
    up = first + n_blocks
    antialias_up = f"model.{up}.weight" not in state and f"model.{up + 1}.weight" in state
    step = 4 if antialias_up else 3
    convs = {"stem_conv": "model.1", "down0_conv": "model.4", "down1_conv": "model.8" if antialias else "model.7"}
    for i in range(2):
        convs[f"up{i}_conv"] = f"model.{up + i * step + (1 if antialias_up else 0)}"
    blurs = ["model.7", "model.11"] if antialias else []
    blurs += [f"model.{up}", f"model.{up + 4}"] if antialias_up else []
    return dict(
        antialias=antialias,
        antialias_up=antialias_up,
        blocks=first,
        convs=convs,
        blurs=blurs,
        head_conv=f"model.{up + 2 * step + 1}",
    )


def _check_blur(state, key):
    """A `Downsample`/`Upsample` buffer, if saved, must be the fixed filter our layers compute."""
    filt = state.get(f"{key}.filt")
    if filt is None:
        return
    size = filt.shape[-1]
    expected = blur_filter(size) * (1 if size == 3 else 4)  # Downsample [1, 2, 1]; Upsample [1, 3, 3, 1] * stride**2
    if filt.ndim != 4 or size not in (3, 4) or not np.allclose(filt, expected[None, None], atol=1e-6):
        raise ConversionError(
            f"{key}.filt is not the reference's fixed blur ([1, 2, 1] for Downsample, [1, 3, 3, 1] for "
            f"Upsample); found shape {filt.shape}"
        )


def _resnet_weights(state, n_blocks, dropout):
    layout = _resnet_layout(state, n_blocks)
    second = 6 if dropout else 5
    conv_layers = dict(layout["convs"])
    for i in range(n_blocks):
        conv_layers[f"res{i}_conv0"] = f"model.{layout['blocks'] + i}.conv_block.1"
        conv_layers[f"res{i}_conv1"] = f"model.{layout['blocks'] + i}.conv_block.{second}"
    conv_layers["head_conv"] = layout["head_conv"]
    return conv_layers, layout["blurs"]


def _unet_weights(num_downs):
    """The state-dict prefixes of the U-Net's convolutions, transposed convolutions and norms, by layer name."""
    prefixes = ["model.model."]
    for level in range(1, num_downs):
        prefixes.append(prefixes[-1] + ("1.model." if level == 1 else "3.model."))
    conv_layers, transposed, norms = {}, {}, {}
    innermost = num_downs - 1
    for level, prefix in enumerate(prefixes):
        if level == 0:
            conv_layers["down0_conv"], transposed["up0_conv"] = prefix + "0", prefix + "3"
        elif level == innermost:  # [LeakyReLU, down conv, ReLU, up conv, up norm]
            conv_layers[f"down{level}_conv"], transposed[f"up{level}_conv"] = prefix + "1", prefix + "3"
            norms[f"up{level}_norm"] = prefix + "4"
        else:  # [LeakyReLU, down conv, down norm, the level below, ReLU, up conv, up norm (, Dropout)]
            conv_layers[f"down{level}_conv"], transposed[f"up{level}_conv"] = prefix + "1", prefix + "5"
            norms[f"down{level}_norm"], norms[f"up{level}_norm"] = prefix + "2", prefix + "6"
    return conv_layers, transposed, norms


def state_dict_to_generator(state):
    """A Keras generator (from `cyclegan_keras.networks`) holding `state`'s weights."""
    kind, kwargs = infer_architecture(state)
    norms, buffers = {}, []
    if kind == "resnet":
        generator = networks.resnet_generator(**kwargs)
        conv_layers, blurs = _resnet_weights(state, kwargs["n_blocks"], kwargs["dropout"])
        buffers, transposed = [f"{key}.filt" for key in blurs], {}
    else:
        generator = networks.unet_generator(**kwargs)
        conv_layers, transposed, norms = _unet_weights(kwargs["num_downs"])
        if kwargs["norm"] != "batch":
            norms = {}  # instance norms without affine weights: nothing to carry
    used = set(key for key in buffers if key in state)  # the fixed blurs: checked, computed by our layers
    for layer_name, key in norms.items():
        # Keras's BatchNormalization weights: gamma, beta, moving mean, moving variance.
        names = ("weight", "bias", "running_mean", "running_var")
        _assign(generator.get_layer(layer_name), [_take(state, f"{key}.{name}", used) for name in names], key)
    for layer_name, key in {**conv_layers, **transposed}.items():
        layer = generator.get_layer(layer_name)
        weights = [_kernel(_take(state, f"{key}.weight", used))]
        if layer.use_bias:
            weights.append(_take(state, f"{key}.bias", used))
        _assign(layer, weights, key)
    leftover = [k for k in state if k not in used and not re.search(r"running_(mean|var)$|num_batches_tracked$", k)]
    if leftover:
        raise ConversionError(f"Keys the inferred {kind} generator has no place for: {', '.join(leftover[:6])}")
    return generator


def _assign(layer, weights, key):
    expected = [tuple(w.shape) for w in layer.get_weights()]
    if [w.shape for w in weights] != expected:
        raise ConversionError(f"{key}: found shapes {[w.shape for w in weights]}, expected {expected} for {layer.name}")
    layer.set_weights(weights)


def _take(state, key, used):
    if key not in state:
        raise ConversionError(f"Expected key {key} in the state dict; not found")
    used.add(key)
    return state[key]


def load_torch_generator(path):
    """Reads a reference generator `.pth` (e.g. `latest_net_G.pth`) into a Keras model.

    Raises:
        CorruptCheckpointError, UnsafePickleError, ConversionError: see `read_state_dict`, `infer_architecture`.
    """
    return state_dict_to_generator(read_state_dict(path))
