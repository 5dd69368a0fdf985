"""The demo page (`cyclegan-demo`): photos read and translated as translate.py does, bad uploads told in the
page, and the page itself driven in a real browser (Debian's Chromium, which .ci/run installs)."""

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from test_exif import png_declaring

from cyclegan_keras import data, demo, inference, networks, pretrained, translation
from cyclegan_keras.cli import demo as demo_cli

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def test_a_bad_upload_is_one_line_naming_it(model_file, tmp_path):
    generator = translation.load_generators(model_file)["a2b"]
    corrupt = tmp_path / "upload_1"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    with pytest.raises(demo.UploadError, match=r"^holiday\.jpg: cannot decode") as error:
        demo.translate_photo(generator, corrupt, "holiday.jpg")
    assert "\n" not in str(error.value)
    huge = png_declaring(tmp_path / "upload_2", 20000, 20000)
    with pytest.raises(demo.UploadError, match=r"^huge\.png: declares 20000x20000 pixels .* over the limit"):
        demo.translate_photo(generator, huge, "huge.png")
    photo = tmp_path / "photo.png"
    Image.fromarray(data.synthetic_images("A", 1, 64)[0]).save(photo)
    with pytest.raises(demo.UploadError, match=r"^photo\.png: a 64x64 image needs .* more than the memory budget"):
        demo.translate_photo(generator, photo, "photo.png", max_memory=2**10, tile_size=0)


def test_pretrained_serves_the_cached_generator_offline(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(tmp_path / "cache"))
    cached = pretrained.paths("horse2zebra")[2]
    cached.parent.mkdir(parents=True)
    networks.resnet_generator(n_blocks=1, filters=8).save(cached)  # as fetch() leaves it: no network needed
    served = []
    monkeypatch.setattr(demo, "launch", lambda page, host, port: served.append((page, host, port)))
    argv = ["--pretrained", "horse2zebra", "--host", "0.0.0.0", "--port", "8123", "--max-memory", "2G"]
    assert demo_cli.main(argv) == 0
    [(page, host, port)] = served
    assert (page.title, host, port) == ("horse2zebra: horse -> zebra (CycleGAN)", "0.0.0.0", 8123)
    blocks = {getattr(block, "elem_id", None) or type(block).__name__: block for block in page.blocks.values()}
    assert blocks["direction"].choices == [("A → B", "a2b")] and not blocks["direction"].visible  # no choice
    assert "the memory budget, 2.0 GiB" in blocks["Markdown"].value


def test_the_readme_s_space_app_runs_as_written(model_file, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    section = (ROOT / "README.md").read_text().split("## Try it in the browser", 1)[1].split("\n## ", 1)[0]
    [app] = [block for block in re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M) if "app.py" in block]
    shutil.copy(model_file, tmp_path / "model.keras")
    Image.fromarray(data.synthetic_images("A", 1, 32)[0]).save(tmp_path / "horse.jpg")
    monkeypatch.chdir(tmp_path)
    served = []
    monkeypatch.setattr(demo, "launch", lambda page, host, port: served.append((page.title, host, port)))
    exec(compile(app, "app.py", "exec"), {"__name__": "__main__"})
    assert served == [("horse2zebra", "0.0.0.0", 7860)]


