"""Ship a generator: SavedModel for TF Serving, TFLite/LiteRT for phones, ONNX, verified.

`export(generator, out_dir, ...)` writes OUT/saved_model/1/ (with warmup requests),
OUT/generator_<variant>.tflite, OUT/generator.onnx (with the `[onnx]` extra), OUT/reference.npz
and OUT/export_report.json; `verify(out_dir)`,
run in a fresh process, reloads every artifact and measures it against the Keras outputs.
The signatures, the size limit and the TFLite interface: README "Ship the generator".
"""

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import files, networks
from cyclegan_keras.config import (
    EXPORT_ALIASES,
    EXPORT_PRECISIONS,
    ONNX_INSTALL,
    ONNX_PACKAGES,
    SERVING_MAX_PIXELS,
    TFLITE_VARIANTS,
)
from cyclegan_keras.inference import onnx_session, padded_call

FLOAT32_TOLERANCE = 1e-4


def _checked(images, channels, max_pixels):
    """`images` after checks naming the expected layout or the size limit."""
    expected = f"images must be NHWC: (batch, height, width, {channels})"
    shape = tf.shape(images)
    with tf.control_dependencies(
        [tf.debugging.assert_equal(tf.size(shape), 4, message=f"{expected}; got another rank")]
    ):
        pixels = tf.reduce_prod(tf.cast(shape[:3], tf.int64))
        checks = [
            tf.debugging.assert_equal(shape[-1], channels, message=f"{expected}; got another channel count"),
            tf.debugging.assert_positive(shape[0], message=f"{expected} with batch >= 1; got an empty batch"),
            _refuse_unless(
                pixels <= max_pixels,
                "images of ",
                tf.strings.reduce_join(tf.strings.as_string(shape[:3]), separator=" x "),
                " (batch x height x width) hold ",
                pixels,
                " pixels, " + _over_limit(max_pixels),
            ),
        ]
    with tf.control_dependencies(checks):
        return tf.ensure_shape(tf.identity(images), (None, None, None, channels))


def _over_limit(max_pixels):
    return f"more than the limit of {max_pixels} pixels per request set at export (export.py --max-pixels)"


def _refuse_unless(condition, *message):
    """An assertion: INVALID_ARGUMENT with `message` (strings and number tensors, joined) when false."""
    pieces = [
        piece if isinstance(piece, str) or piece.dtype == tf.string else tf.strings.as_string(piece)
        for piece in message
    ]
    return tf.debugging.Assert(condition, [tf.strings.join(pieces)])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER_BYTES = 26  # every format's size is within the first 26 bytes (BMP's ends there)


def _declared_size(encoded):
    """`[height, width, bytes to decode]` a JPEG, PNG, GIF or BMP header declares (0 x 0 if none)."""
    length = tf.strings.length(encoded, unit="BYTE")
    padded = tf.strings.join([tf.strings.substr(encoded, 0, HEADER_BYTES), b"\0" * HEADER_BYTES])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, HEADER_BYTES), tf.uint8), tf.int64)

    def starts(magic):
        return tf.strings.substr(encoded, 0, len(magic)) == magic

    def number(start, size, big_endian=False):
        order = range(size - 1, -1, -1) if big_endian else range(size)
        return sum(head[start + i] * 256**k for k, i in enumerate(order))

    def signed32(value):
        return tf.where(value >= 2**31, value - 2**32, value)

    def whole(height, width):
        return tf.stack([height, width, tf.cast(length, tf.int64)])

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(encoded), tf.int64)
        return whole(shape[0], shape[1])

    def png():
        return whole(number(20, 4, big_endian=True), number(16, 4, big_endian=True))

    def gif():
        end, height, width = _first_gif_image(encoded)
        return tf.stack([tf.maximum(number(8, 2), height), tf.maximum(number(6, 2), width), end])

    def bmp():
        return whole(tf.abs(signed32(number(22, 4))), signed32(number(18, 4)))

    return tf.case(
        [
            (starts(b"\xff\xd8\xff"), jpeg),
            (starts(PNG_SIGNATURE) & (length >= 24), png),
            (starts(b"GIF8") & (length >= 13), gif),
            (starts(b"BM") & (length >= 26), bmp),
        ],
        default=lambda: tf.zeros((3,), tf.int64),
    )


