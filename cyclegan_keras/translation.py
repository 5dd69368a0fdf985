"""Translating image files and saved or exported models, as the reference's test.py.

`translate_files` streams batches to PNGs, never over an input or a user's file; `load_generator`
reads a saved model; `load_translator` wraps every form (Keras, SavedModel, TFLite, ONNX) as one callable.
"""

import glob
import html
import itertools
import os
import urllib.parse
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import cut, data, files, networks  # noqa: F401  (cut registers CUT for load_model)
from cyclegan_keras.config import DEFAULT_LOAD_SIZE, DIRECTIONS, INFERENCE_PREPROCESS, ONNX_INSTALL
from cyclegan_keras.files import format_bytes
from cyclegan_keras.inference import (
    ALLOCATION_FACTOR,
    IMAGE_BUFFERS,
    MemoryBudgetError,
    check_tiling,
    default_memory_budget,
    images_per_call,
    onnx_session,
    translate_images,
)
from cyclegan_keras.model import GANModel
from cyclegan_keras.pix2pix import Pix2Pix  # noqa: F401  (registered for load_model)


class ModelLoadError(ValueError):
    """The file exists but is not a Keras model this package can load."""


class OutputConflict(ValueError):
    """Writing the outputs would overwrite an input, mix with the originals or replace a user's file."""


# In OUT while a translation writes it, so that two never write one folder at once.
LOCK = ".cyclegan_keras.lock"


def load_generator(path, direction="a2b"):
    """The generator for `direction` from a `.keras` file (a CycleGAN, a CUT or a lone generator) or a work directory.

    Raises:
        FileNotFoundError: no model file at `path`.
        ModelLoadError: the file is not a readable Keras model.
        ValueError: a bad `direction`, or `"b2a"` for a lone generator or a CUT (they learn one direction).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}. Received: direction={direction!r}")
    path, model = _load_model(path)
    if isinstance(model, GANModel):
        return model.generator(direction)
    if direction != "a2b":
        raise ValueError(
            f"{path} holds one generator ({model.name!r}), not a CycleGAN: it translates its own direction "
            f"only. Received: direction={direction!r}"
        )
    return model


def load_generators(path):
    """`{direction: generator}` of a `.keras` file or work directory, read once: both of a CycleGAN, a2b alone.

    A lone generator translates its own direction, named a2b.

    Raises:
        FileNotFoundError: no model file at `path`.
        ModelLoadError: the file is not a readable Keras model.
    """
    _, model = _load_model(path)
    return dict(model.generators) if isinstance(model, GANModel) else {"a2b": model}


def _load_model(path):
    """`(the .keras file, its model)`: a `GANModel` or a one-input `keras.Model`."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.exists():
        raise FileNotFoundError(f"Model file not found: {path}")
    try:
        model = keras.models.load_model(path)
    except Exception as error:  # Keras raises ValueError, TypeError, OSError, zip errors...
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ModelLoadError(f"{path} is not a readable Keras model: {reason}") from None
    if not isinstance(model, GANModel) and (not isinstance(model, keras.Model) or len(model.inputs) != 1):
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a CycleGAN or an image generator")
    return path, model


def preprocess_for_inference(image, preprocess="none", load_size=DEFAULT_LOAD_SIZE):
    """Test-time preprocessing of one uint8 image `(height, width, channels)`, as a uint8 tensor.

    Args:
        preprocess: `"none"` (as it is) or `"resize"` (the reference's test.py: a square antialiased
            bicubic resize to `load_size`, no crop, no flip).
    """
    check_preprocess(preprocess, load_size)
    image = tf.convert_to_tensor(image, tf.uint8)
    if preprocess == "none":
        return image
    square = data.Preprocessing(
        mode="resize_and_crop", load_size=load_size, crop_size=load_size, flip=False, channels=image.shape[-1]
    )
    return data.resize_for(image, square)


def check_preprocess(preprocess, load_size):
    if preprocess not in INFERENCE_PREPROCESS:
        raise ValueError(f"preprocess must be one of {INFERENCE_PREPROCESS}. Received: preprocess={preprocess!r}")
    if not isinstance(load_size, int) or load_size < 1:
        raise ValueError(f"load_size must be an integer >= 1. Received: load_size={load_size!r}")


