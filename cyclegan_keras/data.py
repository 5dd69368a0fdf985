"""Image data for CycleGAN (unpaired) and pix2pix (pairs) as `tf.data` pipelines.

Each source (folders, tfds `cycle_gan`, the synthetic set) becomes a `Domain` of images decoded
(EXIF applied) and resized once; `unpaired_dataset` pairs, crops, flips and batches them with
randomness stateless in `(seed, epoch, position)`, so a restart rebuilds any epoch and step.
Paired sources (`aligned_domains`: A|B files; `paired_folder_domains`: two folders matched by
name) give two domains whose i-th images are a pair, which `paired_dataset` keeps together,
cropped and flipped alike.
"""

import concurrent.futures
import dataclasses
import functools
import itertools
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from cyclegan_keras.config import IMAGE_EXTENSIONS, PREPROCESS_MODES, TFDS_CONFIGS, Preprocessing  # noqa: F401

DEFAULT_CACHE_BYTES = 4 * 2**30
# Pixels a file may declare (width x height x GIF frames): any photo for translation (200 MP is
# 0.6 GB decoded); 8192x8192 for training, whose resize holds 12 bytes a pixel in up to 8 threads.
MAX_DECODE_PIXELS = 2**28
MAX_TRAINING_PIXELS = 2**26


class DataError(ValueError):
    """A problem with the user's data: the message names the file or folder."""


class UnreadableImage(DataError):
    """One image file that cannot be decoded (or, in paired data, not paired)."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass
class Domain:
    """One domain's images: `images` (in memory) or `paths` (decoded on the fly, with EXIF
    `orientations`, all 1 when None; `half` "left" or "right" of each file, for A|B files);
    `bad` lists `(path, reason)` for files left out; `paired`: one side of pairs."""

    name: str
    images: list = None
    paths: list = None
    bad: list = dataclasses.field(default_factory=list)
    orientations: list = None
    half: str = None
    paired: bool = False

    def __len__(self):
        return len(self.images if self.images is not None else self.paths)


def decode_image(data, channels=3):
    """Decodes JPEG/PNG/BMP/GIF bytes to uint8 `(height, width, channels)` as stored (no EXIF
    orientation); 16-bit PNGs are rounded to 8 bits, a GIF gives its first frame."""
    bit_depth = tf.strings.substr(data, tf.minimum(24, tf.strings.length(data)), 1)  # in a PNG's IHDR
    sixteen_bit_png = tf.logical_and(tf.strings.substr(data, 0, 8) == _PNG_SIGNATURE, bit_depth == b"\x10")
    return tf.cond(
        sixteen_bit_png,
        lambda: _decode_16_bit_png(data, channels),
        # Straight to uint8: TensorFlow widens 8-bit JPEG/BMP/GIF pixels to 16 bits as x * 256 (not 257).
        lambda: tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False),
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_16_bit_png(data, channels):
    image = tf.io.decode_png(data, channels=channels, dtype=tf.uint16)
    # Rounding, not TensorFlow's truncating conversion, keeps 16-bit PNGs exact to the byte.
    return tf.cast(tf.round(tf.cast(image, tf.float32) / 257.0), tf.uint8)


# EXIF orientation o -> PIL.ImageOps.exif_transpose's transposition, _ORIENTED[o - 1]
# (tf.reverse: a [::-1] slice is ten times slower).
_ORIENTED = (
    lambda image: image,
    lambda image: tf.reverse(image, [1]),  # 2: FLIP_LEFT_RIGHT
    lambda image: tf.reverse(image, [0, 1]),  # 3: ROTATE_180
    lambda image: tf.reverse(image, [0]),  # 4: FLIP_TOP_BOTTOM
    lambda image: tf.transpose(image, [1, 0, 2]),  # 5: TRANSPOSE
    lambda image: tf.transpose(tf.reverse(image, [0]), [1, 0, 2]),  # 6: ROTATE_270 (a quarter turn clockwise)
    lambda image: tf.transpose(tf.reverse(image, [0, 1]), [1, 0, 2]),  # 7: TRANSVERSE
    lambda image: tf.transpose(tf.reverse(image, [1]), [1, 0, 2]),  # 8: ROTATE_90
)


def orient(image, orientation):
    """Turns a stored image into the picture its EXIF orientation (1..8; others: as stored) describes."""
    branches = [functools.partial(transposition, image) for transposition in _ORIENTED]
    return tf.switch_case(tf.cast(orientation, tf.int32) - 1, branches, default=branches[0])


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image file's header declares."""

    width: int
    height: int
    mode: str
    frames: int = 1
    orientation: int = 1

    @property
    def pixels(self):
        """Pixels TensorFlow decodes: every frame of a GIF."""
        return self.width * self.height * self.frames


