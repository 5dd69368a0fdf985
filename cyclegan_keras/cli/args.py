"""Argument types of the command-line tools, and their parser: a bad value stops the command before any work.

Nothing here imports TensorFlow, so `--help` and these checks are instant.
"""

import argparse
import glob
import math
import os
import re
import sys
import zipfile
from pathlib import Path

from cyclegan_keras.config import BATCH_NORM_MODES, DIRECTIONS, IMAGE_EXTENSIONS, LEGACY_DIRECTIONS, Range, parse_layers
from cyclegan_keras.files import existing_ancestor

FID_WEIGHTS_URL = (  # cyclegan_keras.fid_inception.FID_WEIGHTS_URL
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
_SPELLINGS = {**{d: d for d in DIRECTIONS}, **{name.lower(): d for name, d in LEGACY_DIRECTIONS.items()}}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose refusals are one line, exit code 2; examples name the console script run (`cyclegan-train`)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)
        if self.description and not self.prog.endswith(".py"):
            self.description = re.sub(r"python \S+\.py\b", self.prog, self.description)

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def parse_direction(value):
    """`"a2b"` or `"b2a"` from this package's names or the reference's `AtoB`/`BtoA`, in any case."""
    direction = _SPELLINGS.get(str(value).strip().lower())
    if direction is None:
        raise ValueError(f"must be a2b or b2a (the reference's AtoB, BtoA also work). Received: {value!r}")
    return direction


def direction(text):
    """argparse type: a direction in either vocabulary, returned as `a2b`/`b2a`."""
    try:
        return parse_direction(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def layer_indices(text):
    """argparse type: CUT's layer list ("0,4,8,12,16"), kept as the text (config.json stores it so)."""
    try:
        return ",".join(map(str, parse_layers(text)))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _existing(text, folder, what):
    """`Path(text)` if it exists and is a folder (`folder=True`) or a file, else the error naming `what`."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} not found")
    if not (path.is_dir() if folder else path.is_file()):
        raise argparse.ArgumentTypeError(f"{text} is a {'file' if folder else 'folder'}, not {what}")
    return path


def dataroot(text):
    """argparse type: a dataset folder in a reference layout: trainA/ and trainB/, or pix2pix's train/."""
    path = _existing(text, True, "a folder")
    missing = [name for name in ("trainA", "trainB") if not (path / name).is_dir()]
    if missing and not (path / "train").is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} does not have the layout trainA/, trainB/ (as every CycleGAN dataset zip unpacks) or train/ "
            f"(pix2pix's A|B files). Missing: {', '.join(missing)}"
        )
    return text


def dataroot_layout_problem(root, dataset_mode):
    """Why `root` (a `dataroot`) does not hold what `--dataset-mode` reads, or None."""
    root = Path(root)
    folders = all((root / name).is_dir() for name in ("trainA", "trainB"))
    if dataset_mode == "aligned" and not (root / "train").is_dir():
        return (
            f"argument --dataroot: {root} has no train/ folder of A|B files (--dataset-mode aligned, pix2pix's "
            "layout); its trainA/, trainB/ are read with --dataset-mode paired"
        )
    if dataset_mode != "aligned" and not folders:
        return (
            f"argument --dataroot: {root} has train/ but not trainA/, trainB/: for pix2pix's A|B files, "
            "add --dataset-mode aligned"
        )
    return None


def existing_file(text):
    """argparse type: a file that exists (what it holds is checked when it is read)."""
    _existing(text, False, "a file")
    return text


