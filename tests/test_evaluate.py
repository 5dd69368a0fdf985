import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cyclegan_keras import data, export, fid_inception, networks
from cyclegan_keras.cli import evaluate as evaluate_cli
from cyclegan_keras.cli import translate as translate_cli

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16


def write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(np.asarray(image, np.uint8)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Synthetic A/B test images, and the true B of each A (same names) as ground truth."""
    root = tmp_path_factory.mktemp("data")
    images_a = data.synthetic_images("A", 3, size=SIZE, seed=7)
    for i, image in enumerate(images_a):
        write_png(root / "testA" / f"im{i}.png", image)
        write_png(root / "truth" / f"im{i}.png", data.synthetic_mapping(image))
    for i, image in enumerate(data.synthetic_images("B", 4, size=SIZE, seed=8)):
        write_png(root / "testB" / f"b{i}.png", image)
    return root


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    generator = networks.resnet_generator(n_blocks=1, filters=8)
    path = tmp_path_factory.mktemp("model") / "generator.keras"
    generator.save(path)
    return path


def run(capsys, *argv):
    try:
        code = evaluate_cli.main([*map(str, argv), "--quiet"])
    except SystemExit as exit:  # argparse's refusals
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    return err


def test_help_does_not_import_tensorflow():
    code = "import sys; from cyclegan_keras.cli import evaluate; evaluate.parser(); print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_model_end_to_end_equals_scoring_its_written_translations(
    capsys, tmp_path, dataset, generator_file, small_inception
):
    report = tmp_path / "scores.json"
    code, out, err = run(
        capsys,
        *("--model", generator_file, "--input", dataset / "testA", "--real", dataset / "testB"),
        *("--truth", dataset / "truth", "--inception-weights", small_inception, "--json", report),
        *("--kid-subsets", 10),
    )
    assert code == 0, err
    scores = json.loads(report.read_text())
    for key in ("fid", "kid_mean", "kid_std", "psnr", "ssim", "mae"):
        assert isinstance(scores[key], float) and isinstance(scores["identity"][key], float), key
    settings = scores["settings"]
    assert settings["images"] == 3 and settings["real_images"] == 4 and settings["kid_subset_size"] == 3
    assert settings["resize_mode"] == "pytorch-fid" and settings["model_kind"] == "keras"
    assert settings["inception_weights_sha256"] == fid_inception.sha256(small_inception)
    assert "FID" in out and "identity (input)" in out and "PSNR (dB)" in out

    # translate.py writes PNGs; scoring them as --fake (with --input for the
    # baseline) must give the same numbers: same rounding, same pairing.
    assert (
        translate_cli.main(
            ["--model", str(generator_file), "--input", str(dataset / "testA"), "--out", str(tmp_path / "out")]
        )
        == 0
    )
    (tmp_path / "out" / "index.html").unlink()
    for path in (tmp_path / "out" / "inputs").iterdir():
        path.unlink()
    (tmp_path / "out" / "inputs").rmdir()
    capsys.readouterr()
    folder_report = tmp_path / "folder.json"
    code, _, err = run(
        capsys,
        *("--fake", tmp_path / "out", "--input", dataset / "testA", "--real", dataset / "testB"),
        *("--truth", dataset / "truth", "--inception-weights", small_inception, "--json", folder_report),
        *("--kid-subsets", 10),
    )
    assert code == 0, err
    folder = json.loads(folder_report.read_text())
    for key in ("fid", "kid_mean", "psnr", "ssim", "mae"):
        assert folder[key] == pytest.approx(scores[key], rel=1e-6, abs=1e-9), key
        assert folder["identity"][key] == pytest.approx(scores["identity"][key], rel=1e-6, abs=1e-9), key


def test_fake_folders_at_299_with_clean_resize(capsys, tmp_path, dataset, inception, monkeypatch):
    # The real input size (299) and loader path except the file's content.
    monkeypatch.setattr(
        fid_inception,
        "load_inception",
        lambda path, mode: fid_inception.InceptionFeatures(inception, mode, weights_path=path),
    )
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    monkeypatch.setenv(fid_inception.WEIGHTS_ENV_VAR, str(weights))
    report = tmp_path / "r.json"
    code, out, err = run(
        capsys,
        *("--fake", dataset / "testA", "--real", dataset / "testB", "--resize-mode", "clean", "--json", report),
        *("--kid-subsets", 3, "--kid-subset-size", 2, "--batch-size", 2),
    )
    assert code == 0, err
    scores = json.loads(report.read_text())
    assert scores["fid"] > 0 and scores["settings"]["input_size"] == 299
    assert scores["settings"]["resize_mode"] == "clean" and scores["settings"]["kid_subset_size"] == 2
    assert "identity" not in scores and "psnr" not in scores


@pytest.fixture(scope="module")
def exported(tmp_path_factory, generator_file):
    import keras

    generator = keras.models.load_model(generator_file)
    out = tmp_path_factory.mktemp("exported")
    export.export_saved_model(generator, out / "saved_model" / "1")
    export.export_tflite(generator, out / "generator_float32.tflite")
    return out


@pytest.mark.parametrize("form", ["saved_model_dir", "export_dir", "tflite"])
def test_exported_forms_score_like_the_keras_model(capsys, tmp_path, dataset, generator_file, exported, form):
    model = {
        "saved_model_dir": exported / "saved_model" / "1",
        "export_dir": exported,
        "tflite": exported / "generator_float32.tflite",
    }[form]
    reports = {}
    for name, path in (("keras", generator_file), (form, model)):
        reports[name] = tmp_path / f"{name}.json"
        code, _, err = run(
            capsys,
            *("--model", path, "--input", dataset / "testA", "--truth", dataset / "truth", "--json", reports[name]),
        )
        assert code == 0, err
    keras_scores, scores = (json.loads(reports[n].read_text()) for n in ("keras", form))
    assert scores["settings"]["model_kind"] == ("tflite" if form == "tflite" else "saved_model")
    assert scores["mae"] == pytest.approx(keras_scores["mae"], abs=0.05)  # float32 exports: rounding only
    assert scores["identity"]["mae"] == keras_scores["identity"]["mae"]


def test_without_weights_the_weight_free_scores_are_computed(capsys, tmp_path, dataset, small_inception):
    code, out, err = run(
        capsys,
        "--fake",
        dataset / "testA",
        "--real",
        dataset / "testB",
        "--truth",
        dataset / "truth",
        "--json",
        tmp_path / "s.json",
    )
    assert code == 0, err
    assert "FID/KID skipped: no FID Inception weights found" in out and "pt_inception-2015-12-05" in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["fid"] is None and scores["fid_skipped"] and scores["mae"] > 0


def test_label_scores_end_to_end(capsys, tmp_path):
    palette = np.array([(128, 64, 128), (70, 130, 180), (0, 0, 142)])  # Cityscapes' road, sky, car
    rng = np.random.default_rng(0)
    for i in range(2):
        labels = rng.integers(0, 3, (SIZE, SIZE))
        truth = palette[labels]
        output = palette[
            np.where(np.arange(SIZE)[None, :] < SIZE // 2, labels, (labels + 1) % 3)
        ]  # left half right, right half wrong
        write_png(tmp_path / "truth" / f"f{i}.png", truth)
        write_png(tmp_path / "fake" / f"f{i}.png", np.clip(output + rng.integers(-9, 10, output.shape), 0, 255))
    code, out, err = run(
        capsys,
        "--fake",
        tmp_path / "fake",
        "--truth",
        tmp_path / "truth",
        "--labels",
        "cityscapes",
        "--json",
        tmp_path / "l.json",
    )
    assert code == 0, err
    scores = json.loads((tmp_path / "l.json").read_text())
    assert scores["pixel_accuracy"] == pytest.approx(0.5)
    assert scores["settings"]["palette"] == "cityscapes" and "class IoU" in out
    # the same with a palette file of those three classes only
    (tmp_path / "p.txt").write_text("128 64 128 road\n70 130 180 sky\n0 0 142 car\n")
    code, _, err = run(
        capsys,
        "--fake",
        tmp_path / "fake",
        "--truth",
        tmp_path / "truth",
        "--labels",
        tmp_path / "p.txt",
        "--json",
        tmp_path / "p.json",
    )
    assert code == 0, err
    three = json.loads((tmp_path / "p.json").read_text())
    assert three["pixel_accuracy"] == pytest.approx(0.5)
    assert three["class_iou"] > scores["class_iou"]  # Cityscapes' 16 absent classes count as 0


def bad(capsys, *argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    return one_error_line(err)


def test_bad_inputs_give_one_line_and_exit_2(capsys, tmp_path, dataset, generator_file, small_inception):
    a, b, truth = dataset / "testA", dataset / "testB", dataset / "truth"
    weights = ("--inception-weights", small_inception)
    assert "releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth" in bad(
        capsys, "--fake", a, "--real", b, "--inception-weights", tmp_path / "nope.pth"
    )
    assert "FID and KID need the FID Inception weights" in bad(capsys, "--fake", a, "--real", b)
    (tmp_path / "empty").mkdir()
    assert "holds no image files" in bad(capsys, "--fake", tmp_path / "empty", "--real", b, *weights)
    assert "missing not found" in bad(capsys, "--fake", tmp_path / "missing", "--real", b, *weights)
    write_png(tmp_path / "one" / "x.png", np.zeros((SIZE, SIZE, 3)))
    assert "argument --real: FID needs at least 2 images" in bad(
        capsys, "--fake", a, "--real", tmp_path / "one", *weights
    )
    assert "at least 2 generated images" in bad(capsys, "--fake", tmp_path / "one", "--real", b, *weights)
    for i in range(2):
        write_png(tmp_path / "gray" / f"im{i}.png", np.zeros((SIZE, SIZE, 1)))
    assert "grayscale (1 channel) but the --real images are colour" in bad(
        capsys, "--fake", tmp_path / "gray", "--real", b, *weights
    )
    assert "this truth does not use this palette" in bad(
        capsys, "--fake", a, "--truth", truth, "--labels", "cityscapes"
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "im0.png").write_bytes(b"not a png")
    assert "broken/im0.png: cannot decode" in bad(capsys, "--fake", tmp_path / "broken", "--truth", truth)
    assert "--model needs --input" in bad(capsys, "--model", generator_file, "--real", b)
    assert "nothing to score" in bad(capsys, "--fake", a)
    assert "--labels needs --truth" in bad(capsys, "--fake", a, "--real", b, "--labels", "cityscapes")
    assert "argument --batch-size: must be an integer >= 1" in bad(
        capsys, "--fake", a, "--truth", truth, "--batch-size", "0"
    )
    assert "argument --kid-subset-size: must be an integer >= 2" in bad(
        capsys, "--fake", a, "--real", b, "--kid-subset-size", "1"
    )
    assert "--resize-mode: invalid choice: 'bicubic'" in bad(
        capsys, "--fake", a, "--real", b, "--resize-mode", "bicubic"
    )
    assert "one of the arguments --model --fake --pretrained is required" in bad(capsys, "--real", b)
    assert "nope.keras not found" in bad(capsys, "--model", tmp_path / "nope.keras", "--input", a, "--truth", truth)
    (tmp_path / "notes.txt").write_text("x")
    assert "is not a .keras file, a work directory" in bad(
        capsys, "--model", tmp_path / "notes.txt", "--input", a, "--truth", truth
    )
    assert "holds neither model.keras" in bad(capsys, "--model", tmp_path / "empty", "--input", a, "--truth", truth)
    assert "p.txt not found" in bad(capsys, "--fake", a, "--truth", truth, "--labels", tmp_path / "p.txt")


def test_a_file_that_is_not_fid_weights_is_refused(capsys, dataset):
    # The real loader: the file is read (and refused) before any network is built.
    generator_pth = ROOT / "tests" / "fixtures" / "resnet_tiny.pth"
    message = bad(
        capsys, "--fake", dataset / "testA", "--real", dataset / "testB", "--inception-weights", generator_pth
    )
    assert "Not FID Inception weights: 'model.1.weight'" in message
