"""Translation scores: FID, KID, PSNR/SSIM/MAE, label scores, and the inputs' identity baseline.

Each is computed as its reference tool does (pytorch-fid and clean-fid for FID/KID, `tf.image.ssim`,
the authors' `scripts/eval_cityscapes` for label scores), so numbers compare with papers'. FID's
features come from `cyclegan_keras.fid_inception`. Images are streamed; only features are kept.
"""

import dataclasses
import math
import os
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import data
from cyclegan_keras.data import to_uint8  # noqa: F401  (metrics.to_uint8, as users and tests call it)
from cyclegan_keras.translation import output_names

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
SSIM_SETTINGS = {"max_val": 255.0, "filter_size": 11, "filter_sigma": 1.5, "k1": 0.01, "k2": 0.03}
# Cityscapes' 19 evaluation classes (cityscapesScripts labels.py, trainId order); CITYSCAPES_IGNORE
# is the truth's unlabelled colour, ignored as trainId 255 is.
CITYSCAPES_PALETTE = (
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
)
CITYSCAPES_IGNORE = ((0, 0, 0),)
IGNORE_NAMES = ("void", "ignore", "unlabeled", "unlabelled")
# A truth image with more than this share of pixels this far from every palette colour is refused
# (JPEG noise stays well within it).
PALETTE_DISTANCE = 40.0
PALETTE_MISMATCH_SHARE = 0.2


class MetricError(ValueError):
    """The inputs cannot give the asked score; the message says which and why."""


def feature_statistics(features):
    """Mean and covariance (float64, `np.cov` with n - 1) of `(n, d)` features."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """The FID of two Gaussians; `tr sqrt(S1 S2)` from symmetric eigensolvers, avoiding scipy sqrtm's round-off."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise MetricError(f"Feature sizes differ: {mu1.shape} and {mu2.shape}")
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    product = root1 @ sigma2 @ root1
    trace_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2.0), 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid(features_fake, features_real):
    """FID between two `(n, d)` feature sets (each n >= 2); equals scipy's sqrtm value within 2e-6 relative.

    With fewer images than dimensions the square-root trace is the nuclear norm of the centred
    features' cross product over `sqrt((n1 - 1)(n2 - 1))`: an (n2 x n1) SVD, not 2048-d eigensolves.
    """
    for name, features in (("generated", features_fake), ("real", features_real)):
        if len(features) < 2:
            raise MetricError(f"FID needs at least 2 images per set; the {name} set has {len(features)}")
    fake = np.asarray(features_fake, np.float64)
    real = np.asarray(features_real, np.float64)
    if min(len(fake), len(real)) >= fake.shape[1]:
        return frechet_distance(*feature_statistics(fake), *feature_statistics(real))
    centred_fake, centred_real = fake - fake.mean(0), real - real.mean(0)
    singular = np.linalg.svd(centred_real @ centred_fake.T, compute_uv=False)
    trace_sqrt = singular.sum() / np.sqrt((len(fake) - 1) * (len(real) - 1))
    traces = (centred_fake**2).sum() / (len(fake) - 1) + (centred_real**2).sum() / (len(real) - 1)
    diff = fake.mean(0) - real.mean(0)
    return float(diff @ diff + traces - 2.0 * trace_sqrt)


