"""Running a generator on images of any size within a memory budget: whole, batched, or in tiles.

`translate_images` is the one entry point; `padded_call` is the traced form the exporters use.
"""

import dataclasses
import functools
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import ops
from cyclegan_keras.files import format_bytes
from cyclegan_keras.layers import Downsample, InstanceNormalization, Upsample
from cyclegan_keras.networks import downsampling, min_size, size_multiple, upsampling

DEFAULT_MEMORY_FRACTION = 0.5
# Peak allocation per byte of the graph's largest live set: measured 1.87-1.99 for resnet_9blocks,
# tiled runs up to 13% past 2.0 (bench/tiled_inference.py --calibrate); 2.3 leaves that margin.
ALLOCATION_FACTOR = 2.3
# Whole-image float32 (input + output) copies beside the graph's: a tiled 24 MP photo held about 3.3.
IMAGE_BUFFERS = 4
# Leading instance norms gathered exactly tile by tile (the rest from a reduced image): tiled vs untiled
# PSNR at 2048x1536 was 32.7 dB with none, 37.7 with one, 39.3 with two, at 1.024x the time (--cost).
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
        up, down = upsampling(layer), downsampling(layer)
        if isinstance(layer, (keras.layers.Conv2DTranspose, Upsample)):
            size = layer.filter_size if isinstance(layer, Upsample) else layer.kernel_size[0]
            radius += -(-(size - 1) // (2 * up)) * step
            step = max(step // up, 1)
        elif isinstance(layer, (keras.layers.Conv2D, Downsample)):
            size = layer.filter_size if isinstance(layer, Downsample) else layer.kernel_size[0]
            radius += (size - 1) // 2 * step
            step *= down
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


ONNX_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")  # those of them that this onnxruntime has


def onnx_session(path):
    """An onnxruntime session of an exported `.onnx` file: on the GPU with onnxruntime-gpu, else the CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    providers = [provider for provider in ONNX_PROVIDERS if provider in available]
    return onnxruntime.InferenceSession(str(path), providers=providers)