def read_header(path):
    """The `ImageHeader` of an image file, read without decoding its pixels.

    Raises:
        UnreadableImage: not a JPEG/PNG/GIF/BMP, or a header that cannot be read.
    """
    from PIL import BmpImagePlugin, GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin

    # TensorFlow's signatures; the format's class, not Image.open, keeps PIL's pixel limit out.
    formats = (
        (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile),
        (_PNG_SIGNATURE, PngImagePlugin.PngImageFile),
        (b"GIF8", GifImagePlugin.GifImageFile),
        (b"BM", BmpImagePlugin.BmpImageFile),
    )
    try:
        file = open(path, "rb")
    except OSError as error:
        raise UnreadableImage(path, f"cannot read: {error.strerror or error}") from None
    with file:
        signature = file.read(8)
        opener = next((opener for start, opener in formats if signature.startswith(start)), None)
        if opener is None:
            raise UnreadableImage(path, "cannot decode: not a JPEG, PNG, GIF or BMP file")
        file.seek(0)
        try:
            image = opener(file)
            frames = image.n_frames if isinstance(image, GifImagePlugin.GifImageFile) else 1
        except Exception as error:  # PIL raises many types for a malformed header
            raise UnreadableImage(path, f"cannot decode: {str(error) or type(error).__name__}") from None
        try:
            # Image.getexif reads what the header held; PngImageFile's own decodes the pixels to look past them.
            orientation = Image.Image.getexif(image).get(0x0112, 1)
        except Exception:  # a malformed EXIF block (PIL warns): the pixels are still good, shown as stored
            orientation = 1
    return ImageHeader(*image.size, image.mode, frames, orientation if orientation in range(1, 9) else 1)


def read_image(path, channels=3, max_pixels=MAX_DECODE_PIXELS):
    """Reads one image file as viewers show it (decoded, EXIF orientation applied).

    Args:
        channels: 1, 3 or 4.
        max_pixels: files whose header declares more (width x height x GIF frames) are refused.

    Raises:
        UnreadableImage: naming the file and why.
    """
    return _read_image(path, channels, max_pixels)[0]


def _read_image(path, channels, max_pixels):
    header = read_header(path)
    if header.pixels > max_pixels:
        frames = f"{header.frames} frames of " if header.frames > 1 else ""
        raise UnreadableImage(
            path,
            f"declares {frames}{header.width}x{header.height} pixels ({header.pixels:,}), "
            f"over the limit of {max_pixels:,} pixels for decoding",
        )
    try:
        return orient(decode_image(tf.io.read_file(str(path)), channels), header.orientation), header
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error)).strip().splitlines()[0]
        message = re.sub(r"\s*\[Op:.*$", "", re.sub(r"\{\{[^}]*\}\}\s*", "", message))
        raise UnreadableImage(path, f"cannot decode: {message}") from None