def _first_gif_image(encoded):
    """`(end, height, width)` of a GIF's first image: giflib would read every frame into memory."""
    data = tf.cast(tf.io.decode_raw(encoded, tf.uint8), tf.int64)
    length = tf.size(data, out_type=tf.int64)

    zero, one = tf.constant(0, tf.int64), tf.constant(1, tf.int64)

    def byte(at):
        return tf.gather(data, tf.minimum(at, length - 1))

    def color_table(packed):
        return tf.where(packed >= 128, 3 * 2 ** (packed % 8 + 1), zero)

    # Modes: 0 at a block, 1 in an extension's sub-blocks, 2 in the image's.
    def step(at, mode, end, height, width):
        value = byte(at)
        at_block = mode == 0
        image = at_block & (value == 0x2C)
        extension = at_block & (value == 0x21)
        sub_blocks_end = ~at_block & (value == 0)
        # An image descriptor is 10 bytes, its colour table, then the LZW code size byte.
        next_at = tf.where(extension, at + 2, tf.where(image, at + 11 + color_table(byte(at + 9)), at + 1 + value))
        next_mode = tf.where(extension, one, tf.where(image, one + 1, tf.where(sub_blocks_end, zero, mode)))
        found = (sub_blocks_end & (mode == 2)) | (at_block & ~image & ~extension)
        next_end = tf.where(found, tf.where(at_block, at, at + 1), end)
        height = tf.where(image, byte(at + 7) + 256 * byte(at + 8), height)
        width = tf.where(image, byte(at + 5) + 256 * byte(at + 6), width)
        return next_at, next_mode, next_end, height, width

    start = 13 + color_table(byte(one * 10))
    at, _, end, height, width = tf.while_loop(
        lambda at, mode, end, height, width: (end < 0) & (at < length),
        step,
        (start, zero, zero - 1, zero, zero),
    )
    return tf.where(end < 0, length, end), height, width


def _decoded(encoded, length, channels):
    """One image of the `bytes` signature, decoded from `encoded[:length]` (a GIF's first image, closed)."""
    encoded = tf.cond(
        tf.strings.substr(encoded, 0, 4) == b"GIF8",
        lambda: tf.strings.join([tf.strings.substr(encoded, tf.constant(0, tf.int64), length), b";"]),
        lambda: encoded,
    )
    image = tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, (None, None, channels))


