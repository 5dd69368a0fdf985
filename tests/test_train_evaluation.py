"""train.py --eval-every: test-split scores in log.csv and TensorBoard, and WORKDIR/best.keras.

The FID network is the real architecture with random weights at 75x75 (as
in test_evaluate.py): only the reading of the weights file is replaced.
"""

import csv
import json
import math

import keras
import numpy as np
import pytest
from conftest import TINY_TRAIN_FLAGS, read_tensorboard, run_cli

import train
from cyclegan_keras import callbacks as cb
from cyclegan_keras import data, fid_inception, metrics, training

# train.py's resnet_6blocks with one residual block in these runs (see conftest.one_residual_block).
pytestmark = pytest.mark.usefixtures("one_residual_block")

TINY = [
    *TINY_TRAIN_FLAGS,
    *("--synthetic-count", "4", "--steps-per-epoch", "2", "--n-epochs", "2", "--n-epochs-decay", "1"),
]


def run(capsys, *argv):
    return run_cli(train.main, argv, capsys)


def read_log(workdir):
    with open(workdir / "log.csv", newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def small_test_split(monkeypatch):
    """The synthetic test split at 16 images a domain (64 by default): the scoring is the same, 4x cheaper."""
    monkeypatch.setattr(training, "SYNTHETIC_TEST_COUNT", 16)


def test_eval_every_epoch_logs_scores_and_keeps_the_best_model(
    tmp_path, capsys, small_inception, inception, eager_steps, small_test_split
):
    workdir = tmp_path / "run"
    code, output = run(capsys, *TINY, "--eval-every", 1, "--inception-weights", small_inception, "--workdir", workdir)
    assert code == 0, output[-3000:]
    line = next(x for x in output.splitlines() if x.startswith("--eval-every 1:"))
    assert "16 A images" in line and "fid, kid_mean, kid_std" in line and "psnr, ssim, mae" in line
    assert "best model by fid" in line
    assert "Evaluation baseline, the test inputs themselves: fid" in output

    rows = read_log(workdir)
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    for row in rows:
        for key in cb.Evaluation.KEYS:
            assert math.isfinite(float(row[key])), (key, row)
    fids = [float(row["fid"]) for row in rows]
    assert len(set(fids)) == 3  # the model changes between epochs, and so does its FID

    record = json.loads((workdir / "best.json").read_text())
    best_epoch = int(np.argmin(fids)) + 1
    assert record["metric"] == "fid" and record["epoch"] == best_epoch
    assert record["value"] == fids[best_epoch - 1]
    assert f"Best model by fid: epoch {best_epoch}" in output

    # best.keras is the model of that epoch: scored again now, it gives the
    # FID logged at that epoch (and it is model.keras iff that is the last).
    best = keras.models.load_model(workdir / "best.keras")
    config = training.TrainConfig(**json.loads((workdir / "config.json").read_text()))
    test_a, test_b = training.load_domains(config, "test")
    features = fid_inception.InceptionFeatures(inception, size=75)
    real = np.concatenate(
        [features(metrics.to_uint8(b)) for b in data.domain_batches(test_b, config.preprocessing("B"))]
    )
    batches = (
        (metrics.to_uint8(best.translate(b)), None) for b in data.domain_batches(test_a, config.preprocessing("A"))
    )
    rescored = metrics.score_batches(batches, features, real)
    assert rescored["images"] == 16
    assert rescored["fid"] == pytest.approx(record["value"], rel=1e-5)
    final = keras.models.load_model(workdir / "model.keras")
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(best.weights, final.weights))
    assert same == (best_epoch == 3)

    # WORKDIR/tensorboard as TensorBoard reads it: every epoch's losses, rates, time, snapshot and scores.
    logged = read_tensorboard(workdir / "tensorboard")
    epochs = [1, 2, 3]

    def at_epochs(key):
        return [(epoch, pytest.approx(float(row[key]), rel=1e-6)) for epoch, row in zip(epochs, rows)]

    for key in [k for k in rows[0] if k.endswith("loss")] + ["seconds_per_step"]:
        assert logged[f"losses/{key}" if key.endswith("loss") else key] == at_epochs(key), key
    assert logged["learning_rate/generator"] == at_epochs("lr")  # linear decay in epoch 3
    assert logged["learning_rate/discriminator"] == logged["learning_rate/generator"]
    assert len({value for _, value in logged["learning_rate/generator"]}) == 2
    assert logged["snapshots"] == [(epoch, (6 * 32, 2 * 32)) for epoch in epochs]  # 2 pairs of 6 images
    for key in ("fid", "kid_mean", "kid_std", "psnr", "ssim", "mae"):
        assert logged[f"eval/{key}"] == at_epochs(key)