def resize_for(image, preprocessing):
    """The deterministic resize of `preprocessing` (before the crop)."""
    p = preprocessing
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    if p.mode == "resize_and_crop":
        new_height, new_width = tf.constant(float(p.load_size)), tf.constant(float(p.load_size))
    elif p.mode in ("scale_width", "scale_width_and_crop"):
        new_width = tf.constant(float(p.load_size))
        new_height = tf.maximum(tf.floor(p.load_size * height / width), float(p.crop_size))
    elif p.mode == "none":
        new_height = tf.maximum(tf.round(height / 4.0) * 4.0, 4.0)
        new_width = tf.maximum(tf.round(width / 4.0) * 4.0, 4.0)
    else:  # crop
        new_height, new_width = height, width
    if p.crops:
        scale = tf.maximum(1.0, p.crop_size / tf.minimum(new_height, new_width))
        new_height, new_width = tf.math.ceil(new_height * scale), tf.math.ceil(new_width * scale)
    size = tf.cast(tf.stack([new_height, new_width]), tf.int32)
    if tf.executing_eagerly() and bool(tf.reduce_all(size == shape[:2])):
        return image
    resized = tf.image.resize(image, size, method="bicubic", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def augment(image, preprocessing, seed, training):
    """Crops (random in training, else centred) and flips a `resize_for` image; float32 in [-1, 1].

    Args:
        seed: int32 tensor of shape (2,) for the stateless random ops.
    """
    image = _crop_and_flip(image, preprocessing, preprocessing.channels, seed, training)
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def augment_pair(image_a, image_b, preprocessing_a, preprocessing_b, seed, training):
    """`augment` of a pair of `resize_for` images of one size, both given the same crop and flip."""
    channels = preprocessing_a.channels
    both = tf.concat([image_a, image_b], axis=-1)
    both = _crop_and_flip(both, preprocessing_a, channels + preprocessing_b.channels, seed, training)
    both = tf.cast(both, tf.float32) / 127.5 - 1.0
    return both[..., :channels], both[..., channels:]


def _crop_and_flip(image, preprocessing, channels, seed, training):
    p = preprocessing
    if p.crops:
        crop = [p.crop_size, p.crop_size, channels]
        if training:
            image = tf.image.stateless_random_crop(image, crop, seed=seed)
        else:
            shape = tf.shape(image)
            top, left = (shape[0] - p.crop_size) // 2, (shape[1] - p.crop_size) // 2
            image = tf.ensure_shape(image[top : top + p.crop_size, left : left + p.crop_size], crop)
    if training and p.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed[::-1])
    return image


def to_uint8(images):
    """[-1, 1] floats -> uint8 exactly as translations are written to PNG."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def synthetic_mapping(images, direction="a2b"):
    """The true translation between the synthetic domains, on uint8 or [-1, 1] float `(..., channels)`.

    A -> B rolls the channels by one (R, G, B -> B, R, G), B -> A back; one channel is inverted.
    """
    images = np.asarray(images)
    if images.shape[-1] == 1:
        return 255 - images if images.dtype == np.uint8 else -images
    shift = {"a2b": 1, "b2a": -1}[direction]
    return np.roll(images, shift, axis=-1)


def synthetic_images(domain, count, size=64, channels=3, seed=0):
    """Procedural images: A is 1 to 4 warm shapes on noisy dark blue, B `synthetic_mapping` of other A's.

    Args:
        domain: `"A"` or `"B"`.
        size: int or `(height, width)`.
        channels: 1 (the luminance) or 3.

    Returns:
        uint8 array `(count, height, width, channels)`.
    """
    if domain not in ("A", "B"):
        raise ValueError(f"domain must be 'A' or 'B'. Received: domain={domain!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, 0 if domain == "A" else 1])
    ys, xs = np.mgrid[0:height, 0:width]
    images = np.empty((count, height, width, 3), np.float32)
    for image in images:
        image[:] = rng.uniform([0.0, 0.05, 0.3], [0.1, 0.2, 0.5])
        image += rng.normal(0.0, 0.02, image.shape)
        for _ in range(rng.integers(1, 5)):
            colour = rng.uniform([0.6, 0.2, 0.0], [1.0, 0.7, 0.25])
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
            if rng.random() < 0.5:
                mask = (np.abs(ys - cy) < ry) & (np.abs(xs - cx) < rx)
            else:
                mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1.0
            image[mask] = colour
    images = np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if channels == 1:
        images = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        images = np.clip(images + 0.5, 0, 255).astype(np.uint8)[..., None]
    return synthetic_mapping(images, "a2b") if domain == "B" else images


def list_image_files(folder):
    """Image files under `folder`, recursively, sorted; extensions in any case."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Image folder not found: {folder}")
    paths = sorted(
        str(path) for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )
    if not paths:
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in folder: {folder}")
    return paths


