"""Translating image files with a trained model (the reference's test.py), at any size within a memory budget.

`translate_files` streams batches to PNGs, never over an input or a user's file; `translate_images`
runs a generator on arrays, in tiles when an image does not fit; `load_translator` wraps exported forms.
"""

import dataclasses
import functools
import glob
import html
import itertools
import os
import urllib.parse
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import data, files, ops
from cyclegan_keras.config import DEFAULT_LOAD_SIZE, DIRECTIONS, INFERENCE_PREPROCESS
from cyclegan_keras.files import format_bytes
from cyclegan_keras.layers import InstanceNormalization
from cyclegan_keras.model import GANModel
from cyclegan_keras.networks import min_size, size_multiple


class ModelLoadError(ValueError):
    """The file exists but is not a Keras model this package can load."""


class OutputConflict(ValueError):
    """Writing the outputs would overwrite an input, mix with the originals or replace a user's file."""


# In OUT while a translation writes it, so that two never write one folder at once.
LOCK = ".cyclegan_keras.lock"


def load_generator(path, direction="a2b"):
    """The generator for `direction` from a `.keras` file (a CycleGAN or a lone generator) or a work directory.

    Raises:
        FileNotFoundError: no model file at `path`.
        ModelLoadError: the file is not a readable Keras model.
        ValueError: a bad `direction`, or `"b2a"` for a lone generator (it has its own direction only).
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
    if isinstance(model, GANModel):
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


DEFAULT_MEMORY_FRACTION = 0.5
# Peak allocation per byte of the graph's largest live set: measured 1.87-1.99 for resnet_9blocks,
# tiled runs up to 13% past 2.0 (bench/tiled_inference.py --calibrate); 2.3 leaves that margin.
ALLOCATION_FACTOR = 2.3
# Whole-image float32 (input + output) copies beside the graph's: a tiled 24 MP photo held about 3.3.
IMAGE_BUFFERS = 4
# Leading instance norms gathered exactly tile by tile (the rest from a reduced image): tiled vs untiled
# PSNR at 2048x1536 was 32.7 dB with none, 37.7 with one, 39.3 with two, for 5% more compute.
EXACT_NORMS = 2


class MemoryBudgetError(ValueError):
    """An image cannot be translated within the memory budget (whole, with `tile_size=0`, or in tiles)."""


def available_memory():
    """Bytes this process can still allocate where the generator runs (GPU, else RAM within its cgroups)."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        free = _free_gpu_memory(gpus[0].name)
        if free is not None:
            return free
    candidates = [_meminfo_available(), *_cgroup_free()]
    candidates = [c for c in candidates if c is not None]
    if not candidates:  # not Linux
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(candidates)


def default_memory_budget():
    """`DEFAULT_MEMORY_FRACTION` of `available_memory()`: the budget when none is given."""
    return int(DEFAULT_MEMORY_FRACTION * available_memory())


