"""Translating image files with a trained model, as the reference's test.py.

`translate_files` streams: it reads, translates and writes a batch at a time,
so memory does not grow with the number of files. It never writes over an
input, nor over another output of the same run, nor over a file in the
output folder that it did not write (`files.Manifest`).
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

from cyclegan_keras import data, files
from cyclegan_keras.model import DIRECTIONS, CycleGAN, padded_generator, translate_images

INFERENCE_PREPROCESS = ("none", "resize")
DEFAULT_LOAD_SIZE = 256


class ModelLoadError(ValueError):
    """The file exists but is not a Keras model this package can load."""


class OutputConflict(ValueError):
    """Writing the outputs would overwrite an input, mix with the originals or replace a user's file."""


# In OUT while a translation writes it, so that two never write one folder at once.
LOCK = ".cyclegan_keras.lock"


def load_generator(path, direction="a2b"):
    """The generator for `direction` from a `.keras` file or a training work directory.

    Accepts a saved `CycleGAN` (either direction) or a saved generator alone
    (e.g. one converted from PyTorch), which translates its own direction
    only: asking it for `"b2a"` is refused rather than ignored.

    Raises:
        FileNotFoundError: no model file at `path`.
        ModelLoadError: the file is not a readable Keras model.
        ValueError: `direction` is not `"a2b"` or `"b2a"`, or is `"b2a"` for
            a lone generator.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}. Received: direction={direction!r}")
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
    if isinstance(model, CycleGAN):
        return model.generator(direction)
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a CycleGAN or an image generator")
    if direction != "a2b":
        raise ValueError(
            f"{path} holds one generator ({model.name!r}), not a CycleGAN: it translates its own direction "
            f"only. Received: direction={direction!r}"
        )
    return model


def preprocess_for_inference(image, preprocess="none", load_size=DEFAULT_LOAD_SIZE):
    """Test-time preprocessing of one uint8 image `(height, width, channels)`.

    - `"resize"`: the reference's test.py. It sets `load_size = crop_size`,
      so its resize-and-crop is a square bicubic resize to
      `load_size x load_size` (antialiased, as in training: `data.resize_for`),
      with no crop and no flip. Outputs are then `load_size` square.
    - `"none"`: the image as it is; the generator pads to the size it needs
      and crops back, so outputs keep the input's size and aspect ratio.

    Args:
        image: uint8 tensor or array `(height, width, channels)`.
        preprocess: one of `INFERENCE_PREPROCESS`. Defaults to `"none"`.
        load_size: int. Side of the square for `"resize"`. Defaults to `256`.

    Returns:
        uint8 tensor `(height, width, channels)`.
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

    Names that would clash (`a.jpg` and `a.png`; `a/b.png` and `a__b.png`;
    names differing only in case, which clash on macOS and Windows) get the
    first free `_1`, `_2`, ... suffix, never one that another input's own
    name takes: `a.jpg`, `a.png`, `a_1.png` give `a`, `a_2`, `a_1`.
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

    Refused (`OutputConflict`): `out_dir` equal to or inside a folder given
    as `spec` (translations would mix with the originals, and a second run
    would read them as inputs); any output path that is an input file; and
    any output path (`<name>.png`, `inputs/<name>.png`, `index.html`) that
    already exists but was not written by an earlier translation into
    `out_dir`, or was changed since (`files.Manifest`): it is the user's.
    So `--input 'photos/*.jpg' --out photos/` adds PNGs beside the JPEGs,
    and running the same command again replaces its own outputs.
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
    generator, spec, out_dir, batch_size=4, preprocess="none", load_size=DEFAULT_LOAD_SIZE, verbose=True
):
    """Translates every image of `spec` and writes one PNG per readable input.

    Streams: reads an image, adds it to the current batch of images of the
    same size, and translates and writes a batch when it is full or the next
    image has another size, so at most `batch_size` decoded images are held.
    Writes `OUT/<name>.png` (see `output_names`), `OUT/inputs/<name>.png`
    (the preprocessed input) and an `OUT/index.html` gallery, each
    atomically, and lists them in `OUT/.cyclegan_keras_manifest.json`.
    Holds `OUT/.cyclegan_keras.lock` meanwhile. No image is written before
    the first one is translated; unreadable files are skipped and returned.

    Args:
        generator: `keras.Model`, e.g. from `load_generator`.
        spec: an image file, a folder (recursive) or a glob pattern.
        out_dir: output folder (see `plan_outputs` for what is refused).
        batch_size: int >= 1. Defaults to `4`.
        preprocess: `"none"` or `"resize"` (see `preprocess_for_inference`).
            Defaults to `"none"`.
        load_size: int. Side for `"resize"`. Defaults to `256`.
        verbose: bool. Show a progress bar. Defaults to `True`.

    Returns:
        `(written, bad)`: the output paths written, and `(path, reason)` of
        the files skipped.

    Raises:
        OutputConflict: an output would overwrite an input or a user's file.
        files.FolderInUse: another process is writing `out_dir`.
        files.DiskFull: the disk filled (the file being written is removed).
        data.DataError: no input image could be decoded (nothing is written).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    check_preprocess(preprocess, load_size)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        with files.exclusive(out_dir, LOCK):
            return _translate_files(generator, spec, out_dir, batch_size, preprocess, load_size, verbose)
    finally:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _translate_files(generator, spec, out_dir, batch_size, preprocess, load_size, verbose):
    plan = plan_outputs(spec, out_dir)
    manifest = files.Manifest(out_dir)
    channels = generator.input_shape[-1]
    fn = padded_generator(generator)
    progress = keras.utils.Progbar(len(plan), unit_name="image") if verbose else None
    written, bad, batch = [], [], []

    def flush():
        if not batch:
            return
        if not written:
            manifest.begin(_output_files([name for _, name in plan]))
        (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
        inputs = np.stack([image for _, image in batch]).astype("float32") / 127.5 - 1.0
        outputs = translate_images(generator, inputs, batch_size, fn)
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
            if len(batch) == batch_size:
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
    pixels = np.clip(np.round((np.asarray(image) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return files.write_bytes(path, tf.io.encode_png(pixels).numpy())


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


# -- Any exported form of a generator, as one callable ---------------------------------------


class Translator:
    """A generator in any of its forms, as `images -> translated images`.

    Call it with float32 `(n, h, w, input_channels)` in [-1, 1]; it returns a
    numpy array of the same height and width in [-1, 1].

    Attributes:
        kind: `"keras"`, `"saved_model"` or `"tflite"`.
        input_channels, output_channels: ints.
        path: what it was loaded from.
    """

    def __init__(self, fn, kind, input_channels, output_channels, path):
        self._fn = fn
        self.kind = kind
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.path = str(path)

    def __call__(self, images):
        return np.asarray(self._fn(np.asarray(images, np.float32)))


def load_translator(path, direction="a2b"):
    """A `Translator` for a `.keras` file or work directory, a SavedModel or a `.tflite` file.

    A `.keras` CycleGAN gives its generator for `direction`; a saved
    generator, a SavedModel (from `export.py`: the directory holding
    `saved_model.pb`, or the export's OUT folder) and a `.tflite` file have
    one direction, their own.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: `path` is none of these forms.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--model: not found: {path}")
    if path.is_dir():
        for candidate in (path, path / "saved_model" / "1"):
            if (candidate / "saved_model.pb").is_file():
                return _saved_model_translator(candidate)
        if not (path / "model.keras").is_file():
            raise ValueError(
                f"--model: {path} holds neither model.keras (a training work directory) nor saved_model.pb "
                "(a SavedModel)"
            )
    elif path.suffix == ".tflite":
        return _tflite_translator(path)
    elif path.suffix != ".keras":
        raise ValueError(
            f"--model: {path} is not a .keras file, a work directory, a SavedModel directory or a .tflite file"
        )
    generator = load_generator(path, direction)
    fn = padded_generator(generator)
    return Translator(
        lambda images: fn(images).numpy(), "keras", generator.input_shape[-1], generator.output_shape[-1], path
    )


def _saved_model_translator(path):
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    # The export declares images of unknown rank and checks the channels in
    # the graph: probe which count it accepts.
    for channels in (3, 1, 4):
        try:
            probe = signature(images=tf.zeros((1, 8, 8, channels)))["translated"]
        except tf.errors.InvalidArgumentError:
            continue
        return Translator(
            lambda images: signature(images=tf.constant(images))["translated"].numpy(),
            "saved_model",
            channels,
            int(probe.shape[-1]),
            path,
        )
    raise ValueError(f"--model: the SavedModel {path} takes no 1-, 3- or 4-channel images")


def _tflite_translator(path):
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

    return Translator(run, "tflite", channels, output_channels, path)