def folder_domain(
    folder,
    preprocessing,
    strict_data=False,
    cache_bytes=DEFAULT_CACHE_BYTES,
    name=None,
    limit=None,
    max_pixels=MAX_TRAINING_PIXELS,
):
    """A domain of the images under `folder` (the first `limit` by name), kept in memory within
    `cache_bytes`, else decoded on the fly. Unreadable files go to `domain.bad` (with
    `strict_data`, one `DataError` lists them)."""
    paths = list_image_files(folder)[:limit]

    def load(path):
        image, header = _read_image(path, preprocessing.channels, max_pixels)
        return [resize_for(image, preprocessing).numpy()], [header.orientation]

    good, orientations, images, bad = _load_all(paths, load, cache_bytes)
    if bad and strict_data:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in bad)
        raise DataError(f"{len(bad)} unreadable image(s) in {folder}:\n{listing}")
    if not good:
        raise DataError(f"None of the {len(paths)} image files in {folder} could be decoded")
    name = name or Path(folder).name
    if images is not None:
        return Domain(name, images=images[0], bad=bad)
    return Domain(name, paths=good, bad=bad, orientations=orientations[0])


def _load_all(items, load, cache_bytes):
    """`load(item)` of each item in threads: `([image per side], [orientation per side])`, or it raises
    `UnreadableImage` naming the file at fault.

    Returns:
        `(good items, orientations by side, images by side or None once past cache_bytes, bad)`,
        `bad` a list of `(path, reason)`.
    """
    good, orientations, images, bad, total_bytes = [], [], [], [], 0

    def attempt(item):
        try:
            return load(item)
        except UnreadableImage as error:
            return error

    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for item, result in zip(items, pool.map(attempt, items)):
            if isinstance(result, UnreadableImage):
                bad.append((result.path, result.reason))
                continue
            arrays, item_orientations = result
            good.append(item)
            orientations.append(item_orientations)
            total_bytes += sum(array.nbytes for array in arrays)
            if images is not None and total_bytes <= cache_bytes:  # the total only grows: once past, always past
                images.append(arrays)
            else:
                images = None
    by_side = lambda rows: [list(side) for side in zip(*rows)] if rows else None  # noqa: E731
    return good, by_side(orientations), None if images is None else by_side(images), bad


def split_pair(image):
    """The left and right halves of an A|B image `(height, width, channels)` (an even width)."""
    middle = tf.shape(image)[1] // 2
    return image[:, :middle], image[:, middle:]


def aligned_domains(
    folder,
    preprocessing,
    preprocessing_b=None,
    cache_bytes=DEFAULT_CACHE_BYTES,
    limit=None,
    max_pixels=MAX_TRAINING_PIXELS,
):
    """Domains A (left halves) and B (right halves) of the A|B files under `folder`, the pix2pix layout
    (the reference's `AlignedDataset`, `datasets/combine_A_and_B.py`'s output), split at the middle.

    Files that cannot be decoded or whose width is odd go to domain A's `bad`.
    """
    pre_a, pre_b = preprocessing, preprocessing_b or preprocessing
    paths = list_image_files(folder)[:limit]

    def load(path):
        # Each half in its own channels (gray A, colour B) as the domains' folders would be decoded.
        decoded = {c: _read_image(path, c, max_pixels) for c in dict.fromkeys((pre_a.channels, pre_b.channels))}
        image, header = decoded[pre_a.channels]
        if image.shape[1] % 2:
            raise UnreadableImage(
                path, f"width {image.shape[1]} is odd: an A|B file splits at the middle into two halves of one size"
            )
        left, right = split_pair(image)[0], split_pair(decoded[pre_b.channels][0])[1]
        return [resize_for(left, pre_a).numpy(), resize_for(right, pre_b).numpy()], [header.orientation] * 2

    good, orientations, images, bad = _load_all(paths, load, cache_bytes)
    names = (f"{Path(folder).name}/A", f"{Path(folder).name}/B")
    return _pair_domains(good, good, orientations, images, (bad, []), names, halves=("left", "right"))


