"""Translating image files with a trained model, as the reference's test.py."""

import glob
import html
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