def resolve_inputs(spec):
    """Image files named by `spec` (a file, a folder read recursively, or a glob), and their root.

    Output names are the files' paths relative to the root.
    """
    path = Path(spec)
    if path.is_dir():
        return data.list_image_files(path), path
    if path.is_file():
        return [str(path)], path.parent
    matches = sorted(
        p
        for p in glob.glob(str(spec), recursive=True)
        if Path(p).suffix.lower() in data.IMAGE_EXTENSIONS and os.path.isfile(p)
    )
    if not matches:
        raise data.DataError(f"No image files match {spec!r} (a file, a folder or a glob pattern)")
    # The root is the folder before the first part with a wildcard: photos/ for photos/**/*.jpg.
    fixed = itertools.takewhile(lambda part: not glob.has_magic(part), path.parts)
    return matches, Path(*fixed) if path.parts and not glob.has_magic(path.parts[0]) else Path(".")


def output_names(paths, root):
    """One distinct output name per input: its path under `root`, `/` as `__`.

    Clashes (also by case) get the first `_1`, `_2`, ... no other input's own name takes:
    `a.jpg`, `a.png`, `a_1.png` give `a`, `a_2`, `a_1`.
    """
    stems = []
    for path in paths:
        try:
            relative = Path(path).relative_to(root)
        except ValueError:
            relative = Path(Path(path).name)
        stems.append(str(relative.with_suffix("")).replace(os.sep, "__"))
    counts = {}
    for stem in stems:
        counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
    taken = {stem.casefold() for stem in stems if counts[stem.casefold()] == 1}
    names = []
    for stem in stems:
        name, suffix = stem, 0
        if counts[stem.casefold()] > 1:
            while name.casefold() in taken:
                suffix += 1
                name = f"{stem}_{suffix}"
            taken.add(name.casefold())
        names.append(name)
    return names


def plan_outputs(spec, out_dir):
    """`[(input path, output name)]` for `spec`, after checking no output overwrites an input.

    Raises `OutputConflict` for `out_dir` in a folder given as `spec`, an output that is an input, or
    one that exists and is not an unchanged earlier translation (`files.Manifest`): the user's file.
    """
    paths, root = resolve_inputs(spec)
    out = Path(os.path.realpath(out_dir))
    if Path(spec).is_dir():
        folder = Path(os.path.realpath(spec))
        if out == folder or folder in out.parents:
            raise OutputConflict(
                f"{out_dir} is inside the input folder {spec}: the translations would mix with the originals "
                "and be read as inputs next time; choose a folder outside it"
            )
    names = output_names(paths, root)
    relatives = _output_files(names)
    inputs = {Path(os.path.realpath(p)) for p in paths}
    for relative in relatives:
        target = Path(os.path.realpath(out / relative))
        if target in inputs:
            raise OutputConflict(f"writing into {out_dir} would overwrite the input {target}; choose another folder")
    try:
        files.Manifest(out).check(relatives)
    except files.ForeignFile as error:
        raise OutputConflict(
            f"{error.path} already exists and is not a translation this tool wrote there (or was changed "
            "since); move it away or choose another folder"
        ) from None
    return list(zip(paths, names))


def _output_files(names):
    """The files a translation writes in OUT, relative to it."""
    return ["index.html", *(f"{folder}{n}.png" for n in names for folder in ("", "inputs/"))]


