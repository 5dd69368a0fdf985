"""The SavedModel as TF Serving loads and runs it: the v1 loader in a session, tensors by signature_def names.

TF Serving (tensorflow_model_server) cannot be installed here, so this does
what its predict path does: `LoadSavedModel` with the "serve" tag into a
session, then for a `PredictRequest` look up the signature_def, feed each
input's `TensorProto` to the tensor its TensorInfo names, and fetch the
outputs by name. No tf.function, no Keras object, no Python object from the
export survives into this.
"""

import io
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cyclegan_keras import export, networks
from cyclegan_keras.inference import translate_images

if os.environ.get("CI"):  # CI installs requirements-dev.txt: a skip there would hide these tests
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
else:
    predict_pb2 = pytest.importorskip(
        "tensorflow_serving.apis.predict_pb2", reason="pip install -r requirements-dev.txt (tensorflow-serving-api)"
    )
    from tensorflow_serving.apis import prediction_log_pb2


MAX_PIXELS = 200 * 200  # below the warmup's 256 x 256, which shrinks to fit


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    generator = networks.resnet_generator(n_blocks=1, filters=8)
    path = export.export_saved_model(
        generator, tmp_path_factory.mktemp("serving") / "saved_model" / "1", max_pixels=MAX_PIXELS
    )
    return generator, path


def request(signature, **inputs):
    result = predict_pb2.PredictRequest()
    result.model_spec.name = "cyclegan"
    result.model_spec.signature_name = signature
    for name, value in inputs.items():
        result.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return result


def serve(path, requests):
    """`PredictResponse`s for `requests`, computed as TF Serving's predict path computes them.

    A request that fails gives its `tf.errors.OpError` in its place (TF
    Serving answers it with that status) and the next runs in the same
    session.
    """
    responses = []
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        for one in requests:
            signature = meta_graph.signature_def[one.model_spec.signature_name or "serving_default"]
            assert signature.method_name == "tensorflow/serving/predict"
            assert set(one.inputs) == set(signature.inputs)
            feed = {signature.inputs[name].name: tf.make_ndarray(tensor) for name, tensor in one.inputs.items()}
            names = sorted(signature.outputs)
            try:
                values = session.run([signature.outputs[name].name for name in names], feed_dict=feed)
            except tf.errors.OpError as error:
                responses.append(error)
                continue
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(one.model_spec)
            for name, value in zip(names, values):
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            responses.append(response)
    return responses


