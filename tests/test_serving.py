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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    generator = networks.resnet_generator(n_blocks=1, filters=8)
    path = export.export_saved_model(generator, tmp_path_factory.mktemp("serving") / "saved_model" / "1")
    return generator, path


def request(signature, **inputs):
    result = predict_pb2.PredictRequest()
    result.model_spec.name = "cyclegan"
    result.model_spec.signature_name = signature
    for name, value in inputs.items():
        result.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return result


def serve(path, requests):
    """`PredictResponse`s for `requests`, computed as TF Serving's predict path computes them."""
    responses = []
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        for one in requests:
            signature = meta_graph.signature_def[one.model_spec.signature_name or "serving_default"]
            assert signature.method_name == "tensorflow/serving/predict"
            assert set(one.inputs) == set(signature.inputs)
            feed = {signature.inputs[name].name: tf.make_ndarray(tensor) for name, tensor in one.inputs.items()}
            names = sorted(signature.outputs)
            values = session.run([signature.outputs[name].name for name in names], feed_dict=feed)
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
    assert image.shape == (1, 256, 256, 3) and image.dtype == np.uint8 and image.std() > 10
    np.testing.assert_allclose(tf.make_ndarray(requests[0].inputs["images"]), image / 127.5 - 1.0, atol=1e-6)

    float_response, uint8_response, bytes_response = serve(path, requests)
    assert tf.make_ndarray(float_response.outputs["translated"]).shape == (1, 256, 256, 3)
    assert tf.make_ndarray(uint8_response.outputs["translated"]).dtype == np.uint8
    (png,) = tf.make_ndarray(bytes_response.outputs["translated_png_bytes"])
    assert Image.open(io.BytesIO(png)).size == (256, 256)


@pytest.mark.parametrize("channels", [1, 4])
def test_warmup_follows_the_generator_channels(tmp_path, channels):
    path = export.write_warmup_requests(tmp_path, channels, size=8)
    (first, _, third) = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert tf.make_ndarray(first.predict_log.request.inputs["images"]).shape == (1, 8, 8, channels)
    (png,) = tf.make_ndarray(third.predict_log.request.inputs["encoded_images"])
    assert np.asarray(Image.open(io.BytesIO(png))).shape[2:] == ((channels,) if channels > 1 else ())