def _meminfo_available():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free():
    """`limit - usage` of each memory cgroup controlling this process (v2 and v1)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    root = Path("/sys/fs/cgroup")
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            places, limit, usage = [root / path.lstrip("/"), root], "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            places = [root / "memory" / path.lstrip("/"), root / "memory"]
            limit, usage = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        for place in places:
            try:
                cap, used = (place / limit).read_text().strip(), int((place / usage).read_text())
            except (OSError, ValueError):
                continue
            if cap != "max" and int(cap) < 2**60:  # v1 writes "no limit" as a huge number
                found.append(max(int(cap) - used, 0))
            break
    return found


def _free_gpu_memory(device):
    try:
        from tensorflow.python.client import device_lib

        limits = [d.memory_limit for d in device_lib.list_local_devices() if d.name == device]
        used = tf.config.experimental.get_memory_info(device.replace("/device:", ""))["current"]
    except (ValueError, RuntimeError, KeyError):
        return None
    return limits[0] - used if limits else None


def padded_call(generator):
    """`generator` in inference mode on any image size (reflect-padded, output cropped back), for exporters."""
    multiple, smallest = size_multiple(generator), min_size(generator)

    def call(images):
        padded, crop = ops.pad_to_multiple(images, multiple, smallest)
        return ops.crop_spatial(generator(padded, training=False), crop)

    return call


def _compiled(generator):
    """`padded_call(generator)` as a `tf.function`, traced once for any size."""
    spec = tf.TensorSpec((None, None, None, generator.input_shape[-1]), tf.float32)
    return tf.function(padded_call(generator), input_signature=[spec])


def receptive_radius(generator):
    """Input pixels on each side that one output pixel of `generator` depends on (87 for resnet_9blocks)."""
    radius, step = 0, 1
    for layer in generator.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            radius += -(-(layer.kernel_size[0] - 1) // (2 * layer.strides[0])) * step
            step = max(step // layer.strides[0], 1)
        elif isinstance(layer, keras.layers.Conv2D):
            radius += (layer.kernel_size[0] - 1) // 2 * step
            step *= layer.strides[0]
    return radius


def default_overlap(generator):
    """Pixels shared by neighbouring tiles when none is given: the receptive radius, rounded up."""
    multiple = size_multiple(generator)
    return _round_up(receptive_radius(generator), multiple)


class _Runner:
    """A generator's compiled functions: the whole-image call and, with instance norm, the tiled ones.

    `record` keeps an image's norm statistics, `leading[i]` runs a tile up to norm `i`, `apply` runs
    tiles with the statistics: clones sharing the generator's layers.
    """

    def __init__(self, generator):
        self.generator = generator
        self.multiple, self.min_size = size_multiple(generator), min_size(generator)
        self.whole = _compiled(generator)
        self.norms = [layer for layer in generator.layers if isinstance(layer, InstanceNormalization)]
        self.statistics = {
            norm.name: (tf.Variable(tf.zeros(norm.input.shape[-1])), tf.Variable(tf.ones(norm.input.shape[-1])))
            for norm in self.norms
        }

    @functools.cached_property
    def record(self):
        return _compiled(self._clone(record=True)) if self.norms else None

    @functools.cached_property
    def apply(self):
        return _compiled(self._fixed) if self.norms else self.whole

    @functools.cached_property
    def leading(self):
        fixed = self._fixed
        return [
            _moments_over_box(keras.Model(fixed.inputs, fixed.get_layer(norm.name).input))
            for norm in self.norms[:EXACT_NORMS]
        ]

    @functools.cached_property
    def _fixed(self):
        return self._clone(record=False)

    def _clone(self, record):
        def replace(layer):
            if isinstance(layer, InstanceNormalization):
                return _GivenStatistics(layer, *self.statistics[layer.name], record=record)
            return layer  # shared, weights and all

        return keras.models.clone_model(self.generator, clone_function=replace)

    @functools.cached_property
    def bytes_per_pixel(self):
        """The largest sum of tensors alive at once in the generator's graph, per input pixel."""
        size = _round_up(max(128, self.min_size), self.multiple)
        spec = tf.TensorSpec((1, size, size, self.generator.input_shape[-1]), tf.float32)
        graph = tf.function(lambda x: self.generator(x, training=False)).get_concrete_function(spec).graph
        return _peak_live_bytes(graph) / size**2


def _peak_live_bytes(graph):
    """Peak bytes of float tensors alive at once when `graph` runs its ops in order (weights excluded)."""
    operations = graph.get_operations()
    last_use = {}
    for index, operation in enumerate(operations):
        for tensor in operation.inputs:
            last_use[tensor.ref()] = index
    live, peak = {}, 0
    for index, operation in enumerate(operations):
        if operation.type not in ("ReadVariableOp", "Const"):
            for tensor in operation.outputs:
                if tensor.dtype.is_floating and tensor.shape.is_fully_defined():
                    live[tensor.ref()] = tensor.shape.num_elements() * tensor.dtype.size
        peak = max(peak, sum(live.values()))
        for tensor in operation.inputs:
            if last_use[tensor.ref()] == index:
                live.pop(tensor.ref(), None)
    return peak


class _GivenStatistics(keras.layers.Layer):
    """An `InstanceNormalization` normalizing with stored statistics, or recording them (batch 1)."""

    def __init__(self, source, mean, variance, record):
        super().__init__(name=source.name, dtype=source.dtype_policy)
        self.source, self.mean, self.variance, self.record = source, mean, variance, record

    def call(self, inputs):
        if not self.record:
            return self.source.normalize(inputs, self.mean, self.variance)
        mean, variance = self.source.moments(inputs)
        self.mean.assign(mean[0, 0, 0])
        self.variance.assign(variance[0, 0, 0])
        return self.source.normalize(inputs, mean, variance)

    def compute_output_shape(self, input_shape):
        return input_shape


def _runner(generator):
    runner = getattr(generator, "_inference_runner", None)
    if runner is None:
        runner = _Runner(generator)
        # On the generator, untracked (not saved) and freed with it: a module cache would keep it alive.
        object.__setattr__(generator, "_inference_runner", runner)
    return runner


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _padded_size(runner, height, width):
    return tuple(max(_round_up(side, runner.multiple), runner.min_size) for side in (height, width))