def encoded(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def to_uint8(images):
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def test_every_signature_through_the_v1_session(exported, rng):
    generator, path = exported
    floats = rng.uniform(-1, 1, (2, 13, 21, 3)).astype("float32")
    uint8 = rng.integers(0, 256, (1, 10, 7, 3), dtype=np.uint8)
    png_image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    jpeg = encoded(rng.integers(0, 256, (30, 9, 3), dtype=np.uint8), "JPEG")
    float_response, uint8_response, bytes_response = serve(
        path,
        [
            request("serving_default", images=floats),
            request("uint8", images=uint8),
            request("bytes", encoded_images=np.array([encoded(png_image, "PNG"), jpeg], dtype=object)),
        ],
    )

    assert list(float_response.outputs) == ["translated"]
    translated = tf.make_ndarray(float_response.outputs["translated"])
    np.testing.assert_allclose(translated, translate_images(generator, floats), atol=1e-5)

    served_uint8 = tf.make_ndarray(uint8_response.outputs["translated"])
    assert served_uint8.dtype == np.uint8 and served_uint8.shape == (1, 10, 7, 3)
    expected_uint8 = to_uint8(translate_images(generator, uint8.astype("float32") / 127.5 - 1.0))
    assert np.abs(served_uint8.astype(int) - expected_uint8).max() <= 1  # float rounding at .5 only

    pngs = tf.make_ndarray(bytes_response.outputs["translated_png_bytes"])
    assert pngs.shape == (2,)
    decoded = [Image.open(io.BytesIO(png)) for png in pngs]
    assert [image.format for image in decoded] == ["PNG", "PNG"]
    assert [image.size for image in decoded] == [(23, 17), (9, 30)]
    expected_png = to_uint8(translate_images(generator, png_image[None].astype("float32") / 127.5 - 1.0))[0]
    assert np.abs(np.asarray(decoded[0]).astype(int) - expected_png).max() <= 1  # PNG in and out: lossless


def test_rest_api_returns_the_pngs_as_base64(exported):
    # TF Serving's json_tensor.cc writes a string output as {"b64": ...} only
    # when its name ends in "_bytes"; any other name gets the raw PNG bytes.
    _, path = exported
    signature_defs = tf.saved_model.load(str(path)).signatures
    strings = [
        name
        for signature in signature_defs.values()
        for name, spec in signature.structured_outputs.items()
        if spec.dtype == tf.string
    ]
    assert strings == ["translated_png_bytes"]


def test_warmup_requests_parse_and_run(exported):
    _, path = exported
    warmup = path / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in tf.data.TFRecordDataset(warmup)]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 3
    requests = [log.predict_log.request for log in logs]
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "uint8", "bytes"]

    # The hand-written encoding equals what tensorflow-serving-api's protos encode.
    expected = request("uint8", images=tf.make_ndarray(requests[1].inputs["images"]))
    expected.model_spec.ClearField("name")
    assert requests[1] == expected
    image = tf.make_ndarray(requests[1].inputs["images"])
    assert image.shape == (1, 200, 200, 3) and image.dtype == np.uint8 and image.std() > 10
    np.testing.assert_allclose(tf.make_ndarray(requests[0].inputs["images"]), image / 127.5 - 1.0, atol=1e-6)

    float_response, uint8_response, bytes_response = serve(path, requests)
    assert tf.make_ndarray(float_response.outputs["translated"]).shape == (1, 200, 200, 3)
    assert tf.make_ndarray(uint8_response.outputs["translated"]).dtype == np.uint8
    (png,) = tf.make_ndarray(bytes_response.outputs["translated_png_bytes"])
    assert Image.open(io.BytesIO(png)).size == (200, 200)


@pytest.mark.parametrize("channels", [1, 4])
def test_warmup_follows_the_generator_channels(tmp_path, channels):
    path = export.write_warmup_requests(tmp_path, channels, size=8)
    (first, _, third) = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert tf.make_ndarray(first.predict_log.request.inputs["images"]).shape == (1, 8, 8, channels)
    (png,) = tf.make_ndarray(third.predict_log.request.inputs["encoded_images"])
    assert np.asarray(Image.open(io.BytesIO(png))).shape[2:] == ((channels,) if channels > 1 else ())


# -- Requests over the size limit -------------------------------------------------------


def png_header(width, height, rows=4):
    """A PNG that declares `width` x `height` RGB but holds only its first `rows` (zeros): a few hundred bytes."""

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        export.PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows * (1 + 3 * width)), 9))
        + chunk(b"IEND", b"")
    )