def kid(features_fake, features_real, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=0):
    """KID as clean-fid's `kernel_distance` (unbiased MMD^2, kernel `(x.y / d + 1)^3`): `(mean, std)` over subsets."""
    if num_subsets < 1 or subset_size < 2:
        raise MetricError(f"KID needs num_subsets >= 1 and subset_size >= 2. Received: {num_subsets}, {subset_size}")
    fake = np.asarray(features_fake, np.float64)
    real = np.asarray(features_real, np.float64)
    m = min(len(fake), len(real), subset_size)
    if m < 2:
        raise MetricError(f"KID needs at least 2 images per set; got {len(fake)} generated and {len(real)} real")
    d = fake.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        values.append(((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m)
    return float(np.mean(values)), float(np.std(values))


def psnr(image, truth):
    """Peak signal-to-noise ratio in dB of two uint8 images (peak 255); inf when equal."""
    mse = np.mean((np.asarray(image, np.float64) - np.asarray(truth, np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(image, truth):
    """SSIM of two uint8 images `(h, w, c)`: `tf.image.ssim` with `SSIM_SETTINGS` (sides >= 11)."""
    image, truth = np.asarray(image), np.asarray(truth)
    if min(image.shape[:2]) < SSIM_SETTINGS["filter_size"]:
        raise MetricError(f"SSIM needs images of at least 11x11 pixels. Received: {image.shape[:2]}")
    return float(tf.image.ssim(tf.constant(image, tf.float32), tf.constant(truth, tf.float32), **SSIM_SETTINGS))


def mae(image, truth):
    """Mean absolute difference of two uint8 images, in 0..255 units."""
    return float(np.mean(np.abs(np.asarray(image, np.float64) - np.asarray(truth, np.float64))))


@dataclasses.dataclass(frozen=True)
class Palette:
    """Class colours for label maps, and colours the truth uses for "no label".

    Args:
        colours: `(k, 3)` tuple of RGB colours in 0..255, one per name.
        ignore: RGB colours; truth pixels nearest to one of them are left out of the scores.
        source: where it came from ("cityscapes" or a file path).
    """

    names: tuple
    colours: tuple
    ignore: tuple = ()
    source: str = ""

    def __post_init__(self):
        if len(self.names) != len(self.colours) or len(self.colours) < 2:
            raise MetricError(f"{self.source}: a palette needs at least 2 classes, one colour each")
        every = [tuple(c) for c in (*self.colours, *self.ignore)]
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in every):
            raise MetricError(f"{self.source}: palette colours must be R G B values in 0..255")
        if len(set(every)) != len(every):
            raise MetricError(f"{self.source}: a colour appears twice in the palette")

    @classmethod
    def cityscapes(cls):
        names, colours = zip(*CITYSCAPES_PALETTE)
        return cls(names, colours, CITYSCAPES_IGNORE, "cityscapes")

    @classmethod
    def from_file(cls, path):
        """A text file, one `R G B name` or `#rrggbb name` a line, `#` comments; `IGNORE_NAMES` mark "no label"."""
        path = Path(path)
        if not path.is_file():
            raise MetricError(f"--labels: palette file not found: {path}")
        names, colours, ignore = [], [], []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or (line.startswith("#") and not _is_hex_colour(line.split()[0])):
                continue
            try:
                if _is_hex_colour(line.split()[0]):
                    colour = tuple(int(line[1 + 2 * i : 3 + 2 * i], 16) for i in range(3))
                    name = " ".join(line.split()[1:])
                else:
                    parts = line.split()
                    colour, name = tuple(int(v) for v in parts[:3]), " ".join(parts[3:])
            except ValueError:
                raise MetricError(f"{path}:{number}: expected 'R G B name' or '#rrggbb name', got {line!r}") from None
            if len(colour) != 3:
                raise MetricError(f"{path}:{number}: expected 'R G B name' or '#rrggbb name', got {line!r}")
            if name.lower() in IGNORE_NAMES:
                ignore.append(colour)
            else:
                names.append(name or f"class {len(names)}")
                colours.append(colour)
        return cls(tuple(names), tuple(colours), tuple(ignore), str(path))


def _is_hex_colour(token):
    return len(token) == 7 and token.startswith("#") and all(c in "0123456789abcdefABCDEF" for c in token[1:])


def nearest_class(image, colours):
    """Per pixel, the index of the nearest colour (Euclidean RGB), and its distance."""
    pixels = np.asarray(image, np.float32).reshape(-1, 3)
    palette = np.asarray(colours, np.float32)
    distances = ((pixels[:, None, :] - palette[None, :, :]) ** 2).sum(-1)
    index = distances.argmin(axis=1)
    return index.reshape(image.shape[:2]), np.sqrt(distances[np.arange(len(index)), index]).reshape(image.shape[:2])


class LabelScores:
    """The confusion matrix of colour label maps (each pixel takes its nearest colour), and its scores."""

    def __init__(self, palette):
        self.palette = palette
        self.hist = np.zeros((len(palette.colours),) * 2, np.int64)

    def update(self, output, truth, truth_name="truth"):
        n = len(self.palette.colours)
        predicted, _ = nearest_class(output, self.palette.colours)
        labels, distance = nearest_class(truth, (*self.palette.colours, *self.palette.ignore))
        share = float(np.mean(distance > PALETTE_DISTANCE))
        if share > PALETTE_MISMATCH_SHARE:
            raise MetricError(
                f"--labels {self.palette.source}: {share:.0%} of the pixels of {truth_name} are farther than "
                f"{PALETTE_DISTANCE:g} from every palette colour: this truth does not use this palette"
            )
        keep = labels < n  # the reference's fast_hist drops truth labels outside [0, n)
        self.hist += np.bincount(n * labels[keep] + predicted[keep], minlength=n * n).reshape(n, n)

    def result(self):
        hist = self.hist.astype(np.float64)
        diag = np.diag(hist)
        class_acc = diag / (hist.sum(1) + 1e-12)
        iou = diag / (hist.sum(1) + hist.sum(0) - diag + 1e-12)
        return {
            "pixel_accuracy": float(diag.sum() / (hist.sum() + 1e-12)),
            "class_accuracy": float(np.nanmean(class_acc)),
            "class_iou": float(np.nanmean(iou)),
            "per_class_iou": {name: float(v) for name, v in zip(self.palette.names, iou)},
        }


_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def colour_channels(path):
    """1 for a grayscale file, 3 for colour (alpha aside), from the header."""
    try:
        return 1 if data.read_header(path).mode in _GRAY_MODES else 3
    except data.UnreadableImage:
        return 3  # decoding reports it with its reason


def set_channels(paths):
    """1 when every image of the set is grayscale, else 3."""
    return 1 if all(colour_channels(p) == 1 for p in paths) else 3


def check_channels(what, channels, other_what, other_channels):
    """Refuses scoring grayscale against colour (alpha aside)."""
    channels, other_channels = min(channels, 3), min(other_channels, 3)
    if channels != other_channels:
        kinds = {1: "grayscale (1 channel)", 3: "colour (3 channels)"}
        raise MetricError(
            f"{what} are {kinds[channels]} but {other_what} are {kinds[other_channels]}: the scores would "
            "measure the colour, not the translation"
        )


def read_uint8(path, channels=3):
    """uint8 `(h, w, channels)`; gray is replicated to RGB and alpha dropped, as PIL's convert."""
    return data.read_image(path, channels).numpy()


def to_rgb(images):
    """uint8 batch of 1, 3 or 4 channels -> RGB for the Inception: gray replicated, alpha dropped."""
    images = np.asarray(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images[..., :3]


def named(paths, root):
    """`{name: path}`, each name as translate.py names the output of `path` (see `translation.output_names`)."""
    return dict(zip(output_names(paths, root), paths))


def truth_for(name, truth_names):
    """The truth path for an output `name`; also tries without the reference's `_fake_B` style suffix."""
    if name in truth_names:
        return truth_names[name]
    for suffix in ("_fake_B", "_fake_A", "_fake"):
        if name.endswith(suffix) and name[: -len(suffix)] in truth_names:
            return truth_names[name[: -len(suffix)]]
    return None


def batches(paths, batch_size, channels=3, read=None):
    """Yields `(paths, uint8 batch)` in order; a batch holds images of one size.

    Args:
        read: path -> a tuple of uint8 images (then a tuple of batches is yielded), instead of reading
            each file in `channels`.
    """
    parts = read or (lambda path: (read_uint8(path, channels),))
    chunk, items = [], []
    for path in paths:
        item = parts(path)
        if items and (len(items) == batch_size or item[0].shape != items[0][0].shape):
            yield chunk, _stacked(items, read)
            chunk, items = [], []
        chunk.append(path)
        items.append(item)
    if items:
        yield chunk, _stacked(items, read)


def _stacked(items, read):
    stacked = tuple(np.stack(part) for part in zip(*items))
    return stacked if read else stacked[0]


def _progress_bar(total, unit):
    """A Keras progress bar; one line when it ends if stdout is not a terminal (no escapes in logs)."""
    return keras.utils.Progbar(total, verbose=1 if sys.stdout.isatty() else 2, unit_name=unit)


def extract_features(paths, features_fn, batch_size=50, verbose=True, label="images"):
    """`(n, d)` float32 features of image files read as RGB, by `features_fn` (uint8 batch -> `(b, d)`)."""
    progress = _progress_bar(len(paths), label) if verbose else None
    features = []
    for chunk, images in batches(paths, batch_size):
        features.append(np.asarray(features_fn(images), np.float32))
        if progress:
            progress.add(len(chunk))
    return np.concatenate(features) if features else np.zeros((0, 0), np.float32)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How to score; the defaults are pytorch-fid's batch and clean-fid's KID subsets (seeded by `seed`)."""

    batch_size: int = 50
    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int = KID_SUBSET_SIZE
    seed: int = 0
    verbose: bool = True

    def __post_init__(self):
        for name in ("batch_size", "kid_subsets"):
            if getattr(self, name) < 1:
                raise MetricError(f"--{name.replace('_', '-')} must be at least 1. Received: {getattr(self, name)}")
        if self.kid_subset_size < 2:
            raise MetricError(f"--kid-subset-size must be at least 2. Received: {self.kid_subset_size}")


class Scores:
    """The scores of one set of uint8 outputs, fed batch by batch: FID/KID, paired and label scores.

    Args:
        features: callable, uint8 RGB batch -> `(b, d)`; None (or no `real_features`) skips FID/KID.
        real_features: `(n, d)` features of the real target images, by the same `features`.
        palette: `Palette` for label scores, or None.
        small_ssim: outputs under 11x11 pixels `"skip"` SSIM or are refused (`"refuse"`).
    """

    def __init__(self, features=None, real_features=None, settings=None, palette=None, small_ssim="skip"):
        self.features = features if real_features is not None else None
        self.real_features = real_features
        self.settings = settings or EvalSettings()
        self.labels = LabelScores(palette) if palette else None
        self.small_ssim = small_ssim
        self.count, self.small, self.fake = 0, False, []
        self.paired = {"psnr": [], "ssim": [], "mae": []}

    def update(self, outputs, truth=None, truth_names=None):
        """Adds uint8 `outputs` `(b, h, w, c)`, and their uint8 `truth` of the same shape or None."""
        outputs = np.asarray(outputs)
        self.count += len(outputs)
        if self.features is not None:
            self.fake.append(np.asarray(self.features(to_rgb(outputs)), np.float32))
        if truth is None:
            return
        truth = np.asarray(truth)
        if truth.shape != outputs.shape:
            raise MetricError(f"Truth of shape {truth.shape} for outputs of shape {outputs.shape}")
        if min(outputs.shape[1:3]) < SSIM_SETTINGS["filter_size"]:
            if self.small_ssim == "refuse":
                ssim(outputs[0], truth[0])  # raises, saying why
            self.small = True
        for image, true, name in zip(outputs, truth, truth_names or ["truth"] * len(outputs)):
            self.paired["psnr"].append(psnr(image, true))
            self.paired["mae"].append(mae(image, true))
            if not self.small:
                self.paired["ssim"].append(ssim(image, true))
            if self.labels is not None:
                self.labels.update(image, true, name)

    def result(self):
        """dict: `fid`, `kid_mean`, `kid_std`; `psnr`, `ssim` (sides >= 11), `mae` with truth; label scores."""
        result = {}
        if self.features is not None:
            fake = np.concatenate(self.fake)
            result["fid"] = fid(fake, self.real_features)
            result["kid_mean"], result["kid_std"] = kid(
                fake, self.real_features, self.settings.kid_subsets, self.settings.kid_subset_size, self.settings.seed
            )
        if self.paired["psnr"]:
            result.update({k: float(np.mean(v)) for k, v in self.paired.items() if not (k == "ssim" and self.small)})
        if self.labels is not None:
            result.update(self.labels.result())
        return result


def score_batches(batches, features=None, real_features=None, settings=EvalSettings()):
    """`images` and `Scores.result()` of `(outputs, truth or None)` uint8 batches held in memory.

    For callers that score several models against the same real features: training, export.
    """
    scores = Scores(features, real_features, settings)
    for outputs, truth in batches:
        scores.update(outputs, truth)
    if scores.count == 0:
        raise MetricError("No outputs to score")
    return {"images": scores.count, **scores.result()}


def evaluate(
    outputs,
    real_paths=None,
    truth_paths=None,
    truth_root=None,
    features=None,
    palette=None,
    settings=EvalSettings(),
    output_channels=3,
    count=None,
):
    """Scores a stream of outputs (and the inputs beside them): the core of `evaluate_generator`/`_folders`.

    Args:
        outputs: iterable of `(names, {"model": uint8 batch, "identity": uint8 batch or absent, "truth": uint8
            batch or absent})`; without "truth", each output's is found in `truth_paths` by name.
        count: number of outputs, for the progress bar.

    Returns:
        dict: the model's scores, `identity` with the same keys for the inputs when given, `settings`.
    """
    real_features = None
    if features is not None and real_paths is not None:
        check_channels("the outputs", output_channels, "the --real images", set_channels(real_paths))
        if len(real_paths) < 2:
            raise MetricError(f"FID needs at least 2 real images; --real has {len(real_paths)}")
        real_features = extract_features(real_paths, features, settings.batch_size, settings.verbose, "real")
    truth_names = named(truth_paths, truth_root or _common_root(truth_paths)) if truth_paths else None
    if truth_names is not None:
        check_channels("the outputs", output_channels, "the --truth images", set_channels(truth_paths))
    if palette is not None and output_channels == 1:
        raise MetricError("--labels needs colour label maps; the outputs have 1 channel")
    rows = {}
    progress = _progress_bar(count, "output") if settings.verbose and count else None
    images, resized = 0, 0
    for names, groups in outputs:
        paths, truth = None, groups.pop("truth", None)  # a stream of pairs brings its own truth
        if truth is not None:
            paths = names
        elif truth_names is not None:
            found = [_truth_image(name, truth_names, image.shape) for name, image in zip(names, groups["model"])]
            paths, truth, was_resized = zip(*found)
            truth, resized = np.stack(truth), resized + sum(was_resized)
        for key, batch in groups.items():
            scores = rows.setdefault(key, Scores(features, real_features, settings, palette, small_ssim="refuse"))
            scores.update(batch, truth, paths)
        images += len(names)
        if progress:
            progress.add(len(names))
    if images == 0:
        raise MetricError("No outputs to score")
    if real_features is not None and images < 2:
        raise MetricError(f"FID needs at least 2 generated images; there is {images}")
    skipped = {"fid": None, "kid_mean": None, "kid_std": None} if real_paths is not None and features is None else {}
    result = {**skipped, **rows["model"].result()}
    if "identity" in rows:
        result["identity"] = {**skipped, **rows["identity"].result()}
    result["settings"] = {
        "images": images,
        "real_images": len(real_paths) if real_paths is not None else 0,
        "truth_images": len(truth_paths) if truth_paths else 0,
        "truth_resized_to_output": resized,
        "kid_subsets": settings.kid_subsets,
        "kid_subset_size": min(settings.kid_subset_size, images, len(real_paths or [])),
        "kid_seed": settings.seed,
        "ssim": dict(SSIM_SETTINGS, data_range="0..255"),
        "mae_units": "0..255",
        "psnr": "per image on 0..255, averaged",
    }
    if features is not None and hasattr(features, "settings"):
        result["settings"].update(features.settings())
    if palette is not None:
        result["settings"]["palette"] = palette.source
        result["settings"]["classes"] = list(palette.names)
    return result


def _truth_image(name, truth_names, shape):
    """`(path, uint8 truth, resized)` of output `name`, the truth brought to the output's `shape`."""
    path = truth_for(name, truth_names)
    if path is None:
        raise MetricError(f"No --truth image is named like the output {name!r} (files are matched by name)")
    truth = read_uint8(path, shape[-1])
    if truth.shape == shape:
        return path, truth, False
    # Outputs of the reference's test.py are 256x256 whatever the truth's size.
    truth = tf.image.resize(truth, shape[:2], method="bicubic", antialias=True)
    return path, np.clip(np.round(truth.numpy()), 0, 255).astype(np.uint8), True


def evaluate_generator(
    translate_fn,
    input_paths,
    real_paths=None,
    truth_paths=None,
    features=None,
    palette=None,
    settings=EvalSettings(),
    input_channels=3,
    output_channels=None,
    input_root=None,
    truth_root=None,
):
    """Translates `input_paths` and scores the translations, rounded to uint8 as `translate.py` writes them.

    Args:
        translate_fn: float32 `(b, h, w, input_channels)` in [-1, 1] -> same, e.g. `translation.load_translator`.
        real_paths: target-domain files for FID/KID, or None.
        truth_paths: ground-truth files (matched by name), or None.
        features: `fid_inception.InceptionFeatures` or any uint8 RGB batch -> features callable; None skips FID/KID.
        palette: `Palette` for label scores, or None.
        output_channels: None: `input_channels`.
        input_root, truth_root: folders the names are relative to; None: the files' common parent.

    Returns:
        dict: the model's scores (`fid`, `kid_mean`, `psnr`, ...), `identity` for the inputs, `settings`.
    """
    output_channels = output_channels or input_channels
    name_of = {path: name for name, path in named(input_paths, input_root or _common_root(input_paths)).items()}

    chunks = ((chunk, images, None) for chunk, images in batches(input_paths, settings.batch_size, input_channels))
    stream = _translations(translate_fn, chunks, name_of, input_channels, output_channels)
    return evaluate(
        stream, real_paths, truth_paths, truth_root, features, palette, settings, output_channels, len(input_paths)
    )


def _translations(translate_fn, chunks, name_of, input_channels, output_channels):
    """`evaluate`'s stream: each `(paths, uint8 inputs, uint8 truth or None)` chunk translated."""
    for chunk, images, truth in chunks:
        translated = to_uint8(translate_fn(images.astype(np.float32) / 127.5 - 1.0))
        if translated.shape[:3] != images.shape[:3] or translated.shape[-1] != output_channels:
            raise MetricError(f"The model gave outputs of shape {translated.shape} for inputs of shape {images.shape}")
        groups = {"model": translated, **({"truth": truth} if truth is not None else {})}
        if input_channels == output_channels:
            groups["identity"] = images
        yield [name_of[p] for p in chunk], groups


def evaluate_aligned(
    translate_fn,
    pair_paths,
    direction="a2b",
    real_paths=None,
    features=None,
    palette=None,
    settings=EvalSettings(),
    input_channels=3,
    output_channels=None,
    pair_root=None,
):
    """Translates one half of each A|B file (pix2pix's test/ or val/) and scores it against the other half.

    Args:
        pair_paths: A|B files, each split at the middle of its width (which must be even).
        direction: `"a2b"`: the left half is the input, `"b2a"`: the right one (train.py's `--direction`).
        Others: as `evaluate_generator`.
    """
    output_channels = output_channels or input_channels
    source, target = (0, 1) if direction == "a2b" else (1, 0)
    name_of = {path: name for name, path in named(pair_paths, pair_root or _common_root(pair_paths)).items()}

    def halves_of(path):
        images = {}
        for channels in dict.fromkeys((input_channels, output_channels)):
            image = read_uint8(path, channels)
            if image.shape[1] % 2:
                raise MetricError(f"{path} is {image.shape[1]} pixels wide: an A|B file needs an even width")
            images[channels] = data.split_pair(image)
        return np.asarray(images[input_channels][source]), np.asarray(images[output_channels][target])

    chunks = ((chunk, *halves) for chunk, halves in batches(pair_paths, settings.batch_size, read=halves_of))
    stream = _translations(translate_fn, chunks, name_of, input_channels, output_channels)
    return evaluate(stream, real_paths, None, None, features, palette, settings, output_channels, len(pair_paths))


def evaluate_folders(
    fake_paths,
    real_paths=None,
    truth_paths=None,
    input_paths=None,
    features=None,
    palette=None,
    settings=EvalSettings(),
    fake_root=None,
    truth_root=None,
    input_root=None,
):
    """Scores images already translated (e.g. the reference's test.py results), as `evaluate_generator` does.

    Args:
        input_paths: the untranslated inputs, matched to `fake_paths` by name, for the identity baseline.
    """
    channels = set_channels(fake_paths)
    name_of = {path: name for name, path in named(fake_paths, fake_root or _common_root(fake_paths)).items()}
    inputs = None
    if input_paths:
        inputs = named(input_paths, input_root or _common_root(input_paths))
        check_channels("the --fake images", channels, "the --input images", set_channels(input_paths))

    def original(name, image):
        path = truth_for(name, inputs)
        if path is None:
            raise MetricError(f"No --input image is named like the --fake image {name!r}")
        original = read_uint8(path, channels)
        if original.shape != image.shape:
            raise MetricError(
                f"{path} is {original.shape[1]}x{original.shape[0]} but its translation is "
                f"{image.shape[1]}x{image.shape[0]}: the identity baseline needs equal sizes"
            )
        return original

    def stream():
        for chunk, images in batches(fake_paths, settings.batch_size, channels):
            names = [name_of[p] for p in chunk]
            groups = {"model": images}
            if inputs is not None:
                groups["identity"] = np.stack([original(name, image) for name, image in zip(names, images)])
            yield names, groups

    return evaluate(
        stream(), real_paths, truth_paths, truth_root, features, palette, settings, channels, count=len(fake_paths)
    )


def _common_root(paths):
    try:
        return Path(os.path.commonpath([Path(p).parent for p in paths]))
    except ValueError:  # absolute and relative paths mixed
        return Path(".")


def finite_or_str(value):
    """JSON has no inf/nan: those become strings ("inf"), as in export_report.json."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_or_str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_str(v) for v in value]
    return value