def _pair_domains(paths_a, paths_b, orientations, images, bad, names, halves=(None, None)):
    """Domains A and B of loaded pairs (`_load_all`'s results); DataError if no pair is left."""
    if not paths_a:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in bad[0] + bad[1])
        raise DataError(f"No pair of images in {names[0]} and {names[1]} can be used:\n{listing}")
    if images is not None:
        return tuple(Domain(name, images=images[side], bad=bad[side], paired=True) for side, name in enumerate(names))
    return tuple(
        Domain(name, paths=paths, bad=bad[side], orientations=orientations[side], half=halves[side], paired=True)
        for side, (name, paths) in enumerate(zip(names, (paths_a, paths_b)))
    )


def _pair_key(path, folder, side):
    """What pairs two files: the path under `folder` without the extension or an `_A`/`_B` of `side` (the
    CycleGAN zips of pix2pix's datasets hold trainA/1_A.jpg and trainB/1_B.jpg)."""
    relative = Path(path).relative_to(folder).with_suffix("")
    return str(relative)[: -len(f"_{side}")] if str(relative).endswith(f"_{side}") else str(relative)


def paired_folder_domains(
    folder_a,
    folder_b,
    preprocessing,
    preprocessing_b=None,
    cache_bytes=DEFAULT_CACHE_BYTES,
    names=None,
    limit=None,
    max_pixels=MAX_TRAINING_PIXELS,
):
    """Domains A and B of the images in two folders, paired by file name (`_pair_key`).

    A file without a partner, one that cannot be decoded (its partner is left out with it), two files
    of one name in a folder, and a pair of two sizes go to its domain's `bad`.
    """
    pre_a, pre_b = preprocessing, preprocessing_b or preprocessing
    folder_a, folder_b = Path(folder_a), Path(folder_b)
    keyed, bad = [], ([], [])
    for side, folder in enumerate((folder_a, folder_b)):
        paths = {}
        for path in list_image_files(folder):
            key = _pair_key(path, folder, "AB"[side])
            if key in paths:
                bad[side].append((path, f"has the name of {paths[key]}, so which of them is the pair is unclear"))
            else:
                paths[key] = path
        keyed.append(paths)
    for side, (own, other) in enumerate(((keyed[0], keyed[1]), (keyed[1], keyed[0]))):
        folder = (folder_b, folder_a)[side]
        bad[side].extend(
            (path, f"no file named like it in {folder} to pair it with (pairs are matched by name)")
            for key, path in own.items()
            if key not in other
        )
    pairs = [(keyed[0][key], keyed[1][key]) for key in sorted(keyed[0]) if key in keyed[1]][:limit]

    def load(pair):
        (path_a, path_b), loaded = pair, []
        for path, pre, partner in ((path_a, pre_a, path_b), (path_b, pre_b, path_a)):
            try:
                loaded.append(_read_image(path, pre.channels, max_pixels))
            except UnreadableImage as error:
                raise UnreadableImage(path, f"{error.reason} (its pair {partner} is left out too)") from None
        (image_a, header_a), (image_b, header_b) = loaded
        if image_a.shape[:2] != image_b.shape[:2]:
            size = lambda image: f"{image.shape[1]}x{image.shape[0]}"  # noqa: E731
            raise UnreadableImage(
                path_a, f"is {size(image_a)} but its pair {path_b} is {size(image_b)}: a pair needs one size"
            )
        images = [resize_for(image_a, pre_a).numpy(), resize_for(image_b, pre_b).numpy()]
        return images, [header_a.orientation, header_b.orientation]

    good, orientations, images, failed = _load_all(pairs, load, cache_bytes)
    for path, reason in failed:
        bad[0 if Path(path).is_relative_to(folder_a) else 1].append((path, reason))
    names = names or (folder_a.name, folder_b.name)
    return _pair_domains([a for a, _ in good], [b for _, b in good], orientations, images, bad, names)