def test_without_gradio_the_command_says_what_to_install(model_file):
    # A fresh process where `import gradio` fails: the line comes before TensorFlow is imported.
    code = (
        "import sys; sys.modules['gradio'] = None\n"
        "from cyclegan_keras.cli import demo\n"
        f"code = demo.main(['--model', {str(model_file)!r}])\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported first'\n"
        "sys.exit(code)"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (
        1,
        "",
        "error: the demo page needs Gradio: pip install cyclegan-keras[demo]\n",
    )


def test_the_demo_extra_is_in_the_dev_requirements():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["demo"]
    lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert extra and [requirement for requirement in extra if requirement not in lines] == []


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def chromium():
    """Playwright driving Debian's Chromium (never a browser Playwright downloads): the browser."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def served(model_file, monkeypatch):
    """`cyclegan-demo --model model_file --port PORT` (a free port), serving from a thread of this process.

    Returns its URL and the generators it loaded (their traced graphs then serve the test's own translations).
    """
    pytest.importorskip("gradio")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    pages, serve, loaded, load = [], demo.launch, [], translation.load_generators
    monkeypatch.setattr(demo, "launch", lambda page, host, port: pages.append(serve(page, host, port, block=False)))
    monkeypatch.setattr(translation, "load_generators", lambda path: loaded.append(load(path)) or loaded[0])
    port = free_port()
    assert demo_cli.main(["--model", str(model_file), "--port", str(port)]) == 0
    try:
        yield f"http://127.0.0.1:{port}/", loaded[0]
    finally:
        pages[0].close()


def shown_image(page, previous=None):
    """The pixels of the translation the page shows (after `previous`, the src shown before), fetched by its URL."""
    page.wait_for_function(
        "previous => { const img = document.querySelector('#translation img');"
        " return img && img.complete && img.naturalWidth > 0 && img.src !== previous; }",
        arg=previous,
    )
    source = page.locator("#translation img").get_attribute("src")
    with urllib.request.urlopen(source, timeout=30) as response:
        return source, np.asarray(Image.open(io.BytesIO(response.read())))


def assert_translation(shown, expected):
    """The page's PNG against the translation computed here: within 1 level, in at most 1% of the values.

    Not exact: the same generator on the same pixels, but TensorFlow's CPU kernels are not bit-identical
    from call to call (a reduction split over other threads), and a value within ~1e-6 of a rounding
    boundary then lands one level off: 0 or 1 value of the 3840 in a run, in about half the runs.
    A lossy PNG or WebP, a resize, the other direction or no EXIF orientation would be far outside this.
    """
    assert shown.shape == expected.shape and shown.dtype == expected.dtype == np.uint8
    difference = np.abs(shown.astype(int) - expected)
    assert difference.max() <= 1 and np.mean(difference > 0) <= 0.01, (difference.max(), np.mean(difference > 0))


def test_the_page_translates_an_upload_in_a_real_browser(chromium, served, tmp_path):
    url, generators = served
    # A portrait phone photo: stored 40 wide and 32 high, EXIF orientation 6 (shown a quarter turn clockwise).
    stored = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    photo = tmp_path / "portrait.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(photo, exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(photo)))
    assert upright.shape == (40, 32, 3)
    another = tmp_path / "another.png"
    Image.fromarray(upright[::-1]).save(another)
    expected = {
        (name, direction): data.to_uint8(inference.translate_images(generator, image / 127.5 - 1.0))
        for name, image in (("portrait", upright), ("another", upright[::-1]))
        for direction, generator in generators.items()
    }
    assert np.abs(expected["portrait", "a2b"].astype(int) - expected["portrait", "b2a"]).max() > 100
    corrupt = tmp_path / "holiday.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")

    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    page.locator("#photo input[type=file]").set_input_files(photo)
    source, shown = shown_image(page)
    assert_translation(shown, expected["portrait", "a2b"])
    page.locator("#direction").get_by_text("B → A").click()
    source, shown = shown_image(page, source)
    assert_translation(shown, expected["portrait", "b2a"])
    examples = page.locator("#examples img")
    assert examples.count() == 2 and all(examples.nth(i).evaluate("img => img.naturalWidth") == 256 for i in (0, 1))
    screenshot = tmp_path / "demo.png"
    page.screenshot(path=screenshot, full_page=True, animations="disabled")
    print(f"screenshot of the page with the translated photo: {screenshot}")

    page.locator("#photo input[type=file]").set_input_files(corrupt)
    toast = page.get_by_test_id("toast-text").filter(has_text="holiday.jpg: cannot decode")
    toast.wait_for()
    assert "\n" not in toast.inner_text()
    page.wait_for_function("() => !document.querySelector('#translation img')")  # no stale translation beside it
    page.screenshot(path=tmp_path / "bad_upload.png", full_page=True, animations="disabled")
    page.locator("#photo input[type=file]").set_input_files(another)  # the server is still there
    _, shown = shown_image(page, source)
    assert_translation(shown, expected["another", "b2a"])
    outside = [address for address in requests if not address.startswith((url, "data:", "blob:"))]
    assert outside == []  # the page loads nothing from the internet
