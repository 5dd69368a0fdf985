import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cyclegan_keras import export, files, networks, translation
from cyclegan_keras.cli import export as export_cli
from cyclegan_keras.inference import translate_images

ROOT = Path(__file__).resolve().parent.parent

SIGNATURE_CHECKS = r"""
import io, json, sys
import numpy as np, tensorflow as tf
from PIL import Image
loaded = tf.saved_model.load(sys.argv[1])
signatures = loaded.signatures
inputs = np.load(sys.argv[2])
result = {}
result["float"] = signatures["serving_default"](images=tf.constant(inputs["float"]))["translated"].numpy().tolist()
uint8 = signatures["uint8"](images=tf.constant(inputs["uint8"]))["translated"]
result["uint8_dtype"], result["uint8_shape"] = uint8.dtype.name, list(uint8.shape)
encoded = [inputs["png"].tobytes(), inputs["jpeg"].tobytes()]
pngs = signatures["bytes"](encoded_images=tf.constant(encoded))["translated_png_bytes"].numpy()
result["bytes_sizes"] = [list(Image.open(io.BytesIO(p)).size) for p in pngs]
result["bytes_formats"] = [Image.open(io.BytesIO(p)).format for p in pngs]
errors = {}
bad_inputs = {
    "rank": np.zeros((8, 8, 3), "float32"),
    "channels": np.zeros((1, 8, 8, 4), "float32"),
    "dtype": np.zeros((1, 8, 8, 3), "int32"),
    "empty": np.zeros((0, 8, 8, 3), "float32"),
}
for name, bad in bad_inputs.items():
    try:
        signatures["serving_default"](images=tf.constant(bad))
        errors[name] = None
    except Exception as error:
        errors[name] = str(error)
result["errors"] = errors
print(json.dumps(result))
"""