def reference_folder_domains(
    root,
    phase="train",
    preprocessing=None,
    strict_data=False,
    cache_bytes=DEFAULT_CACHE_BYTES,
    preprocessing_b=None,
    limit=None,
):
    """Domains A and B from ROOT/{phase}A and ROOT/{phase}B; `limit` caps each domain."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset folder not found: {root}")
    missing = [str(root / f"{phase}{d}") for d in "AB" if not (root / f"{phase}{d}").is_dir()]
    if missing:
        raise DataError(
            f"Dataset folder {root} does not have the layout {phase}A/, {phase}B/ "
            f"(as every CycleGAN dataset zip unpacks). Missing: {', '.join(missing)}"
        )
    pre_a = preprocessing or Preprocessing()
    pre_b = preprocessing_b or pre_a
    return tuple(
        folder_domain(root / f"{phase}{d}", pre, strict_data, cache_bytes, name=f"{phase}{d}", limit=limit)
        for d, pre in (("A", pre_a), ("B", pre_b))
    )


def array_domain(images, preprocessing, name):
    """A domain from uint8 arrays `(height, width, channels)` already in memory."""
    resized = []
    for image in images:
        image = tf.convert_to_tensor(image, tf.uint8)
        if image.shape[-1] != preprocessing.channels:
            image = (
                tf.image.rgb_to_grayscale(image) if preprocessing.channels == 1 else tf.image.grayscale_to_rgb(image)
            )
        resized.append(resize_for(image, preprocessing).numpy())
    if not resized:
        raise DataError(f"Domain {name} has no images")
    return Domain(name, images=resized)


def synthetic_domains(
    count=256, size=64, phase="train", preprocessing=None, seed=0, preprocessing_b=None, paired=False
):
    """Domains A and B of the synthetic dataset; train and test phases draw different images.

    Args:
        paired: B[i] is `synthetic_mapping(A[i])` (pix2pix's pairs), not the mapping of other A images.
    """
    pre_a = preprocessing or Preprocessing(load_size=size, crop_size=size)
    pre_b = preprocessing_b or pre_a
    offset = 0 if phase == "train" else 1000
    domains = []
    for i, (d, pre) in enumerate((("A", pre_a), ("B", pre_b))):
        channels = 1 if pre.channels == 1 else 3
        if paired:  # B from A's scenes: synthetic_images draws the same scenes whatever the channels
            images = synthetic_images("A", count, size, channels, seed=seed + offset)
            images = synthetic_mapping(images, "a2b") if d == "B" else images
        else:
            images = synthetic_images(d, count, size, channels, seed=seed + offset + i)
        domains.append(dataclasses.replace(array_domain(images, pre, f"{phase}{d}"), paired=paired))
    return tuple(domains)


def tfds_domains(config, phase="train", preprocessing=None, data_dir=None, download=False, preprocessing_b=None):
    """Domains A and B from tensorflow-datasets' `cycle_gan/{config}` (one of `TFDS_CONFIGS`).

    Args:
        data_dir: tfds data folder (None: `~/tensorflow_datasets`).
        download: download and prepare the dataset if needed (needs the internet).

    Raises:
        DataError: the dataset is not prepared (rather than tfds retrying its download).
    """
    if config not in TFDS_CONFIGS:
        raise DataError(f"Unknown dataset {config!r}. tfds cycle_gan configs: {', '.join(TFDS_CONFIGS)}")
    import tensorflow_datasets as tfds

    pre_a = preprocessing or Preprocessing()
    pre_b = preprocessing_b or pre_a
    builder = tfds.builder(f"cycle_gan/{config}", data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    domains = []
    for d, pre in (("A", pre_a), ("B", pre_b)):
        try:
            dataset = builder.as_dataset(split=f"{phase}{d}")
        except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as error:
            raise DataError(
                f"Dataset cycle_gan/{config} is not prepared in {builder.data_dir}. It needs a "
                "download: run with download=True (train.py --download) on a machine with "
                "internet, or unpack the authors' zip and pass its folder (train.py --dataroot). "
                f"tfds said: {str(error).splitlines()[0]}"
            ) from None
        images = [example["image"] for example in dataset.as_numpy_iterator()]
        domains.append(array_domain(images, pre, f"{phase}{d}"))
    return tuple(domains)


def steps_per_epoch(domain_a, domain_b, batch_size):
    """Batches in one epoch of `max(|A|, |B|)` pairs (the last partial batch dropped)."""
    return max(len(domain_a), len(domain_b)) // batch_size


def _lookup(domain, preprocessing):
    if domain.images is not None:
        flat = np.concatenate([image.reshape(-1) for image in domain.images])
        sizes = [image.size for image in domain.images]
        offsets = tf.constant(np.concatenate([[0], np.cumsum(sizes)]), tf.int64)
        shapes = tf.constant(np.array([image.shape for image in domain.images]), tf.int64)
        flat = tf.constant(flat)
        return lambda i: tf.reshape(flat[offsets[i] : offsets[i + 1]], shapes[i])
    paths = tf.constant(domain.paths)
    orientations = tf.constant(domain.orientations or [1] * len(domain.paths), tf.int32)

    def read(i):
        image = orient(decode_image(tf.io.read_file(paths[i]), preprocessing.channels), orientations[i])
        if domain.half is not None:
            image = split_pair(image)[0 if domain.half == "left" else 1]
        return image

    return lambda i: resize_for(read(i), preprocessing)


def unpaired_dataset(domain_a, domain_b, preprocessing, **options):
    """`image_batches` of unpaired domains, as the reference's `UnalignedDataset` draws them (CycleGAN)."""
    return image_batches(domain_a, domain_b, preprocessing, paired=False, **options)


def paired_dataset(domain_a, domain_b, preprocessing, **options):
    """`image_batches` of pairs `(A[i], B[i])`, as the reference's `AlignedDataset` gives them to pix2pix.

    Raises:
        DataError: the domains differ in length.
    """
    if len(domain_a) != len(domain_b):
        raise DataError(f"Paired domains need one image each per pair. Received {len(domain_a)} and {len(domain_b)}")
    return image_batches(domain_a, domain_b, preprocessing, paired=True, **options)


def image_batches(
    domain_a,
    domain_b,
    preprocessing,
    paired=False,
    batch_size=1,
    seed=0,
    training=True,
    start_epoch=0,
    epochs=None,
    steps_per_epoch=None,
    preprocessing_b=None,
    shard=None,
    serial=False,
):
    """Batches of `(real_a, real_b)`.

    Unpaired, an epoch is `max(|A|, |B|)` pairs: A by a fresh permutation modulo `|A|`, B drawn
    uniformly. Paired, an epoch is every pair once, in a fresh permutation, both images of a pair
    cropped and flipped alike. With `training=False`: `(A[i mod |A|], B[i mod |B|])` in order,
    centred crops, no flip, one epoch, the last partial batch kept.

    Args:
        paired: the i-th images of A and B are a pair (of one size), kept together.
        start_epoch: the first epoch to produce (to resume).
        epochs: None: endless (in training).
        steps_per_epoch: cap each epoch at this many batches.
        preprocessing_b: for B when it differs from A's (None: `preprocessing`).
        shard: `(count, index)`: only positions `index, index + count, ...` of each epoch.
        serial: the reference's `--serial_batches`: pairs in order in training too.

    Returns:
        A `tf.data.Dataset`; in training its batch dimension is static.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    preprocessing_b = preprocessing_b or preprocessing
    if batch_size > 1 and not preprocessing.crops:
        shapes = {image.shape for d in (domain_a, domain_b) for image in (d.images or [])}
        if domain_a.paths is not None or domain_b.paths is not None or len(shapes) > 1:
            raise DataError(
                f"preprocess {preprocessing.mode!r} keeps each image's own size, so images "
                f"cannot be batched: use batch_size=1 or a mode that crops. Received: batch_size={batch_size}"
            )
    n_a, n_b = len(domain_a), len(domain_b)
    n = max(n_a, n_b)
    if training and n < batch_size:
        raise DataError(f"An epoch has {n} pairs, fewer than batch_size={batch_size}")
    lookup_a, lookup_b = _lookup(domain_a, preprocessing), _lookup(domain_b, preprocessing_b)

    def epoch_pairs(epoch):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        positions = tf.range(n, dtype=tf.int64)
        if training and not serial:
            order = tf.random.experimental.stateless_shuffle(positions, seed=epoch_seed)
            index_a = order % n_a
            index_b = (
                index_a
                if paired
                else tf.random.stateless_uniform([n], seed=epoch_seed + [0, 7919], maxval=n_b, dtype=tf.int64)
            )
        else:
            index_a, index_b = positions % n_a, positions % n_b
        pairs = tf.data.Dataset.from_tensor_slices((tf.fill([n], epoch), positions, index_a, index_b))
        if shard is not None:
            pairs = pairs.shard(*shard)
        batches = pairs.map(load_pair, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=training)
        return batches.take(steps_per_epoch) if steps_per_epoch else batches

    def load_pair(epoch, position, index_a, index_b):
        pair_seed = tf.cast(tf.stack([epoch * (2 * n) + 2 * position, seed]), tf.int32)
        if paired:
            images = lookup_a(index_a), lookup_b(index_b)
            return augment_pair(*images, preprocessing, preprocessing_b, pair_seed, training)
        real_a = augment(lookup_a(index_a), preprocessing, pair_seed, training)
        real_b = augment(lookup_b(index_b), preprocessing_b, pair_seed + [1, 0], training)
        return real_a, real_b

    if training:
        last = None if epochs is None else start_epoch + epochs
        epoch_numbers = tf.data.Dataset.range(start_epoch, last) if last else tf.data.Dataset.counter(start_epoch)
    else:
        epoch_numbers = tf.data.Dataset.range(start_epoch, start_epoch + 1)
    return epoch_numbers.flat_map(epoch_pairs).prefetch(tf.data.AUTOTUNE)


def _test_images(domain, preprocessing):
    lookup, seed = _lookup(domain, preprocessing), tf.zeros([2], tf.int32)
    return (augment(lookup(i), preprocessing, seed, False).numpy() for i in range(len(domain)))


def domain_images(domain, preprocessing, count=None):
    """The first `count` images of a domain, test-time preprocessed, as one array."""
    return np.stack(list(itertools.islice(_test_images(domain, preprocessing), count)))


def domain_batches(domain, preprocessing, batch_size=16):
    """The images of `domain`, test-time preprocessed, as float32 batches in order, one size each."""
    batch = []
    for image in _test_images(domain, preprocessing):
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield np.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield np.stack(batch)


def report_bad_files(domains):
    """A summary of the files left out, one line each, or '' when none were."""
    bad = [(domain.name, path, reason) for domain in domains for path, reason in domain.bad]
    if not bad:
        return ""
    paired = any(domain.paired for domain in domains)
    what = "image file(s), unreadable or without a pair" if paired else "unreadable image file(s)"
    lines = [f"Skipped {len(bad)} {what}:"]
    lines += [f"  [{name}] {path}: {reason}" for name, path, reason in bad]
    return "\n".join(lines)