def _checked_encoded(encoded_images, max_pixels):
    """`(encoded_images, lengths)` once the headers are known formats within `max_pixels`, before decoding."""
    declared = tf.map_fn(_declared_size, encoded_images, fn_output_signature=tf.TensorSpec((3,), tf.int64))
    sizes = declared[:, :2]
    unknown = tf.where(tf.reduce_any(sizes <= 0, axis=1))[:, 0]
    # float64: the product of two 32-bit sides can overflow int64.
    pixels = tf.reduce_sum(tf.reduce_prod(tf.cast(tf.maximum(sizes, 0), tf.float64), axis=1))
    shown = 8  # sizes named in the message

    def listed(strings):
        more = tf.where(tf.size(strings) > shown, ", ...", "")
        return tf.strings.reduce_join(strings[:shown], separator=", ") + more

    checks = [
        _refuse_unless(
            tf.size(unknown) == 0,
            "encoded_images[",
            listed(tf.strings.as_string(unknown)),
            "]: not JPEG, PNG, GIF or BMP, or the header is cut short; nothing was decoded",
        ),
        _refuse_unless(
            pixels <= max_pixels,
            "encoded_images declare ",
            tf.cast(tf.minimum(pixels, 2.0**62), tf.int64),
            " pixels (height x width: ",
            listed(tf.strings.as_string(sizes[:, 0]) + "x" + tf.strings.as_string(sizes[:, 1])),
            "), " + _over_limit(max_pixels) + "; nothing was decoded",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(encoded_images), tf.identity(declared[:, 2])


def export_saved_model(generator, path, max_pixels=SERVING_MAX_PIXELS):
    """Writes a SavedModel with the three signatures to `path` (e.g. OUT/saved_model/1).

    Args:
        max_pixels: the most pixels (height x width, summed over the batch) one request may hold.
    """
    if not (isinstance(max_pixels, int) and max_pixels >= 1):
        raise ValueError(f"max_pixels must be an integer >= 1. Received: max_pixels={max_pixels!r}")
    channels = generator.input_shape[-1]
    translate = padded_call(generator)

    def serve_float(images):
        return {"translated": translate(_checked(images, channels, max_pixels))}

    def serve_uint8(images):
        floats = tf.cast(_checked(images, channels, max_pixels), tf.float32) / 127.5 - 1.0
        return {"translated": _to_uint8(translate(floats))}

    def serve_bytes(encoded_images):
        def one(args):
            image = _decoded(*args, channels)
            output = translate(tf.cast(image, tf.float32)[None] / 127.5 - 1.0)[0]
            return tf.io.encode_png(_to_uint8(output))

        checked = _checked_encoded(encoded_images, max_pixels)
        return {"translated_png_bytes": tf.map_fn(one, checked, fn_output_signature=tf.string)}

    archive = keras.export.ExportArchive()
    archive.track(generator)
    archive.add_variable_collection("max_pixels", [tf.Variable(max_pixels, dtype=tf.int64, trainable=False)])
    # Unknown rank, so that `_checked` runs: with a static rank TensorFlow folds its rank check away
    # (measured: an (h, w, c) input then passes unchecked).
    archive.add_endpoint("serving_default", serve_float, [tf.TensorSpec(None, tf.float32, name="images")])
    archive.add_endpoint("uint8", serve_uint8, [tf.TensorSpec(None, tf.uint8, name="images")])
    archive.add_endpoint("bytes", serve_bytes, [tf.TensorSpec((None,), tf.string, name="encoded_images")])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    archive.write_out(str(path), verbose=False)
    write_warmup_requests(path, channels, size=min(WARMUP_SIZE, math.isqrt(max_pixels)))
    return Path(path)


WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_SIZE = 256


def write_warmup_requests(saved_model_dir, channels, size=WARMUP_SIZE):
    """Writes TF Serving's warmup file (one `size` x `size` request per signature); returns its path."""
    rows, columns = np.mgrid[0:size, 0:size]
    image = np.stack([(rows + columns + 85 * c) % 256 for c in range(channels)], axis=-1).astype(np.uint8)
    requests = {
        "serving_default": {"images": image[None].astype("float32") / 127.5 - 1.0},
        "uint8": {"images": image[None]},
        "bytes": {"encoded_images": np.array([tf.io.encode_png(image).numpy()], dtype=object)},
    }
    path = Path(saved_model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests.items():
            model_spec = _proto_field(3, signature.encode())  # ModelSpec.signature_name
            request = _proto_field(1, model_spec)  # PredictRequest.model_spec
            for name, value in inputs.items():  # PredictRequest.inputs: map entries (key 1, value 2)
                tensor = tf.make_tensor_proto(value).SerializeToString()
                request += _proto_field(2, _proto_field(1, name.encode()) + _proto_field(2, tensor))
            writer.write(_proto_field(6, _proto_field(1, request)))  # PredictionLog.predict_log.request
    return path


def _proto_field(number, payload):
    """A length-delimited protobuf field (wire type 2), so that no tensorflow-serving-api pins TensorFlow."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value):
    encoded = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _to_uint8(images):
    return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


def export_tflite(generator, path, variant="float32", representative_images=None):
    """Writes a `.tflite` file of `generator` (padding included).

    Args:
        variant: `"float32"`, `"float16"`, `"dynamic"` (int8 weights) or `"int8"` (calibrated).
        representative_images: float images (h, w, c) in [-1, 1] of the input domain, for `"int8"`.
    """
    variant = _check_variant(variant, representative_images)
    with tempfile.TemporaryDirectory() as source:
        _write_tflite_source(generator, source)
        return _convert_tflite(source, path, variant, representative_images)


def _check_variant(variant, representative_images):
    """`variant` in its current spelling, once checked."""
    variant = EXPORT_ALIASES.get(variant, variant)
    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"variant must be one of {TFLITE_VARIANTS}. Received: {variant!r}")
    if variant == "int8" and (representative_images is None or len(representative_images) == 0):
        raise ValueError("The int8 variant needs representative images from the input domain")
    return variant


def _write_tflite_source(generator, directory):
    """The SavedModel (batch 1, any size) every TFLite variant is converted from: it freezes variables reliably."""
    translate = padded_call(generator)
    archive = keras.export.ExportArchive()
    archive.track(generator)
    archive.add_endpoint(
        "serving_default",
        lambda images: {"translated": translate(images)},
        [tf.TensorSpec((1, None, None, generator.input_shape[-1]), tf.float32, name="images")],
    )
    archive.write_out(str(directory), verbose=False)


def _convert_tflite(source, path, variant, representative_images):
    converter = tf.lite.TFLiteConverter.from_saved_model(str(source), signature_keys=["serving_default"])
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        samples = [np.asarray(image, "float32") for image in representative_images]
        converter.representative_dataset = lambda: ([sample[None]] for sample in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(converter.convert())
    return Path(path)


ONNX_FILE = "generator.onnx"


class MissingPackage(ImportError):
    """An optional package an export needs is not installed; the message says what to install."""


def require_onnx():
    """Raises `MissingPackage` naming the first of `ONNX_PACKAGES` that does not import."""
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise MissingPackage(
                f"the ONNX export needs the {name} package ({error}): {ONNX_INSTALL}, or pip install "
                + " ".join(ONNX_PACKAGES)
            ) from None


class _Padded(keras.Model):
    """`padded_call(generator)` as a Keras model (padding included), returning `{"translated": images}`."""

    def __init__(self, generator):
        super().__init__(name=f"{generator.name}_padded")
        self.generator = generator
        self._translate = padded_call(generator)

    def call(self, images):
        return {"translated": self._translate(images)}


def export_onnx(generator, path):
    """Writes `generator` (padding included) as ONNX: `images` float32 NHWC in [-1, 1] -> `translated`.

    Through Keras's own `model.export(format="onnx")` (tf2onnx's `from_function`, ONNX's default
    opset of that tf2onnx); batch, height and width are dynamic, named `batch`, `height`, `width`.
    """
    require_onnx()
    import onnx

    channels = generator.input_shape[-1]
    model = _Padded(generator)
    model.build((None, None, None, channels))
    spec = keras.InputSpec(shape=(None, None, None, channels), dtype="float32", name="images")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Keras sets np.object for tf2onnx under numpy 2
        model.export(str(path), format="onnx", verbose=False, input_signature=[spec])
    # tf2onnx names the dynamic axes unk__N; these names say what they are, and that the output's match.
    proto = onnx.load(str(path))
    for value in (*proto.graph.input, *proto.graph.output):
        for dimension, name in zip(value.type.tensor_type.shape.dim, ("batch", "height", "width")):
            dimension.dim_param = name
    onnx.save(proto, str(path))
    return Path(path)


def sample_images(generator, size=256, count=2, seed=0):
    """Synthetic parity samples: a square one and an odd-sized one."""
    from cyclegan_keras.data import synthetic_images

    channels = generator.input_shape[-1]
    images = []
    for i in range(count):
        height, width = (size, size) if i % 2 == 0 else (size - 6, size + 10)
        image = synthetic_images("A", 1, (height, width), 1 if channels == 1 else 3, seed=seed + i)[0]
        if channels not in (1, 3):
            image = np.concatenate([image, np.full((height, width, channels - 3), 255, np.uint8)], axis=-1)
        images.append(image.astype("float32") / 127.5 - 1.0)
    return images


def export(
    generator,
    out_dir,
    formats=("saved_model", "tflite"),
    variants=("float32",),
    representative=None,
    samples=None,
    save_generator=False,
    precision="float32",
    max_pixels=SERVING_MAX_PIXELS,
):
    """Exports `generator` (checked against its float32 copy) and verifies every artifact in a fresh process.

    Everything is staged in a hidden folder and moved into `out_dir` only once verified; only files
    an earlier export wrote and nobody changed since (`files.Manifest`) are replaced.

    Args:
        generator: `keras.Model`, e.g. `CycleGAN.generator("a2b")`.
        formats: any of `"saved_model"`, `"tflite"`, `"onnx"` (needs the `[onnx]` extra: `require_onnx`).
        variants: TFLite variants (see `export_tflite`; `"none"` means `"float32"`).
        representative: float images in [-1, 1] for int8 calibration (default: `samples`).
        samples: float images (h, w, c) in [-1, 1] for the parity check (default: `sample_images(generator)`).
        save_generator: also write the Keras generator as `OUT/generator.keras`.
        precision: what the SavedModel computes in: `"float32"` or `"mixed_bfloat16"` (`"bfloat16"`).
        max_pixels: the most pixels one SavedModel request may hold (see `export_saved_model`).

    Returns:
        The report (also `OUT/export_report.json`).

    Raises:
        ExportError: a float32 export differs from Keras by more than 1e-4, or an artifact does not run.
        MissingPackage: `"onnx"` without tf2onnx, onnx or onnxruntime (before any work).
        files.ForeignFile: an output name is taken by a file this package did not write.
        files.FolderInUse: another export is writing `out_dir`.
        files.DiskFull: the disk filled (the hidden folder is removed).
    """
    precision = EXPORT_ALIASES.get(precision, precision)
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision must be one of {EXPORT_PRECISIONS}. Received: precision={precision!r}")
    variants = tuple(EXPORT_ALIASES.get(variant, variant) for variant in variants)
    if "onnx" in formats:
        require_onnx()
    samples = samples if samples is not None else sample_images(generator)
    largest = max(int(np.prod(np.shape(image)[:2])) for image in samples)
    if "saved_model" in formats and largest > max_pixels:
        raise ValueError(
            f"The SavedModel would refuse the parity samples ({largest} pixels): max_pixels must be at least "
            f"that. Received: max_pixels={max_pixels}"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir must be a folder. Received a file: {out_dir}")
    # Beside or inside out_dir, so the final moves stay on one file system.
    parent = out_dir if out_dir.is_dir() else files.existing_ancestor(out_dir)
    with files.exclusive(parent, f".{out_dir.name}.lock"):
        if out_dir.is_dir():
            files.Manifest(out_dir).check(_outputs(formats, variants, save_generator))
        stage = parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        try:
            with files.removed_on_error(out_dir, stage):
                report = _export_into(
                    stage, generator, formats, variants, representative, samples, save_generator, precision, max_pixels
                )
            _publish(stage, out_dir, _outputs(formats, variants, save_generator))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return report


def _outputs(formats, variants, save_generator):
    """What `export` writes in OUT, relative to it."""
    names = ["reference.npz", "artifacts.json", "export_report.json"]
    names += ["generator.keras"] if save_generator else []
    names += ["saved_model/1"] if "saved_model" in formats else []
    names += [f"generator_{variant}.tflite" for variant in variants] if "tflite" in formats else []
    names += [ONNX_FILE] if "onnx" in formats else []
    return names


def _publish(stage, out_dir, written):
    """Moves `written` (relative to `stage`) into `out_dir`, recorded as pending in its manifest meanwhile."""
    if not out_dir.exists():
        files.Manifest(stage).finish(written)  # moving the folder keeps every file's size and time
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, out_dir)
        return
    manifest = files.Manifest(out_dir)
    manifest.begin(written)
    for relative in written:
        source, target = stage / relative, out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(source, target)
    manifest.finish(written)


def _export_into(out_dir, generator, formats, variants, representative, samples, save_generator, precision, max_pixels):
    artifacts = []
    if save_generator:
        generator.save(out_dir / "generator.keras")
    generator = networks.with_precision(generator, "float32")  # as trained, mixed or not
    if "saved_model" in formats:
        served = networks.with_precision(generator, precision)
        export_saved_model(served, out_dir / "saved_model" / "1", max_pixels=max_pixels)
        artifacts.append(
            {"format": "saved_model", "variant": precision, "path": "saved_model/1", "max_pixels": max_pixels}
        )
    if "tflite" in formats:
        calibration = list(representative if representative is not None else samples)[:32]
        for variant in variants:
            _check_variant(variant, calibration)
        with tempfile.TemporaryDirectory() as source:
            _write_tflite_source(generator, source)  # once, for every variant
            for variant in variants:
                path = _convert_tflite(source, out_dir / f"generator_{variant}.tflite", variant, calibration)
                artifacts.append({"format": "tflite", "variant": variant, "path": path.name})
    if "onnx" in formats:
        export_onnx(generator, out_dir / ONNX_FILE)
        artifacts.append({"format": "onnx", "variant": "float32", "path": ONNX_FILE})
    keras_fn = padded_call(generator)
    references, keras_seconds = [], []
    for image in samples:
        start = time.perf_counter()
        references.append(keras_fn(tf.constant(image[None])).numpy()[0])
        keras_seconds.append(time.perf_counter() - start)
    np.savez(
        out_dir / "reference.npz",
        **{f"input_{i}": image for i, image in enumerate(samples)},
        **{f"output_{i}": output for i, output in enumerate(references)},
    )
    (out_dir / "artifacts.json").write_text(json.dumps(artifacts))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cyclegan_keras.export import verify; verify(sys.argv[1])",
            str(out_dir.resolve()),  # the child runs in another directory
        ],
        capture_output=True,
        text=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    report_path = out_dir / "export_report.json"
    if result.returncode != 0 or not report_path.exists():
        raise ExportError(f"Verifying the exports in a fresh process failed:\n{result.stderr[-3000:]}")
    report = json.loads(report_path.read_text())
    report["keras_latency_ms_per_image"] = round(1000 * float(np.median(keras_seconds[1:] or keras_seconds)), 1)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    failures = []
    for artifact in report["artifacts"]:
        if artifact.get("error"):
            failures.append(f"{artifact['path']}: {artifact['error']}")
        elif artifact["variant"] == "float32" and not artifact["max_abs_error"] <= FLOAT32_TOLERANCE:
            error = artifact["max_abs_error"]
            failures.append(f"{artifact['path']}: max abs error {error:.2e} > {FLOAT32_TOLERANCE}")
    if failures:
        raise ExportError("Export verification failed: " + "; ".join(failures))
    return report


def evaluate_artifacts(
    generator, out_dir, report, input_paths, real_paths=None, features=None, settings=None, verbose=True
):
    """Scores each artifact's uint8 translations: FID/KID against `real_paths`, PSNR/SSIM/MAE against Keras.

    Args:
        generator: the exported `keras.Model`.
        report: `export`'s report; each artifact gains `"evaluation"`, and so does the report (not written).
        input_paths: input-domain image files (at least 2 with FID).
        real_paths: target-domain image files for FID/KID, or None.
        features: `fid_inception.InceptionFeatures` or None (no FID/KID).
        settings: `metrics.EvalSettings` (default: its defaults).

    Returns:
        `report`, updated.

    Raises:
        metrics.MetricError, data.UnreadableImage: images that cannot be scored or read.
    """
    from cyclegan_keras import metrics, translation

    settings = settings or metrics.EvalSettings(verbose=verbose)
    channels = generator.input_shape[-1]
    real_features = None
    if features is not None and real_paths:
        real_features = metrics.extract_features(real_paths, features, settings.batch_size, verbose, "real")

    keras_fn = tf.function(padded_call(generator), reduce_retracing=True)
    with tempfile.TemporaryDirectory() as keras_outputs:

        def scored(name, translate, against_keras):
            if verbose:
                print(f"Scoring {name}")

            def batches():
                for i, (_, images) in enumerate(metrics.batches(input_paths, settings.batch_size, channels)):
                    outputs = images if translate is None else metrics.to_uint8(translate(images / 127.5 - 1.0))
                    path = Path(keras_outputs) / f"{i}.npy"
                    if not against_keras:
                        if translate is keras_fn:
                            np.save(path, outputs)
                        yield outputs, None
                    else:
                        yield outputs, np.load(path)

            return metrics.score_batches(batches(), features, real_features, settings)

        keras_scores = scored("the Keras model", keras_fn, against_keras=False)
        identity = None
        if channels == generator.output_shape[-1]:
            identity = scored("the inputs themselves", None, against_keras=False) if real_features is not None else None
        for artifact in report["artifacts"]:
            if artifact.get("error"):
                continue
            translator = translation.load_translator(Path(out_dir) / artifact["path"])
            scores = scored(artifact["path"], translator, against_keras=True)
            artifact["evaluation"] = _renamed(scores)
    report["evaluation"] = {
        "keras": _renamed(keras_scores),
        "identity": _renamed(identity) if identity else None,
        "images": len(input_paths),
        "real_images": len(real_paths) if real_paths else 0,
        "fid_skipped": None if real_features is not None else "no FID Inception weights file (--inception-weights)",
        "settings": {
            "kid_subsets": settings.kid_subsets,
            "kid_subset_size": min(settings.kid_subset_size, len(input_paths), len(real_paths or [])),
            "kid_seed": settings.seed,
            "paired_against": "the Keras generator's translations, rounded to uint8",
            "ssim": dict(metrics.SSIM_SETTINGS, data_range="0..255"),
            **(features.settings() if features is not None and hasattr(features, "settings") else {}),
        },
    }
    return report


def _renamed(scores):
    """Scores with the paired ones named for what they compare with; inf as "inf" (JSON has none)."""
    from cyclegan_keras.metrics import finite_or_str

    paired = {"psnr": "psnr_vs_keras", "ssim": "ssim_vs_keras", "mae": "mae_vs_keras"}
    return finite_or_str({paired.get(k, k): v for k, v in scores.items()})


class ExportError(RuntimeError):
    """An exported artifact does not compute what the Keras model computes."""


def verify(out_dir):
    """Reloads every artifact listed in OUT/artifacts.json and writes OUT/export_report.json."""
    out_dir = Path(out_dir)
    artifacts = json.loads((out_dir / "artifacts.json").read_text())
    reference = np.load(out_dir / "reference.npz")
    inputs = [reference[f"input_{i}"] for i in range(len(reference.files) // 2)]
    expected = [reference[f"output_{i}"] for i in range(len(inputs))]
    for artifact in artifacts:
        path = out_dir / artifact["path"]
        try:
            run, extra = _RUNNERS[artifact["format"]](path)
            outputs, seconds = [], []
            for image in inputs:
                start = time.perf_counter()
                outputs.append(run(image))
                seconds.append(time.perf_counter() - start)
            artifact.update(extra)
            artifact.update(_parity(outputs, expected))
            artifact["latency_ms_per_image"] = round(1000 * float(np.median(seconds[1:] or seconds)), 1)
        except Exception as error:  # reported, not raised: the parent decides
            artifact["error"] = f"{type(error).__name__}: {error}"
        artifact["size_bytes"] = _size(path)
    report = {"samples": [list(image.shape) for image in inputs], "artifacts": artifacts}
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")


def _saved_model_runner(path):
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    return (lambda image: signature(images=tf.constant(image[None]))["translated"].numpy()[0]), {
        "signatures": sorted(loaded.signatures)
    }


def _tflite_runner(path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    ops_used, float_ops = _tflite_ops(path, Interpreter, OpResolverType)
    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
    input_index = interpreter.get_input_details()[0]["index"]

    def run(image):
        interpreter.resize_tensor_input(input_index, (1, *image.shape), strict=False)
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, image[None].astype("float32"))
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]

    return run, {"ops": ops_used, "float_ops": float_ops}


def _onnx_runner(path):
    import onnx
    import onnxruntime

    session = onnx_session(path)
    model = onnx.load(str(path), load_external_data=False)
    run = session.run
    return (lambda image: run(["translated"], {"images": image[None]})[0][0]), {
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "input_shape": [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim],
        "ops": sorted({node.op_type for node in model.graph.node}),
        "onnxruntime": onnxruntime.__version__,
        "providers": session.get_providers(),
    }


_RUNNERS = {"saved_model": _saved_model_runner, "tflite": _tflite_runner, "onnx": _onnx_runner}


def _tflite_ops(path, Interpreter, OpResolverType):
    """Op types of a .tflite file, and those computing in float (no delegate hides them)."""
    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    details = interpreter._get_ops_details()
    used = sorted({op["op_name"] for op in details})
    floating = sorted(
        {
            op["op_name"]
            for op in details
            if any(dtypes.get(i) in (np.float32, np.float16) for i in op["outputs"])
            and op["op_name"] not in ("DEQUANTIZE", "QUANTIZE")
        }
    )
    return used, floating


def _parity(outputs, expected):
    errors = [float(np.max(np.abs(o - e))) for o, e in zip(outputs, expected)]
    mse = float(np.mean([np.mean(((o - e) / 2.0) ** 2) for o, e in zip(outputs, expected)]))
    psnr = float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)
    return {"max_abs_error": max(errors), "psnr_db": round(psnr, 2) if math.isfinite(psnr) else "inf"}


def _size(path):
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0