def translate_files(
    generator,
    spec,
    out_dir,
    batch_size=4,
    preprocess="none",
    load_size=DEFAULT_LOAD_SIZE,
    verbose=True,
    *,
    max_memory=None,
    tile_size=None,
    overlap=None,
):
    """Translates every image of `spec`, a batch at a time, into `OUT/<name>.png` and `OUT/inputs/<name>.png`.

    Also writes an `OUT/index.html` gallery; each file atomically, listed in the manifest, under
    `LOCK`. Nothing is written before the first image is translated; unreadable files are skipped.

    Args:
        spec: an image file, a folder (recursive) or a glob pattern.
        preprocess, load_size: see `preprocess_for_inference`.
        verbose: show a progress bar.
        max_memory: bytes a translation may allocate; `default_memory_budget()`, taken once, if None.
        tile_size, overlap: see `translate_images`.

    Returns:
        `(written, bad)`: the output paths written, and `(path, reason)` of the files skipped.

    Raises:
        OutputConflict: an output would overwrite an input or a user's file.
        files.FolderInUse: another process is writing `out_dir`.
        files.DiskFull: the disk filled (the file being written is removed).
        data.DataError: no input image could be decoded (nothing is written).
        MemoryBudgetError: an image does not fit with `tile_size=0` (the images before it are written).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    check_preprocess(preprocess, load_size)
    check_tiling(generator, tile_size, overlap)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        with files.exclusive(out_dir, LOCK):
            return _translate_files(
                generator, spec, out_dir, batch_size, preprocess, load_size, verbose, max_memory, tile_size, overlap
            )
    finally:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _translate_files(
    generator, spec, out_dir, batch_size, preprocess, load_size, verbose, max_memory, tile_size, overlap
):
    plan = plan_outputs(spec, out_dir)
    manifest = files.Manifest(out_dir)
    channels = generator.input_shape[-1]
    max_memory = max_memory or default_memory_budget()
    progress = keras.utils.Progbar(len(plan), unit_name="image") if verbose else None
    written, bad, batch = [], [], []

    def flush():
        if not batch:
            return
        inputs = np.stack([image for _, image in batch]).astype("float32") / 127.5 - 1.0
        outputs = translate_images(generator, inputs, batch_size, max_memory, tile_size, overlap)
        if not written:  # after: an image refused for its size leaves nothing pending
            manifest.begin(_output_files([name for _, name in plan]))
        (out_dir / "inputs").mkdir(parents=True, exist_ok=True)  # after: a refused image writes nothing
        for (name, _), source, output in zip(batch, inputs, outputs):
            _write_png(out_dir / "inputs" / f"{name}.png", source)
            written.append(_write_png(out_dir / f"{name}.png", output))
        batch.clear()

    for path, name in plan:
        try:
            image = preprocess_for_inference(data.read_image(path, channels), preprocess, load_size).numpy()
        except data.UnreadableImage as error:
            bad.append((path, error.reason))
        else:
            if batch and batch[0][1].shape != image.shape:
                flush()
            batch.append((name, image))
            if len(batch) >= images_per_call(generator, *image.shape[:2], max_memory, batch_size):
                flush()
        if progress:
            progress.add(1)
    flush()
    if not written:
        first = f" ({bad[0][0]}: {bad[0][1]})" if bad else ""
        raise data.DataError(f"None of the {len(plan)} image file(s) of {spec} could be decoded{first}")
    _write_gallery(out_dir, [p.stem for p in written])
    manifest.finish(_output_files([name for _, name in plan]))
    return written, bad


def _write_png(path, image):
    return files.write_bytes(path, tf.io.encode_png(data.to_uint8(image)).numpy())


def _url(name):
    return html.escape(urllib.parse.quote(name))


def _write_gallery(out_dir, names):
    rows = "\n".join(
        f'<tr><td>{html.escape(n)}</td><td><img src="inputs/{_url(n)}.png"></td><td><img src="{_url(n)}.png"></td></tr>'
        for n in names
    )
    files.write_text(
        Path(out_dir) / "index.html",
        "<!doctype html><html><head><meta charset='utf-8'><title>CycleGAN translations</title>"
        "<style>img{max-width:384px}td{padding:4px;vertical-align:top}</style></head><body>"
        f"<table><tr><th>name</th><th>input</th><th>output</th></tr>\n{rows}\n</table></body></html>\n",
    )


class Translator:
    """A generator in any of its forms (`kind`: keras, saved_model, tflite, onnx), as images -> images in [-1, 1]."""

    def __init__(self, fn, kind, input_channels, output_channels, path):
        self._fn = fn
        self.kind = kind
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.path = str(path)

    def __call__(self, images):
        return np.asarray(self._fn(np.asarray(images, np.float32)))


def load_translator(path, direction="a2b", max_memory=None, tile_size=None, overlap=None, batch_norm="running"):
    """A `Translator` for a `.keras` file or work directory, a SavedModel (or export folder), `.tflite` or `.onnx`.

    Only a CycleGAN has two directions. All translate within `max_memory`; exported forms cannot tile
    (their norms are fixed in the graph), so an image too large for them raises `MemoryBudgetError`.
    `batch_norm="image"`: a `.keras` generator's batch norms use each image's statistics (see
    `networks.with_image_statistics`); an export has its statistics fixed when it was exported.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: `path` is none of these forms.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--model: not found: {path}")
    max_memory = max_memory or default_memory_budget()
    exported = path.suffix in (".tflite", ".onnx") or any(
        (path / name).is_file() for name in ("saved_model.pb", "saved_model/1/saved_model.pb")
    )
    if exported and batch_norm != "running":
        raise ValueError(
            f"--batch-norm {batch_norm}: {path} is an exported model, whose statistics were fixed by export.py "
            "(export with --batch-norm image instead)"
        )
    if exported and (tile_size or overlap is not None):
        raise ValueError(
            f"--model: {path} is an exported model, which cannot be translated in tiles (its normalization is "
            f"fixed in its graph). Received: tile_size={tile_size}, overlap={overlap}"
        )
    if path.is_dir():
        for candidate in (path, path / "saved_model" / "1"):
            if (candidate / "saved_model.pb").is_file():
                return _saved_model_translator(candidate, max_memory)
        if not (path / "model.keras").is_file():
            raise ValueError(
                f"--model: {path} holds neither model.keras (a training work directory) nor saved_model.pb "
                "(a SavedModel)"
            )
    elif path.suffix == ".tflite":
        return _tflite_translator(path, max_memory)
    elif path.suffix == ".onnx":
        return _onnx_translator(path, max_memory)
    elif path.suffix != ".keras":
        raise ValueError(
            f"--model: {path} is not a .keras file, a work directory, a SavedModel directory, a .tflite or an "
            ".onnx file"
        )
    generator = load_generator(path, direction)
    if batch_norm == "image":
        try:
            generator = networks.with_image_statistics(generator)
        except ValueError as error:
            raise ValueError(f"--batch-norm image: {error}") from None
    check_tiling(generator, tile_size, overlap)
    return Translator(
        lambda images: translate_images(generator, images, max(len(images), 1), max_memory, tile_size, overlap),
        "keras",
        generator.input_shape[-1],
        generator.output_shape[-1],
        path,
    )