def jpeg_header(width, height):
    """A small real JPEG whose frame header (SOF0) is rewritten to declare `width` x `height`."""
    data = bytearray(encoded(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_header(width, height, frame=(1, 1)):
    """A GIF whose logical screen is `width` x `height`, with one `frame` (width, height) image, its data cut short."""
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes(6) + image + b"\x3b"


def bmp_header(width, height):
    """A BMP info header declaring `width` x `height` (negative height: top-down rows), without pixels."""
    return (
        b"BM"
        + struct.pack("<IHHI", 54, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    )


def status(response):
    assert isinstance(response, tf.errors.InvalidArgumentError), response
    return response.message


def test_images_declaring_20000x20000_are_refused_and_the_server_goes_on(exported, rng):
    generator, path = exported
    headers = [png_header(20000, 20000), jpeg_header(20000, 20000), gif_header(20000, 20000), bmp_header(20000, -20000)]
    assert max(len(header) for header in headers) < 1000
    image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    requests = [request("bytes", encoded_images=np.array([header], dtype=object)) for header in headers]
    *refused, accepted = serve(
        path, [*requests, request("bytes", encoded_images=np.array([encoded(image, "PNG")], dtype=object))]
    )
    for message in map(status, refused):
        assert "encoded_images declare 400000000 pixels (height x width: 20000x20000)" in message
        assert (
            f"limit of {MAX_PIXELS} pixels per request set at export (export.py --max-pixels); nothing was decoded"
            in message
        )
    (png,) = tf.make_ndarray(accepted.outputs["translated_png_bytes"])
    expected = to_uint8(translate_images(generator, image[None].astype("float32") / 127.5 - 1.0))[0]
    assert np.abs(np.asarray(Image.open(io.BytesIO(png))).astype(int) - expected).max() <= 1


def test_encoded_images_are_limited_together_and_by_their_gif_frame(exported, rng):
    _, path = exported
    half = encoded(rng.integers(0, 256, (96, 200, 3), dtype=np.uint8), "PNG")  # 19200 pixels
    fits = encoded(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG")
    responses = serve(
        path,
        [
            request("bytes", encoded_images=np.array([half, half, fits], dtype=object)),
            request("bytes", encoded_images=np.array([half, half, half], dtype=object)),
            # A 10x10 screen whose first image declares 300x300.
            request("bytes", encoded_images=np.array([gif_header(10, 10, frame=(300, 300))], dtype=object)),
            request(
                "bytes", encoded_images=np.array([fits, b"RIFF\0\0\0\0WEBPVP8 ", png_header(8, 8)[:20]], dtype=object)
            ),
        ],
    )
    assert tf.make_ndarray(responses[0].outputs["translated_png_bytes"]).shape == (3,)
    assert "declare 57600 pixels (height x width: 96x200, 96x200, 96x200)" in status(responses[1])
    assert "declare 90000 pixels (height x width: 300x300)" in status(responses[2])
    assert "encoded_images[1, 2]: not JPEG, PNG, GIF or BMP, or the header is cut short" in status(responses[3])


def test_a_gif_animation_is_decoded_to_its_first_frame(exported, rng):
    # giflib reads every frame into memory: the graph cuts the file after the first.
    generator, path = exported
    frames = [Image.fromarray(rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)) for _ in range(30)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], comment=b"x" * 300)
    first = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    (response,) = serve(path, [request("bytes", encoded_images=np.array([buffer.getvalue()], dtype=object))])
    (png,) = tf.make_ndarray(response.outputs["translated_png_bytes"])
    expected = to_uint8(translate_images(generator, first[None].astype("float32") / 127.5 - 1.0))[0]
    assert np.abs(np.asarray(Image.open(io.BytesIO(png))).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("signature, dtype", [("serving_default", "float32"), ("uint8", "uint8")])
def test_tensors_over_the_limit_are_refused_and_the_server_goes_on(exported, signature, dtype):
    _, path = exported
    too_tall, too_many, fits = (
        np.zeros(shape, dtype) for shape in [(1, 201, 200, 3), (2, 200, 101, 3), (1, 200, 200, 3)]
    )
    responses = serve(path, [request(signature, images=images) for images in (too_tall, too_many, fits)])
    assert (
        f"images of 1 x 201 x 200 (batch x height x width) hold 40200 pixels, more than the limit of "
        f"{MAX_PIXELS} pixels per request set at export (export.py --max-pixels)" in status(responses[0])
    )
    assert "images of 2 x 200 x 101 (batch x height x width) hold 40400 pixels" in status(responses[1])
    assert tf.make_ndarray(responses[2].outputs["translated"]).shape == (1, 200, 200, 3)


def test_the_limit_is_kept_in_the_saved_model(exported):
    _, path = exported
    assert tf.saved_model.load(str(path)).max_pixels[0].numpy() == MAX_PIXELS
