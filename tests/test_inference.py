import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from cyclegan_keras import data, inference, networks, translation
from cyclegan_keras.cli import translate

ROOT = Path(__file__).resolve().parent.parent


def run(argv, capsys):
    return run_cli(translate.main, argv, capsys)


def fingerprint(folder):
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def save(path, array, mode=None):
    Image.fromarray(array, mode).save(path)
    return path


@pytest.fixture
def originals(tmp_path, rng):
    """A folder of originals a translation must never touch: RGBA, 16-bit and JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    save(folder / "rgba.png", rng.integers(0, 256, (20, 28, 4), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 65536, (24, 16), dtype=np.uint16)).save(folder / "deep.png")
    save(folder / "photo.jpg", rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    with Image.open(folder / "deep.png") as image:
        assert image.mode.startswith("I")  # really 16 bits per pixel
    return folder


def test_output_names_are_distinct_and_stable():
    root = Path("in")
    paths = [root / "a.jpg", root / "a.png", root / "a_1.png", root / "x" / "b.png", root / "x__b.png", root / "B.png"]
    paths.append(root / "b.png")
    names = translation.output_names([str(p) for p in paths], root)
    assert names == ["a", "a_2", "a_1", "x__b", "x__b_1", "B", "b_1"]
    assert len({n.casefold() for n in names}) == len(names)


def test_every_input_gets_its_own_output_and_the_count_is_true(tmp_path, model_file, rng, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.jpg", "a.png", "a_1.png"):
        save(inputs / name, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    code, output = run(["--model", model_file, "--input", inputs, "--out", tmp_path / "out"], capsys)
    assert code == 0, output
    translations = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert translations == ["a.png", "a_1.png", "a_2.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "inputs").glob("*.png")) == translations
    assert "Wrote 3 image(s)" in output
    # a_1.png keeps its own name; the second "a" gets the next free one.
    kept = np.asarray(Image.open(tmp_path / "out" / "inputs" / "a_1.png"))
    np.testing.assert_array_equal(kept, np.asarray(Image.open(inputs / "a_1.png")))


@pytest.mark.parametrize(
    "input_spec, out",
    [
        ("{d}", "{d}"),  # the case: translations over the originals
        ("{d}", "{d}/translated"),  # inside: read back as inputs next time
        ("{d}/*.png", "{d}"),  # rgba.png's translation would be rgba.png
        ("{d}/rgba.png", "{d}"),
    ],
)
def test_outputs_never_overwrite_inputs(tmp_path, originals, model_file, capsys, input_spec, out):
    before = fingerprint(tmp_path)
    input_spec, out = input_spec.format(d=originals), out.format(d=originals)
    code, output = run(["--model", model_file, "--input", input_spec, "--out", out], capsys)
    assert code == 2, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "argument --out:" in errors[0], output
    assert fingerprint(tmp_path) == before  # every original byte-identical, nothing written
    assert "Traceback" not in output


def test_pngs_beside_jpegs_are_allowed_and_replace_only_their_own(originals, model_file, capsys):
    before = fingerprint(originals)
    argv = ["--model", model_file, "--input", f"{originals}/*.jpg", "--out", originals]
    code, output = run(argv, capsys)
    assert code == 0 and "Wrote 1 image(s)" in output, output
    after = fingerprint(originals)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"photo.png", "inputs/photo.png", "index.html", ".cyclegan_keras_manifest.json"}
    # The same command again replaces what it wrote, and nothing else.
    assert run(argv, capsys)[0] == 0
    assert {k: fingerprint(originals)[k] for k in before} == before
    # A photo.png that is not its own (the user's, or one the user changed) is refused.
    (originals / "photo.png").write_bytes(b"the user's")
    code, output = run(argv, capsys)
    assert code == 2 and f"{originals / 'photo.png'} already exists and is not a translation" in output
    assert (originals / "photo.png").read_bytes() == b"the user's"


def test_translation_streams_with_bounded_memory(tmp_path, monkeypatch, capsys):
    # 14 images of two sizes in runs; at most batch_size decoded images may be held at once.
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    sizes = [(20, 28)] * 5 + [(24, 16)] * 3 + [(20, 28)] * 6
    for i, (h, w) in enumerate(sizes):
        save(inputs / f"{i:02d}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (inputs / "07b.png").write_bytes(b"not a png")  # skipped, and never counted as held
    batch_size = 2
    limit = batch_size * max(h * w * 3 for h, w in sizes)
    assert sum(h * w * 3 for h, w in sizes) > 5 * limit  # loading every image first would exceed it

    held, peak = [], [0]
    read_image, write_png = data.read_image, translation._write_png

    def counting_read(path, channels=3):
        image = read_image(path, channels)
        held.append(int(np.prod(image.shape)))
        peak[0] = max(peak[0], sum(held))
        return image

    def counting_write(path, image):
        if Path(path).parent.name != "inputs":  # a translation written: its input is released
            held.pop(0)
        return write_png(path, image)

    monkeypatch.setattr(data, "read_image", counting_read)
    monkeypatch.setattr(translation, "_write_png", counting_write)
    generator = networks.resnet_generator(n_blocks=1, filters=8)
    written, bad = translation.translate_files(generator, inputs, tmp_path / "out", batch_size, verbose=False)
    assert len(written) == len(sizes) and [p for p, _ in bad] == [str(inputs / "07b.png")]
    assert held == [] and 0 < peak[0] <= limit, (peak[0], limit)
    # Streaming changes nothing: each output is the generator's on its own image.
    for i in (0, 5, 13):
        image = np.asarray(Image.open(inputs / f"{i:02d}.png")).astype("float32") / 127.5 - 1.0
        expected = np.round((inference.translate_images(generator, image) + 1.0) * 127.5)
        output = np.asarray(Image.open(tmp_path / "out" / f"{i:02d}.png")).astype("float32")
        assert output.shape == expected.shape
        np.testing.assert_allclose(output, expected, atol=1)


def test_resize_preprocessing_matches_the_references_pil_bicubic(rng):
    # The reference's test.py: transforms.Resize((load_size, load_size), BICUBIC) on a PIL image.
    y, x = np.mgrid[0:40, 0:60]
    smooth = np.stack([127 + 100 * np.sin(x / 5.0 + y / 7.0 + c) for c in range(3)], -1).astype(np.uint8)
    for image, size in ((smooth, 24), (smooth[:17, :33], 48)):  # down- and up-scaling, non-square
        ours = translation.preprocess_for_inference(image, "resize", size).numpy()
        pil = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
        assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
        assert np.max(np.abs(ours.astype(int) - pil.astype(int))) <= 1
    unchanged = translation.preprocess_for_inference(smooth[:17, :33], "none").numpy()
    np.testing.assert_array_equal(unchanged, smooth[:17, :33])
    with pytest.raises(ValueError, match="preprocess must be one of"):
        translation.preprocess_for_inference(smooth, "crop")
    with pytest.raises(ValueError, match="load_size must be an integer >= 1"):
        translation.preprocess_for_inference(smooth, "resize", 0)


def test_translate_resize_gives_load_size_squares(tmp_path, model_file, rng, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    save(inputs / "wide.png", rng.integers(0, 256, (20, 36, 3), dtype=np.uint8))
    save(inputs / "tall.png", rng.integers(0, 256, (33, 17, 3), dtype=np.uint8))
    argv = ["--model", model_file, "--input", inputs, "--out", tmp_path / "out", "--direction", "BtoA"]
    code, output = run([*argv, "--preprocess", "resize", "--load-size", "24"], capsys)
    assert code == 0, output
    for name in ("wide", "tall"):
        assert Image.open(tmp_path / "out" / f"{name}.png").size == (24, 24)
    code, output = run([*argv, "--out", tmp_path / "native"], capsys)
    assert code == 0, output
    assert Image.open(tmp_path / "native" / "wide.png").size == (36, 20)  # default: native size


def test_load_generator_refuses_what_it_cannot_honour(tmp_path, model_file):
    generator_file = tmp_path / "generator.keras"
    networks.resnet_generator(n_blocks=1, filters=8).save(generator_file)
    assert translation.load_generator(generator_file).name == "resnet_1blocks"
    with pytest.raises(ValueError, match="holds one generator .* own direction only"):
        translation.load_generator(generator_file, "b2a")
    assert translation.load_generator(model_file, "b2a") is not None
    garbage = tmp_path / "garbage.keras"
    garbage.write_text("not a model")
    with pytest.raises(translation.ModelLoadError, match="garbage.keras is not a readable Keras model"):
        translation.load_generator(garbage)
    with pytest.raises(ValueError, match="direction must be one of"):
        translation.load_generator(model_file, "AtoB")  # Python speaks a2b/b2a; the CLIs translate


LOAD_IN_A_FRESH_PROCESS = r"""
import sys, keras
path = sys.argv[1]
try:
    keras.models.load_model(path)
    print("loaded without import")
except TypeError as error:
    print("TypeError:", str(error).split(".")[0])
import cyclegan_keras  # what the README asks for: registers the package's classes
model = keras.models.load_model(path)
print("loaded after import:", type(model).__name__)
"""


def test_plain_keras_load_model_needs_the_package_imported_first(model_file):
    # Keras imports a class's module itself only for keras packages, so the README
    # says to `import cyclegan_keras` first. This pins both halves of that sentence.
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS, str(model_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines == ["TypeError: Could not locate class 'CycleGAN'", "loaded after import: CycleGAN"]