def test_without_weights_psnr_against_the_true_mapping_chooses_the_best(
    tmp_path, capsys, no_inception_weights, eager_steps, small_test_split
):
    workdir = tmp_path / "run"
    code, output = run(capsys, *TINY, "--eval-every", 2, "--workdir", workdir)
    assert code == 0, output[-3000:]
    line = next(x for x in output.splitlines() if x.startswith("--eval-every 2:"))
    assert "no FID/KID: no Inception weights" in line and "best model by psnr" in line

    rows = read_log(workdir)
    # Epoch 1 is not evaluated, 2 is (every 2nd) and 3 is (the last); the
    # columns exist from the first row on.
    assert all(math.isnan(float(rows[0][key])) for key in cb.Evaluation.KEYS)
    for row in rows[1:]:
        assert all(math.isfinite(float(row[key])) for key in ("psnr", "ssim", "mae"))
        assert all(math.isnan(float(row[key])) for key in ("fid", "kid_mean", "kid_std"))
    record = json.loads((workdir / "best.json").read_text())
    psnrs = {int(row["epoch"]): float(row["psnr"]) for row in rows[1:]}
    assert record["metric"] == "psnr" and record["epoch"] == max(psnrs, key=psnrs.get)
    assert (workdir / "best.keras").exists()
    # The truth is the synthetic dataset's true mapping of each test input,
    # preprocessed as for the snapshots: the baseline (the input itself)
    # scored by hand against it gives the recorded baseline.
    config = training.TrainConfig(**json.loads((workdir / "config.json").read_text()))
    test_a, _ = training.load_domains(config, "test")
    inputs = metrics.to_uint8(data.domain_images(test_a, config.preprocessing("A")))
    truth = data.synthetic_mapping(inputs)
    assert record["baseline"]["psnr"] == pytest.approx(np.mean([metrics.psnr(x, t) for x, t in zip(inputs, truth)]))
    assert record["baseline"]["mae"] == pytest.approx(metrics.mae(inputs, truth))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval-every", "-1"], "argument --eval-every: must be an integer >= 0"),
        (
            ["--eval-every", "1", "--inception-weights", "/no/such/weights.pth"],
            "argument --inception-weights: /no/such/weights.pth not found",
        ),
    ],
)
def test_bad_evaluation_settings_are_refused_before_anything_is_written(
    tmp_path, capsys, no_inception_weights, argv, message
):
    code, output = run(capsys, *argv, "--workdir", tmp_path / "run")
    errors = [x for x in output.splitlines() if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], output
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_keeps_a_better_recorded_best_and_old_configs_resume(tmp_path, capsys):
    from conftest import tiny_cyclegan

    model = tiny_cyclegan()
    model.compile()
    model.build((None, 32, 32, 3))
    images = data.synthetic_images("A", 3, size=16, seed=0).astype("float32") / 127.5 - 1.0

    def evaluation():
        callback = cb.Evaluation(
            1,
            lambda: [images],
            truth_fn=lambda batch: data.synthetic_mapping(metrics.to_uint8(batch)),
            best_path=tmp_path / "best.keras",
            final_epoch=5,
        )
        callback.set_model(model)
        return callback

    first = evaluation()
    logs = {}
    first.on_epoch_end(0, logs)
    assert set(cb.Evaluation.KEYS) <= set(logs) and math.isnan(logs["fid"]) and math.isfinite(logs["psnr"])
    record = json.loads((tmp_path / "best.json").read_text())
    assert record["epoch"] == 1 and record["value"] == logs["psnr"]

    # A resumed run reads the record: a worse (lower) PSNR does not replace it.
    record["value"] = logs["psnr"] + 100
    (tmp_path / "best.json").write_text(json.dumps(record))
    stamp = (tmp_path / "best.keras").stat().st_mtime_ns
    second = evaluation()
    second.on_epoch_end(1, {})
    assert (tmp_path / "best.keras").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 1
    # Measured another way (here: another metric), the record is not compared with.
    record["basis"] = {"metric": "fid", "inception_weights_sha256": "another"}
    (tmp_path / "best.json").write_text(json.dumps(record))
    third = evaluation()
    assert "was chosen by another measure" in capsys.readouterr().out
    third.on_epoch_end(2, {})
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 3

    # A run begun before eval_every existed has no such key in config.json: it resumes.
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    config = training.make_config()
    saved = {k: v for k, v in json.loads(json.dumps(training.dataclasses.asdict(config))).items()}
    del saved["eval_every"], saved["inception_weights"]
    (workdir / "config.json").write_text(json.dumps(saved))
    (workdir / "model.keras").write_bytes(b"started")
    training.check_workdir(config, workdir, write=False)  # no ConfigError
    with pytest.raises(training.ConfigError, match="eval_every: 0 -> 2"):
        training.check_workdir(training.make_config(eval_every=2), workdir, write=False)
