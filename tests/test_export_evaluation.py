"""export.py --eval-real: FID/KID of every artifact and its PSNR/SSIM/MAE against the Keras translations.

The FID network is the real architecture with random weights at 75x75 (as
in test_evaluate.py): only the reading of the weights file is replaced.
"""

import json

import keras
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

import export as export_cli
from cyclegan_keras import data, fid_inception, metrics, networks, translation


def write_images(folder, domain, count, seed):
    folder.mkdir(parents=True)
    for i, image in enumerate(data.synthetic_images(domain, count, size=24, seed=seed)):
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_eval")
    keras.utils.set_random_seed(0)
    networks.resnet_generator(n_blocks=1, filters=8).save(root / "generator.keras")
    write_images(root / "inputs", "A", 4, seed=1)
    write_images(root / "real", "B", 5, seed=2)
    write_images(root / "one", "B", 1, seed=3)
    (root / "empty").mkdir()
    return root


def run(capsys, *argv):
    return run_cli(export_cli.main, argv, capsys)


def test_every_artifact_is_scored_against_the_real_images_and_the_keras_model(tmp_path, capsys, world, small_inception):
    out = tmp_path / "out"
    code, output = run(
        capsys,
        *("--model", world / "generator.keras", "--out", out, "--sample-size", 16),
        *("--tflite-quantization", "int8", "--representative", world / "inputs"),
        *("--eval-real", world / "real", "--inception-weights", small_inception),
    )
    assert code == 0, output[-3000:]
    assert "each artifact translates the 4 images" in output and "FID/KID against the 5 images" in output
    report = json.loads((out / "export_report.json").read_text())
    evaluation = report["evaluation"]
    assert evaluation["images"] == 4 and evaluation["real_images"] == 5 and evaluation["fid_skipped"] is None
    assert evaluation["settings"]["inception_weights_sha256"] == fid_inception.sha256(small_inception)

    # Scored again here, from the files, with the same features: the same numbers.
    features = fid_inception.InceptionFeatures(fid_inception.load_inception(small_inception).model, size=75)
    real = metrics.extract_features(data.list_image_files(world / "real"), features, verbose=False)
    inputs = np.stack([metrics.read_uint8(p) for p in data.list_image_files(world / "inputs")])

    def translations(path):
        return metrics.to_uint8(translation.load_translator(path)(inputs / 127.5 - 1.0))

    keras_outputs = translations(world / "generator.keras")
    expected = metrics.score_batches([(keras_outputs, None)], features, real)
    assert evaluation["keras"]["fid"] == pytest.approx(expected["fid"], rel=1e-5)
    assert evaluation["keras"]["kid_mean"] == pytest.approx(expected["kid_mean"], rel=1e-4, abs=1e-9)
    identity = metrics.score_batches([(inputs, None)], features, real)
    assert evaluation["identity"]["fid"] == pytest.approx(identity["fid"], rel=1e-5)

    by_path = {a["path"]: a for a in report["artifacts"]}
    assert set(by_path) == {"saved_model/1", "generator_int8.tflite"}
    for path, artifact in by_path.items():
        outputs = translations(out / path)
        scores = artifact["evaluation"]
        assert scores["fid"] == pytest.approx(metrics.score_batches([(outputs, None)], features, real)["fid"], rel=1e-5)
        psnr = np.mean([metrics.psnr(o, k) for o, k in zip(outputs, keras_outputs)])
        assert scores["psnr_vs_keras"] == (pytest.approx(psnr) if np.isfinite(psnr) else "inf")
        assert scores["mae_vs_keras"] == pytest.approx(metrics.mae(outputs, keras_outputs))
        assert "ssim_vs_keras" in scores
    # The float32 SavedModel rounds to (nearly) the same bytes; int8 costs something.
    assert by_path["saved_model/1"]["evaluation"]["mae_vs_keras"] < 0.05
    assert by_path["generator_int8.tflite"]["evaluation"]["mae_vs_keras"] > 0.05

    table = output[output.index("4 image(s) vs 5 real") :].splitlines()
    assert [row.split()[0] for row in table[1:5]] == ["Keras", "saved_model/1", "generator_int8.tflite", "the"]


def test_without_weights_only_the_scores_against_keras(tmp_path, capsys, world, small_inception):
    out = tmp_path / "out"
    code, output = run(
        capsys,
        *("--model", world / "generator.keras", "--out", out, "--sample-size", 16, "--format", "saved_model"),
        *("--eval-input", world / "inputs", "--eval-real", world / "real"),
    )
    assert code == 0, output[-3000:]
    assert "no FID/KID: no FID Inception weights" in output
    report = json.loads((out / "export_report.json").read_text())
    assert report["evaluation"]["fid_skipped"] and report["evaluation"]["identity"] is None
    scores = report["artifacts"][0]["evaluation"]
    assert "fid" not in scores and scores["mae_vs_keras"] < 0.05


@pytest.mark.parametrize(
    "extra, flag, message",
    [
        (["--eval-real", "@missing", "--eval-input", "@inputs"], "--eval-real", "not found"),
        (["--eval-real", "@empty", "--eval-input", "@inputs"], "--eval-real", "holds no image files"),
        (["--eval-real", "@one", "--eval-input", "@inputs"], "--eval-real", "FID needs at least 2 images"),
        (["--eval-real", "@real", "--eval-input", "@one"], "--eval-input", "FID needs at least 2 images"),
        (["--eval-real", "@real"], "--eval-real", "--eval-input DIR (or --representative)"),
        (["--eval-input", "@inputs"], "--eval-input", "applies only with --eval-real"),
        (
            ["--eval-real", "@real", "--eval-input", "@inputs", "--inception-weights", "@inputs/0.png"],
            "--inception-weights",
            "neither a zip",
        ),
    ],
)
def test_bad_evaluation_flags_are_refused_before_the_export(tmp_path, capsys, world, extra, flag, message):
    out = tmp_path / "out"
    extra = [str(world / e[1:]) if e.startswith("@") else e for e in extra]
    code, output = run(capsys, "--model", world / "generator.keras", "--out", out, "--sample-size", 16, *extra)
    errors = [line for line in output.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and flag in errors[0] and message in errors[0], output[-2000:]
    assert not out.exists()