def encoded(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return np.frombuffer(buffer.getvalue(), np.uint8)


@pytest.fixture(scope="module")
def generator():
    return networks.resnet_generator(n_blocks=1, filters=8)


def test_saved_model_signatures_in_a_fresh_process(tmp_path, generator, rng):
    path = export.export_saved_model(generator, tmp_path / "saved_model" / "1")
    images = rng.uniform(-1, 1, (2, 13, 21, 3)).astype("float32")
    np.savez(
        tmp_path / "inputs.npz",
        float=images,
        uint8=rng.integers(0, 256, (1, 10, 7, 3), dtype=np.uint8),
        png=encoded(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), "PNG"),
        jpeg=encoded(rng.integers(0, 256, (30, 9, 3), dtype=np.uint8), "JPEG"),
    )
    run = subprocess.run(
        [sys.executable, "-c", SIGNATURE_CHECKS, str(path), str(tmp_path / "inputs.npz")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(result["float"]), translate_images(generator, images), atol=1e-5)
    assert result["uint8_dtype"] == "uint8" and result["uint8_shape"] == [1, 10, 7, 3]
    assert result["bytes_sizes"] == [[23, 17], [9, 30]] and result["bytes_formats"] == ["PNG", "PNG"]
    errors = result["errors"]
    assert "images must be NHWC: (batch, height, width, 3); got another rank" in errors["rank"]
    assert "got another channel count" in errors["channels"]
    assert "expected to be a float tensor but is a int32 tensor" in errors["dtype"]
    assert "with batch >= 1; got an empty batch" in errors["empty"] and "MirrorPad" not in errors["empty"]


def test_the_saved_model_lists_its_signatures(tmp_path, generator):
    # What `saved_model_cli show --all` prints, read in this process.
    loaded = tf.saved_model.load(str(export.export_saved_model(generator, tmp_path / "1")))
    inputs = {name: set(f.structured_input_signature[1]) for name, f in loaded.signatures.items()}
    outputs = {name: set(f.structured_outputs) for name, f in loaded.signatures.items()}
    assert inputs == {"serving_default": {"images"}, "uint8": {"images"}, "bytes": {"encoded_images"}}
    assert outputs["serving_default"] == {"translated"} and "translated_png_bytes" in outputs["bytes"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, generator):
    """`(OUT, report)` of one export of every format and variant, verified in a fresh process."""
    out = tmp_path_factory.mktemp("exported")
    samples = export.sample_images(generator, size=48, count=3)
    formats = ("saved_model", "tflite", "onnx")
    return out, export.export(generator, out, formats, export.TFLITE_VARIANTS, samples=samples)


def test_every_tflite_variant_runs_with_parity(exported):
    tmp_path, report = exported
    by_variant = {(a["format"], a["variant"]): a for a in report["artifacts"]}
    assert by_variant[("saved_model", "float32")]["max_abs_error"] < 1e-5
    assert by_variant[("tflite", "float32")]["max_abs_error"] < 1e-4
    for variant in ("float16", "dynamic", "int8"):
        artifact = by_variant[("tflite", variant)]
        assert "error" not in artifact
        assert np.isfinite(artifact["psnr_db"]) and artifact["psnr_db"] > 15, (variant, artifact["psnr_db"])
        assert artifact["size_bytes"] < by_variant[("tflite", "float32")]["size_bytes"]
        assert (tmp_path / f"generator_{variant}.tflite").exists()
    assert by_variant[("saved_model", "float32")]["signatures"] == ["bytes", "serving_default", "uint8"]
    assert by_variant[("saved_model", "float32")]["max_pixels"] == 2048 * 2048
    assert "TRANSPOSE_CONV" in by_variant[("tflite", "float32")]["ops"]
    assert "MEAN" in by_variant[("tflite", "float32")]["float_ops"]
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert saved["samples"] == [[48, 48, 3], [42, 58, 3], [48, 48, 3]]
    assert saved["keras_latency_ms_per_image"] > 0


def test_onnx_runs_at_any_batch_height_and_width(exported, generator, rng):
    import onnxruntime

    out, report = exported
    (artifact,) = [a for a in report["artifacts"] if a["format"] == "onnx"]
    assert artifact["path"] == "generator.onnx" and artifact["variant"] == "float32"
    assert artifact["max_abs_error"] < 1e-4 and artifact["psnr_db"] > 80 and artifact["latency_ms_per_image"] > 0
    assert artifact["input_shape"] == ["batch", "height", "width", 3] and artifact["opset"] >= 13
    assert artifact["providers"][-1] == "CPUExecutionProvider" and "Conv" in artifact["ops"]
    assert json.loads((out / "export_report.json").read_text())["artifacts"] == report["artifacts"]
    session = onnxruntime.InferenceSession(str(out / "generator.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["translated"]
    # Sides that are not multiples of 4 are reflect-padded and cropped back inside the graph.
    for shape in ((2, 32, 32, 3), (3, 46, 38, 3)):
        images = rng.uniform(-1, 1, shape).astype("float32")
        (outputs,) = session.run(None, {"images": images})
        assert outputs.shape == shape
        np.testing.assert_allclose(outputs, translate_images(generator, images), atol=1e-5)
    # translate.py's loader (evaluate.py --model, export.py --eval-real) takes it as the other exports.
    translator = translation.load_translator(out / "generator.onnx")
    assert (translator.kind, translator.input_channels, translator.output_channels) == ("onnx", 3, 3)
    np.testing.assert_allclose(translator(images), outputs, atol=1e-6)
    (out / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"broken.onnx is not a model onnxruntime can load"):
        translation.load_translator(out / "broken.onnx")


@pytest.mark.parametrize("package", export.ONNX_PACKAGES)
def test_onnx_without_its_packages_says_what_to_install(package, tmp_path, model_file, generator, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # what `import package` meets when it is not installed
    with pytest.raises(export.MissingPackage, match=f"needs the {package} package"):
        export.export(generator, tmp_path / "library", ("onnx",))
    with pytest.raises(SystemExit) as exit_:
        export_cli.main(["--model", str(model_file), "--out", str(tmp_path / "out"), "--onnx"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and f"error: argument --onnx: the ONNX export needs the {package} package (" in error
    assert error.endswith("pip install 'cyclegan-keras[onnx]', or pip install tf2onnx onnx onnxruntime")
    assert not (tmp_path / "out").exists() and not (tmp_path / "library").exists()


def test_int8_unet_with_instance_norm_allocates_and_runs(tmp_path, rng):
    unet = networks.unet_generator(num_downs=5, filters=8)
    calibration = [rng.uniform(-1, 1, (32, 32, 3)).astype("float32") for _ in range(4)]
    samples = [rng.uniform(-1, 1, (40, 24, 3)).astype("float32")]
    report = export.export(unet, tmp_path, ("tflite",), ("int8",), representative=calibration, samples=samples)
    artifact = report["artifacts"][0]
    assert "error" not in artifact and np.isfinite(artifact["psnr_db"])


def test_bad_export_requests_are_named(tmp_path, generator, capsys):
    with pytest.raises(ValueError, match="representative images"):
        export.export_tflite(generator, tmp_path / "x.tflite", "int8")
    with pytest.raises(ValueError, match="variant"):
        export.export_tflite(generator, tmp_path / "x.tflite", "int4")
    with pytest.raises(SystemExit) as exit_:
        export_cli.main(["--model", str(tmp_path / "missing.keras"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "argument --model: " in capsys.readouterr().err


def test_a_failed_export_leaves_the_output_folder_as_it_was(tmp_path, generator, monkeypatch):
    def fails_after_writing(generator, path, **settings):  # a failure midway, with files already written
        Path(path).mkdir(parents=True)
        (Path(path) / "saved_model.pb").write_text("half an export")
        raise export.ExportError("verification failed")

    monkeypatch.setattr(export, "export_saved_model", fails_after_writing)
    samples = export.sample_images(generator, size=16, count=1)
    for out in (tmp_path / "new" / "out", tmp_path / "existing"):
        if out.name == "existing":
            (out / "saved_model" / "1").mkdir(parents=True)
            (out / "saved_model" / "1" / "saved_model.pb").write_text("the previous export")
            files.Manifest(out).finish(["saved_model/1"])  # as that export recorded it
        with pytest.raises(export.ExportError, match="verification failed"):
            export.export(generator, out, ("saved_model",), samples=samples, save_generator=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no new/, no staging folder
    assert [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob("*")) if p.is_file()] == [
        f"existing/{files.Manifest.NAME}",
        "existing/saved_model/1/saved_model.pb",
    ]
    assert (tmp_path / "existing" / "saved_model" / "1" / "saved_model.pb").read_text() == "the previous export"


def test_cli_exports_a_trained_cyclegan(tmp_path, capsys):
    from conftest import tiny_cyclegan

    model = tiny_cyclegan()
    model.compile()
    model.build((None, 32, 32, 3))
    model.save(tmp_path / "model.keras")
    # An existing TF Serving folder: version 2 stays, version 1 is replaced whole.
    (tmp_path / "out" / "saved_model" / "2").mkdir(parents=True)
    (tmp_path / "out" / "saved_model" / "2" / "keep.txt").write_text("version 2")
    (tmp_path / "out" / "saved_model" / "1").mkdir()
    (tmp_path / "out" / "saved_model" / "1" / "stale.txt").write_text("old version 1")
    files.Manifest(tmp_path / "out").finish(["saved_model/1"])  # written by an earlier export
    folder = tmp_path / "representative"
    folder.mkdir()
    # Textured: on a one-colour image instance norm divides rounding noise by sqrt(eps), and the
    # runtimes' reductions round differently (measured: ONNX Runtime 1.2 away from Keras, README).
    for i in range(3):
        image = np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
    code = export_cli.main(
        [
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--direction",
            "b2a",
            "--tflite-quantization",
            "int8",
            "--representative",
            str(folder),
            "--sample-size",
            "32",
            "--onnx",
        ]
    )
    captured = capsys.readouterr()
    output = captured.out
    assert code == 0, captured.out + captured.err
    assert "saved_model/1" in output and "generator_int8.tflite" in output and "generator.onnx [float32]" in output
    assert (tmp_path / "out" / "saved_model" / "1" / "saved_model.pb").exists()
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert report["samples"] == [[32, 32, 3], [32, 32, 3]]
    assert [a["format"] for a in report["artifacts"]] == ["saved_model", "tflite", "onnx"]
    assert report["artifacts"][-1]["max_abs_error"] < 1e-4
    assert (tmp_path / "out" / "saved_model" / "2" / "keep.txt").read_text() == "version 2"
    assert not (tmp_path / "out" / "saved_model" / "1" / "stale.txt").exists()
    hidden = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert hidden == [files.Manifest.NAME]  # no staging folder, no lock left
    # The same command again may replace these files (export checks this before any work) ...
    outputs = export._outputs(("saved_model", "tflite", "onnx"), ("int8",), save_generator=False)
    assert "generator.onnx" in outputs
    files.Manifest(tmp_path / "out").check(outputs)
    # ... but not once the user changed one.
    (tmp_path / "out" / "export_report.json").write_text("{}")
    with pytest.raises(files.ForeignFile, match="export_report.json"):
        files.Manifest(tmp_path / "out").check(outputs)