def output_folder(text):
    """argparse type: a folder to write into (created later, only on success)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    ancestor = existing_ancestor(path)
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"{text} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text} cannot be written: no write permission in {ancestor}")
    return text


def keras_model(text):
    """argparse type: a `.keras` file (a zip archive with config.json), or a work directory holding `model.keras`."""
    path = Path(text)
    if path.is_dir():
        path = path / "model.keras"
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text} is a folder without model.keras (not a training work directory)")
    elif not path.exists():
        raise argparse.ArgumentTypeError(f"{text} not found")
    if not _is_keras_archive(path):
        raise argparse.ArgumentTypeError(
            f"{path} is not a readable Keras model (a .keras file is a zip archive with config.json)"
        )
    return text


def _is_keras_archive(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def torch_file(text):
    """argparse type: an existing file (its content is checked when it is read)."""
    _existing(text, False, "a PyTorch .pth file")
    return text


def _is_image(path):
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _has_image_files(folder):
    return any(_is_image(name) for _, _, names in os.walk(folder) for name in names)


def image_folder(text):
    """argparse type: a folder holding image files (at any depth)."""
    if not _has_image_files(_existing(text, True, "a folder of images")):
        raise argparse.ArgumentTypeError(f"{text} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return text


def fid_image_folder(text):
    """argparse type: a folder of images (at any depth) for FID, which needs at least 2."""
    image_folder(text)
    count = sum(1 for _, _, names in os.walk(text) for name in names if _is_image(name))
    if count < 2:
        raise argparse.ArgumentTypeError(f"FID needs at least 2 images; {text} holds {count}")
    return text


def model_source(text):
    """argparse type: a `.keras` file or work directory, a SavedModel folder (or export OUT), `.tflite` or `.onnx`."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} not found")
    if path.is_dir():
        if any((path / name).is_file() for name in ("saved_model.pb", "saved_model/1/saved_model.pb")):
            return text
        if not (path / "model.keras").is_file():
            raise argparse.ArgumentTypeError(
                f"{text} holds neither model.keras (a work directory) nor saved_model.pb (a SavedModel)"
            )
        return keras_model(text)
    if path.suffix in (".tflite", ".onnx"):
        return text
    if path.suffix != ".keras":
        raise argparse.ArgumentTypeError(
            f"{text} is not a .keras file, a work directory, a SavedModel directory, a .tflite or an .onnx file"
        )
    return keras_model(text)


def inception_weights_file(text):
    """argparse type: an FID Inception weights file that exists; if not, where to download it."""
    path = Path(text)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise argparse.ArgumentTypeError(f"{text} {what}: download {FID_WEIGHTS_URL} (91 MB) and give its path")
    return text


def labels_source(text):
    """argparse type: `cityscapes` or a palette file (one `R G B name` line per class)."""
    return text if text == "cityscapes" else existing_file(text)