def memory_needed(generator, batch, height, width):
    """Estimated peak bytes that translating `batch` images `height` x `width` whole allocates."""
    runner = _runner(generator)
    padded_height, padded_width = _padded_size(runner, height, width)
    channels = generator.input_shape[-1] + generator.output_shape[-1]
    per_image = ALLOCATION_FACTOR * runner.bytes_per_pixel * padded_height * padded_width
    per_image += IMAGE_BUFFERS * 4 * channels * height * width
    return int(batch * per_image)


def images_per_call(generator, height, width, max_memory, batch_size=None):
    """How many images `height` x `width` fit `max_memory` whole together (at most `batch_size`), maybe 0."""
    count = int(max_memory // memory_needed(generator, 1, height, width))
    return min(count, batch_size) if batch_size else count


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How `plan_tiles` tiles one padded image; `statistics_size` is the reduced image's (None without norms)."""

    tile: tuple
    rows: tuple
    columns: tuple
    overlap: int
    statistics_size: tuple | None
    memory: int


def check_tiling(generator, tile_size=None, overlap=None):
    """The overlap to use; raises ValueError for a `tile_size` or `overlap` this generator cannot take."""
    runner = _runner(generator)
    overlap = default_overlap(generator) if overlap is None else overlap
    if not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be an integer >= 0. Received: overlap={overlap!r}")
    smallest = _smallest_tile(runner, overlap)
    if tile_size is not None and (not isinstance(tile_size, int) or (tile_size != 0 and tile_size < smallest)):
        raise ValueError(
            f"tile_size must be 0 (never tile) or at least {smallest} for {generator.name!r} with an overlap of "
            f"{overlap}. Received: tile_size={tile_size!r}"
        )
    return overlap


def _smallest_tile(runner, overlap):
    return max(runner.min_size, _round_up(overlap + runner.multiple, runner.multiple))


def plan_tiles(generator, height, width, max_memory, tile_size=None, overlap=None):
    """The `Tiling` of a `height` x `width` image with the least computed area that fits `max_memory`.

    Tiles are sized and placed at multiples of `size_multiple`, so they see the whole image's grid.

    Raises:
        MemoryBudgetError: not even the smallest tiles fit.
    """
    runner = _runner(generator)
    overlap = check_tiling(generator, tile_size, overlap)
    padded_height, padded_width = _padded_size(runner, height, width)
    channels = generator.input_shape[-1] + generator.output_shape[-1]
    held = IMAGE_BUFFERS * 4 * channels * padded_height * padded_width  # the whole image, in and out
    per_pixel = ALLOCATION_FACTOR * runner.bytes_per_pixel + IMAGE_BUFFERS * 4 * channels
    area = (max_memory - held) / per_pixel  # the most tile pixels the budget leaves
    side = tile_size or max(padded_height, padded_width)
    smallest = _smallest_tile(runner, overlap)
    best = None
    for rows in range(1, padded_height // runner.multiple + 1):
        tile_height, row_offsets = _axis_tiles(padded_height, rows, overlap, runner.multiple)
        if tile_height > side:
            continue
        widest = min(side, padded_width, int(area // tile_height) // runner.multiple * runner.multiple)
        if widest >= smallest or widest == padded_width:
            columns = 1 if widest >= padded_width else -(-(padded_width - overlap) // (widest - overlap))
            tile_width, column_offsets = _axis_tiles(padded_width, columns, overlap, runner.multiple)
            while tile_width > widest:
                columns += 1
                tile_width, column_offsets = _axis_tiles(padded_width, columns, overlap, runner.multiple)
            work = len(row_offsets) * len(column_offsets) * tile_height * tile_width
            if best is None or work < best[0]:
                best = (work, (tile_height, tile_width), row_offsets, column_offsets)
        if tile_height <= smallest:
            break
    if best is None:
        raise MemoryBudgetError(
            f"a {width}x{height} image cannot be translated within the memory budget {format_bytes(max_memory)}: "
            f"even {smallest}x{smallest} tiles need {format_bytes(held + per_pixel * smallest**2)}"
        )
    _, tile, row_offsets, column_offsets = best
    statistics_size = None
    if runner.norms:
        scale = min(1.0, (tile[0] * tile[1] / (padded_height * padded_width)) ** 0.5)
        statistics_size = tuple(
            max(int(side * scale) // runner.multiple * runner.multiple, runner.min_size)
            for side in (padded_height, padded_width)
        )
    memory = int(held + per_pixel * tile[0] * tile[1])
    return Tiling(tile, row_offsets, column_offsets, overlap, statistics_size, memory)


def _axis_tiles(length, count, overlap, multiple):
    """`(tile, offsets)`: `count` tiles covering `length`, at multiples of `multiple`, neighbours sharing >= overlap."""
    if count == 1:
        return length, (0,)
    tile = min(_round_up(-(-(length - overlap) // count) + overlap, multiple), length)
    while True:
        offsets = tuple((length - tile) * i // (count - 1) // multiple * multiple for i in range(count - 1))
        offsets += (length - tile,)
        if tile == length or all(a + tile - b >= overlap for a, b in zip(offsets, offsets[1:])):
            return tile, offsets
        tile = min(tile + multiple, length)


def _axis_weights(length, tile, offsets, overlap):
    """Per tile, its blend weights along one axis (0 over the outer `overlap / 4`, then a ramp), summing to 1."""
    position = np.arange(tile) + 0.5
    profiles = []
    for i, start in enumerate(offsets):
        profile = np.ones(tile)
        if overlap:
            rise = np.clip((position - overlap / 4) / (overlap / 2), 0, 1)
            if i > 0:
                profile = np.minimum(profile, rise)
            if i < len(offsets) - 1:
                profile = np.minimum(profile, rise[::-1])
        profiles.append(profile)
    total = np.zeros(length)
    for start, profile in zip(offsets, profiles):
        total[start : start + tile] += profile
    return [(profile / total[start : start + tile]).astype(np.float32) for start, profile in zip(offsets, profiles)]


def _translate_tiled(generator, image, tiling, statistics=None):
    """One image `(h, w, c)` translated in the tiles of `tiling`, with the whole image's (or the given) statistics."""
    runner = _runner(generator)
    padded, crop = ops.pad_to_multiple(tf.constant(image[None]), runner.multiple, runner.min_size)
    padded = padded.numpy()
    if runner.norms:
        if statistics is None:
            # Antialiased bilinear: closer statistics than area averaging (bench/tiled_inference.py).
            runner.record(tf.image.resize(padded, tiling.statistics_size, antialias=True))
            _exact_leading_statistics(runner, padded, tiling)
        else:
            for name, (mean, variance) in statistics.items():
                runner.statistics[name][0].assign(mean)
                runner.statistics[name][1].assign(variance)
    length_y, length_x = padded.shape[1:3]
    output = np.zeros((length_y, length_x, generator.output_shape[-1]), np.float32)
    tile_y, tile_x = tiling.tile
    weights_y = _axis_weights(length_y, tile_y, tiling.rows, tiling.overlap)
    weights_x = _axis_weights(length_x, tile_x, tiling.columns, tiling.overlap)
    for y, weight_y in zip(tiling.rows, weights_y):
        for x, weight_x in zip(tiling.columns, weights_x):
            tile = runner.apply(padded[:, y : y + tile_y, x : x + tile_x])[0].numpy()
            output[y : y + tile_y, x : x + tile_x] += tile * (weight_y[:, None, None] * weight_x[None, :, None])
    (top, bottom), (left, right) = crop
    return output[top : length_y - bottom, left : length_x - right]


def _exact_leading_statistics(runner, padded, tiling):
    """The first `EXACT_NORMS` norms' statistics of the whole padded image, from each tile's owned pixels.

    The parts' moments are combined exactly (Chan et al.), in float64.
    """
    (tile_y, tile_x), multiple = tiling.tile, runner.multiple
    owned_y = _owned_parts(tiling.rows, tile_y, padded.shape[1], multiple)
    owned_x = _owned_parts(tiling.columns, tile_x, padded.shape[2], multiple)
    for norm, leading in zip(runner.norms, runner.leading):
        count, mean, squares = 0, 0.0, 0.0  # squares: the sum of squared deviations from the mean
        for y, (top, bottom) in zip(tiling.rows, owned_y):
            for x, (left, right) in zip(tiling.columns, owned_x):
                box = tf.constant([top - y, bottom - y, left - x, right - x])
                part_mean, part_variance, part_count = (
                    v.numpy().astype(np.float64) for v in leading(padded[:, y : y + tile_y, x : x + tile_x], box)
                )
                delta, total = part_mean - mean, count + part_count
                mean = mean + delta * part_count / total
                squares = squares + part_variance * part_count + delta**2 * count * part_count / total
                count = total
        runner.statistics[norm.name][0].assign(mean.astype(np.float32))
        runner.statistics[norm.name][1].assign((squares / count).astype(np.float32))


def _moments_over_box(features_of):
    """`(tile, box) -> (mean, variance, count)` of `features_of(tile)` over `box`; one graph, so only moments leave."""

    def moments(tile, box):
        features = features_of(tile)[0]
        box = box // (tf.shape(tile)[1] // tf.shape(features)[0])  # the features' stride
        part = tf.cast(features[box[0] : box[1], box[2] : box[3]], tf.float32)
        mean, variance = tf.nn.moments(part, [0, 1])
        return mean, variance, tf.cast(tf.shape(part)[0] * tf.shape(part)[1], tf.float32)

    return tf.function(moments)


def _owned_parts(offsets, tile, length, multiple):
    """Per tile along one axis, `(start, end)` of the pixels it owns: up to the middles of its overlaps."""
    middles = [_round_up((a + tile + b) // 2, multiple) for a, b in zip(offsets, offsets[1:])]
    middles = [min(max(m, b), a + tile) for m, a, b in zip(middles, offsets, offsets[1:])]
    return list(zip([0, *middles], [*middles, length]))


def recorded_statistics(generator, image):
    """`{layer name: (mean, variance)}` of the generator's instance norms on `image` `(h, w, c)`, whole."""
    runner = _runner(generator)
    if not runner.norms:
        return {}
    runner.record(tf.constant(image[None], tf.float32))
    return {name: (mean.numpy(), variance.numpy()) for name, (mean, variance) in runner.statistics.items()}


def translate_images(generator, images, batch_size=8, max_memory=None, tile_size=None, overlap=None):
    """Runs an image-to-image generator on images of any size, within a memory budget.

    Images that fit are translated whole, up to `batch_size` together; others in overlapping tiles
    (`plan_tiles`) normalized with the whole image's instance-norm statistics, blended where they meet.

    Args:
        images: `(n, height, width, channels)` or one image `(height, width, channels)`, in [-1, 1].
        max_memory: bytes it may allocate; `default_memory_budget()` if None.
        tile_size: `None` tiles only what does not fit; `0` never tiles; `N` tiles larger images by `N`.
        overlap: fewest pixels neighbouring tiles share; exact from `4 * receptive_radius(generator)`.

    Returns:
        float32 numpy array with the input's height and width.

    Raises:
        MemoryBudgetError: an image does not fit (see `tile_size`).
    """
    images = np.asarray(images, dtype="float32")
    single = images.ndim == 3
    if single:
        images = images[None]
    channels = generator.input_shape[-1]
    if images.ndim != 4 or images.shape[-1] != channels:
        raise ValueError(
            f"Generator {generator.name!r} expects images of shape (n, height, width, {channels}). "
            f"Received: images.shape={images.shape}"
        )
    max_memory = max_memory or default_memory_budget()
    check_tiling(generator, tile_size, overlap)
    count, height, width = images.shape[:3]
    outputs = np.empty((count, height, width, generator.output_shape[-1]), np.float32)
    runner = _runner(generator)
    larger = tile_size and max(_padded_size(runner, height, width)) > tile_size
    together = 0 if larger else images_per_call(generator, height, width, max_memory, batch_size)
    if together:
        for start in range(0, count, together):
            outputs[start : start + together] = runner.whole(images[start : start + together]).numpy()
    elif count:
        if tile_size == 0:
            need = memory_needed(generator, 1, height, width)
            raise MemoryBudgetError(
                f"a {width}x{height} image needs {format_bytes(need)} to translate whole, more than the memory "
                f"budget {format_bytes(max_memory)}, and tiling is off"
            )
        tiling = plan_tiles(generator, height, width, max_memory, tile_size, overlap)
        for index in range(count):
            outputs[index] = _translate_tiled(generator, images[index], tiling)
    return outputs[0] if single else outputs


class Translator:
    """A generator in any of its forms (`kind`: keras, saved_model, tflite), as images -> images in [-1, 1]."""

    def __init__(self, fn, kind, input_channels, output_channels, path):
        self._fn = fn
        self.kind = kind
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.path = str(path)

    def __call__(self, images):
        return np.asarray(self._fn(np.asarray(images, np.float32)))


def load_translator(path, direction="a2b", max_memory=None, tile_size=None, overlap=None):
    """A `Translator` for a `.keras` file or work directory, a SavedModel (or export folder) or a `.tflite` file.

    Only a CycleGAN has two directions. All translate within `max_memory`; exported forms cannot tile
    (their norms are fixed in the graph), so an image too large for them raises `MemoryBudgetError`.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: `path` is none of these forms.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--model: not found: {path}")
    max_memory = max_memory or default_memory_budget()
    exported = path.suffix == ".tflite" or any(
        (path / name).is_file() for name in ("saved_model.pb", "saved_model/1/saved_model.pb")
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
    elif path.suffix != ".keras":
        raise ValueError(
            f"--model: {path} is not a .keras file, a work directory, a SavedModel directory or a .tflite file"
        )
    generator = load_generator(path, direction)
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
