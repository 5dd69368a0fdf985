"""CycleGAN (and CUT, FastCUT) for Keras 3 on TensorFlow.

Importing the package checks the Keras backend and loads nothing else: public names and modules load
on first use, so `--help` never starts TensorFlow. The Keras classes are registered for `load_model`
once their module loads (`from cyclegan_keras import CycleGAN`, or `import cyclegan_keras` after keras).
"""

import importlib
import importlib.util
import os
import pkgutil
import sys

__version__ = "0.1.0"

__all__ = [
    "CUT",
    "CycleGAN",
    "ImagePool",
    "InstanceNormalization",
    "Pix2Pix",
    "ReflectionPadding2D",
    "layers",
    "networks",
]

_CLASSES = {
    "CUT": "cyclegan_keras.cut",
    "CycleGAN": "cyclegan_keras.model",
    "Pix2Pix": "cyclegan_keras.pix2pix",
    "Downsample": "cyclegan_keras.layers",
    "ImagePool": "cyclegan_keras.image_pool",
    "InstanceNormalization": "cyclegan_keras.layers",
    "PatchSampleMLP": "cyclegan_keras.cut",
    "ReflectionPadding2D": "cyclegan_keras.layers",
    "Upsample": "cyclegan_keras.layers",
}


class BackendError(ImportError):
    """Keras is set to a backend other than TensorFlow."""


def _require_tensorflow_backend():
    """Fails at import unless Keras runs on TensorFlow; sets an unset `KERAS_BACKEND` (over ~/.keras/keras.json)."""
    how = (
        "Set KERAS_BACKEND=tensorflow before Python starts (e.g. `export KERAS_BACKEND=tensorflow`), "
        "or in os.environ before the first `import keras`."
    )
    keras = sys.modules.get("keras")
    backend = getattr(getattr(keras, "backend", None), "backend", None)
    if keras is not None and callable(backend):
        if backend() != "tensorflow":
            raise BackendError(
                f"cyclegan_keras needs Keras's TensorFlow backend, but Keras was imported with the "
                f"{backend()!r} backend. {how}"
            )
        return
    requested = os.environ.get("KERAS_BACKEND") or "tensorflow"  # Keras also reads "" as unset
    os.environ["KERAS_BACKEND"] = requested
    if requested != "tensorflow":
        raise BackendError(f"cyclegan_keras needs Keras's TensorFlow backend, but KERAS_BACKEND={requested!r}. {how}")


_require_tensorflow_backend()

if "keras" in sys.modules:
    # Keras is loaded already: registering the classes costs little, and load_model then finds them.
    for _module in sorted(set(_CLASSES.values())):
        importlib.import_module(_module)


def __getattr__(name):
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_CLASSES, *(module.name for module in pkgutil.iter_modules(__path__))})
