"""Translating image files with a trained model, as the reference's test.py."""

import glob
import html
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import data
from cyclegan_keras.model import CycleGAN, padded_generator, translate_images


def load_generator(path, direction="a2b"):
    """The generator for `direction` from a `.keras` file or a training work directory.

    Accepts a saved `CycleGAN` (either direction) or a saved generator alone
    (e.g. one converted from PyTorch), whose direction is then its own.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.exists():
        raise FileNotFoundError(f"Model file not found: {path}")
    model = keras.models.load_model(path)
    if isinstance(model, CycleGAN):
        return model.generator(direction)
    return model


def resolve_inputs(spec):
    """Image files named by `spec`: one file, a folder (recursive) or a glob pattern."""
    path = Path(spec)
    if path.is_dir():
        return data.list_image_files(path), path
    if path.is_file():
        return [str(path)], path.parent
    matches = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in data.IMAGE_EXTENSIONS)
    if not matches:
        raise data.DataError(f"No image files match {spec!r} (a file, a folder or a glob pattern)")
    return matches, Path(spec.split("*")[0]).parent if "*" in spec else path.parent


def translate_files(generator, spec, out_dir, batch_size=4, verbose=True):
    """Translates every image of `spec` and writes PNGs at their original size.

    Images are grouped by size and run in batches. Writes
    `OUT/<name>.png` (the translations), `OUT/inputs/<name>.png` and an
    `OUT/index.html` gallery of input | output. Unreadable files are
    reported and skipped.

    Returns:
        `(written, bad)`: output paths, and `(path, reason)` of skipped files.
    """
    paths, root = resolve_inputs(spec)
    out_dir = Path(out_dir)
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
    channels = generator.input_shape[-1]
    images, bad = {}, []
    for path in paths:
        try:
            images[path] = data.read_image(path, channels).numpy()
        except data.UnreadableImage as error:
            bad.append((path, error.reason))
    by_size = {}
    for path, image in images.items():
        by_size.setdefault(image.shape, []).append(path)
    fn = padded_generator(generator)
    progress = keras.utils.Progbar(len(images), unit_name="image") if verbose else None
    names, written = {}, []
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            batch = np.stack([images[p] for p in chunk]).astype("float32") / 127.5 - 1.0
            outputs = translate_images(generator, batch, batch_size, fn)
            for path, output in zip(chunk, outputs):
                name = _output_name(path, root, names)
                _write_png(out_dir / f"{name}.png", output)
                _write_png(out_dir / "inputs" / f"{name}.png", images[path].astype("float32") / 127.5 - 1.0)
                written.append(out_dir / f"{name}.png")
            if progress:
                progress.add(len(chunk))
    _write_gallery(out_dir, [p.stem for p in written])
    return written, bad


def _output_name(path, root, taken):
    try:
        relative = Path(path).relative_to(root)
    except ValueError:
        relative = Path(Path(path).name)
    name = str(relative.with_suffix("")).replace("/", "__")
    if name in taken:
        taken[name] += 1
        name = f"{name}_{taken[name]}"
    else:
        taken[name] = 0
    return name


def _write_png(path, image):
    pixels = np.clip(np.round((np.asarray(image) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    tf.io.write_file(str(path), tf.io.encode_png(pixels))


def _write_gallery(out_dir, names):
    rows = "\n".join(
        f'<tr><td>{html.escape(n)}</td><td><img src="inputs/{html.escape(n)}.png"></td>'
        f'<td><img src="{html.escape(n)}.png"></td></tr>'
        for n in names
    )
    (Path(out_dir) / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>CycleGAN translations</title>"
        "<style>img{max-width:384px}td{padding:4px;vertical-align:top}</style></head><body>"
        f"<table><tr><th>name</th><th>input</th><th>output</th></tr>\n{rows}\n</table></body></html>\n"
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
