"""The README's "Use it from Python" section, run as written (tiny sizes) so it cannot rot."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Use it from Python"
SIZES = "load_size, crop_size, n_blocks, filters, epochs = "
TINY_SIZES = SIZES + "36, 32, 1, 8, 2"


def section_code():
    text = README.read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", body, flags=re.S | re.M)
    assert len(blocks) >= 6, "expected the build, compile, data, fit, load and export blocks"
    code = "\n".join(blocks)
    sizes = [line for line in code.splitlines() if line.startswith(SIZES)]
    assert len(sizes) == 1, f"expected one line starting with {SIZES!r}"
    return code.replace(sizes[0], TINY_SIZES)


def write_jpegs(folder, count, seed):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i}.jpg")


@pytest.fixture
def horse2zebra(tmp_path, monkeypatch):
    write_jpegs(tmp_path / "datasets/horse2zebra/trainA", 3, seed=0)
    write_jpegs(tmp_path / "datasets/horse2zebra/trainB", 4, seed=1)
    # The README reads trainA/horse_0.jpg.
    (tmp_path / "datasets/horse2zebra/trainA/0.jpg").rename(tmp_path / "datasets/horse2zebra/trainA/horse_0.jpg")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_use_it_from_python_runs_as_written(horse2zebra):
    namespace = {"__name__": "readme"}
    exec(compile(section_code(), str(README), "exec"), namespace)

    run = horse2zebra / "run"
    history = namespace["history"].history
    assert len(history["cycle_loss"]) == 2 and all(np.isfinite(history["cycle_loss"]))
    assert namespace["steps_per_epoch"] == 3  # the smaller domain
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert (run / "checkpoints" / "checkpoint.json").exists()
    model = namespace["model"]
    assert type(model).__name__ == "CycleGAN" and int(model.generator_optimizer.iterations) == 6
    # The schedule of the README: 2 epochs, the second one decayed.
    assert float(model.generator_optimizer.learning_rate) == pytest.approx(2e-4 * (1 - 1 / 2))
    zebra = np.asarray(Image.open(horse2zebra / "zebra.png"))
    assert zebra.shape == (40, 48, 3)  # the input's own size
    report = namespace["report"]
    assert {artifact["path"] for artifact in report["artifacts"]} == {"saved_model/1", "generator_float32.tflite"}
    assert all(artifact["max_abs_error"] < 1e-4 for artifact in report["artifacts"])
    assert (run / "exported" / "saved_model" / "1" / "saved_model.pb").exists()