def _exported_within_budget(run, widest, channels, path, max_memory):
    """`run` on as many images together as fit `max_memory`; refuses an image that does not fit alone."""
    per_pixel = ALLOCATION_FACTOR * 4 * 2 * widest + IMAGE_BUFFERS * 4 * channels

    def call(images):
        count, height, width = images.shape[:3]
        one = per_pixel * height * width
        if one > max_memory:
            raise MemoryBudgetError(
                f"{path}: a {width}x{height} image needs up to {format_bytes(one)}, more than the memory budget "
                f"{format_bytes(max_memory)}; an exported model cannot be tiled (its normalization is fixed in "
                "its graph): translate with the .keras model, or raise the budget"
            )
        together = max(1, int(max_memory // one))
        return np.concatenate([run(images[i : i + together]) for i in range(0, max(count, 1), together)])

    return call


def _saved_model_translator(path, max_memory):
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    widest = max(max(v.shape[2:]) for v in loaded.variables if v.shape.rank == 4)
    # The export declares images of unknown rank and checks channels in the graph: probe them.
    for channels in (3, 1, 4):
        try:
            probe = signature(images=tf.zeros((1, 8, 8, channels)))["translated"]
        except tf.errors.InvalidArgumentError:
            continue
        output_channels = int(probe.shape[-1])
        run = _exported_within_budget(
            lambda images: signature(images=tf.constant(images))["translated"].numpy(),
            widest,
            channels + output_channels,
            path,
            max_memory,
        )
        return Translator(run, "saved_model", channels, output_channels, path)
    raise ValueError(f"--model: the SavedModel {path} takes no 1-, 3- or 4-channel images")


def _tflite_translator(path, max_memory):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
    input_detail = interpreter.get_input_details()[0]
    channels = int(input_detail["shape"][-1])
    output_channels = int(interpreter.get_output_details()[0]["shape"][-1])
    index = input_detail["index"]
    current = [None]

    def run(images):
        outputs = []
        for image in images:  # the export's .tflite files take batch 1
            if current[0] != image.shape:
                interpreter.resize_tensor_input(index, (1, *image.shape), strict=False)
                interpreter.allocate_tensors()
                current[0] = image.shape
            interpreter.set_tensor(index, image[None])
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
        return np.stack(outputs)

    shapes = [detail["shape"] for detail in interpreter.get_tensor_details() if len(detail["shape"]) == 4]
    widest = max(max(shape[0], shape[-1]) for shape in shapes)
    run = _exported_within_budget(run, widest, channels + output_channels, path, max_memory)
    return Translator(run, "tflite", channels, output_channels, path)


def _onnx_translator(path, max_memory):
    try:
        import onnx
        import onnxruntime  # noqa: F401  (onnx_session's)
    except ImportError as error:
        raise ValueError(
            f"--model: {path}: an ONNX file needs onnx and onnxruntime ({error}): {ONNX_INSTALL}"
        ) from None
    try:
        session = onnx_session(path)
    except Exception as error:  # onnxruntime's own (InvalidProtobuf, InvalidGraph, ...) derive from Exception only
        raise ValueError(f"--model: {path} is not a model onnxruntime can load: {error}") from None
    (images,), (translated,) = session.get_inputs(), session.get_outputs()
    channels, output_channels = images.shape[-1], translated.shape[-1]
    # Conv weights (OIHW) bound the widest activation; kernel sides in the max only overestimate.
    weights = onnx.load(str(path), load_external_data=False).graph.initializer
    widest = max(max(w.dims) for w in weights if len(w.dims) == 4)
    run = _exported_within_budget(
        lambda batch: session.run([translated.name], {images.name: batch})[0],
        widest,
        channels + output_channels,
        path,
        max_memory,
    )
    return Translator(run, "onnx", channels, output_channels, path)