def output_file(text):
    """argparse type: a file to write (its folder is created on success); not a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    ancestor = existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"{text} cannot be created: {ancestor} is a file")
    return text


def image_source(text):
    """argparse type: an image file, a folder of images (recursive) or a glob pattern."""
    path = Path(text)
    if path.is_dir():
        return image_folder(text)
    if path.is_file():
        if not _is_image(path):
            raise argparse.ArgumentTypeError(f"{text} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
        return text
    if glob.has_magic(text):
        if not any(_is_image(p) and os.path.isfile(p) for p in glob.iglob(text, recursive=True)):
            raise argparse.ArgumentTypeError(f"no image files match {text!r}")
        return text
    raise argparse.ArgumentTypeError(f"{text} not found (expected an image file, a folder or a glob pattern)")


_BYTE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def byte_size(text):
    """argparse type: bytes >= 1M: `4G`, `4GB`, `4GiB`, `1.5G` or `2000000` (K, M, G, T: 1024-powers)."""
    cleaned = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = cleaned[-1:] if cleaned[-1:] in _BYTE_UNITS else ""
    try:
        value = float(cleaned[: len(cleaned) - len(unit)]) * _BYTE_UNITS[unit]
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 2**20:
        raise argparse.ArgumentTypeError(
            f"must be a size of at least 1M, e.g. 4G, 512M or 2000000 (K, M, G, T are powers of 1024). "
            f"Received: {text!r}"
        )
    return int(value)


def add_direction_argument(parser):
    """--direction, as translate.py, export.py and evaluate.py take it."""
    parser.add_argument(
        "--direction",
        default="a2b",
        type=direction,
        metavar="{a2b,b2a}",
        help="which generator of a CycleGAN (a pix2pix has a2b only); the reference's AtoB/BtoA also work "
        "(default: a2b)",
    )


def add_batch_norm_argument(parser):
    """--batch-norm, as translate.py, evaluate.py and export.py take it."""
    parser.add_argument(
        "--batch-norm",
        default="running",
        choices=BATCH_NORM_MODES,
        help="a batch-norm generator's (pix2pix's) statistics: running: those learned in training, as the "
        "reference's test.py --eval; image: each image's own, as its test.py by default, which made the "
        "authors' published pix2pix results (default: running)",
    )


def add_memory_arguments(parser):
    """--max-memory, --tile-size and --tile-overlap, as translate.py and evaluate.py take them."""
    parser.add_argument(
        "--max-memory",
        type=byte_size,
        help="memory a translation may use, e.g. 4G or 512M; larger images are translated in tiles "
        "(default: half of the memory available: MemAvailable or the cgroup's limit, or the GPU's free memory)",
    )
    parser.add_argument(
        "--tile-size",
        type=Range(0),
        help="0: never tile, refuse an image that does not fit --max-memory; N: tiles of at most N pixels a side "
        "(default: tile only images that do not fit, with the largest tiles that fit)",
    )
    parser.add_argument(
        "--tile-overlap",
        type=Range(0),
        help="pixels neighbouring tiles share and blend, >= 0 (default: the generator's receptive radius, "
        "87 for resnet_9blocks; 4x that gives tiles equal to the whole image)",
    )


class PretrainedName(argparse.Action):
    """--pretrained NAME: a name of `cyclegan_keras.pretrained` (checked now); `--pretrained list` prints them."""

    def __call__(self, parser, namespace, value, option_string=None):
        from cyclegan_keras import pretrained

        if value == "list":
            try:
                print(pretrained.listing(), flush=True)
            except BrokenPipeError:  # `--pretrained list | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            parser.exit(0)
        try:
            pretrained.get(value)
        except ValueError as error:
            parser.error(f"argument {option_string}: {error}")
        setattr(namespace, self.dest, value)


def add_pretrained_argument(group):
    """--pretrained NAME, as translate.py, export.py and evaluate.py take it (in the group of their model flags)."""
    group.add_argument(
        "--pretrained",
        action=PretrainedName,
        metavar="NAME",
        help="one of the authors' published generators, e.g. horse2zebra: downloaded and converted once into "
        "$CYCLEGAN_KERAS_CACHE or ~/.cache/cyclegan_keras/, then used offline; 'list' prints the names",
    )


def lone_generator_problem(args):
    """Why `--direction b2a` cannot apply (--pretrained, --from-torch: one generator), or None."""
    if args.direction == "a2b":
        return None
    if getattr(args, "pretrained", None):
        from cyclegan_keras import pretrained

        other = pretrained.reverse(args.pretrained)
        hint = f"; for the other way use --pretrained {other}" if other else ""
        return (
            f"argument --direction: --pretrained {args.pretrained} is one generator, which translates its own way{hint}"
        )
    if getattr(args, "from_torch", None):
        return "argument --direction: a --from-torch file holds one generator, which translates its own direction"
    return None


def fetch_pretrained(parser, name):
    """The cached `.keras` of --pretrained NAME (downloaded and converted on first use); a failure exits 1, one line."""
    from cyclegan_keras import pretrained

    try:
        return str(pretrained.fetch(name))
    except (pretrained.PretrainedError, ValueError) as error:  # ValueError: a bad $CYCLEGAN_KERAS_PRETRAINED_URL
        parser.exit(1, f"error: argument --pretrained: {error}\n")
