"""The package as a library: backend check, lazy import, version, install metadata."""

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import cyclegan_keras

ROOT = Path(__file__).resolve().parent.parent
CLI_NAMES = sorted(p.stem for p in (ROOT / "cyclegan_keras" / "cli").glob("*.py") if p.stem not in ("__init__", "args"))


def python(code, **env):
    """Runs `code` in a fresh interpreter with the checkout importable and `env` on top of ours."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    for name, value in env.items():
        if value is None:
            del environment[name]
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_another_backend_fails_at_import_with_one_message(backend):
    run = python(
        "import sys\n"
        "try:\n"
        "    import cyclegan_keras\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, 'keras' in sys.modules, str(error), sep='|')\n",
        KERAS_BACKEND=backend,
    )
    assert run.returncode == 0, run.stderr
    name, keras_imported, message = run.stdout.strip().split("|")
    assert name == "BackendError" and keras_imported == "False"  # failed before Keras tried to load jax/torch
    assert message == (
        f"cyclegan_keras needs Keras's TensorFlow backend, but KERAS_BACKEND={backend!r}. Set "
        "KERAS_BACKEND=tensorflow before Python starts (e.g. `export KERAS_BACKEND=tensorflow`), or in "
        "os.environ before the first `import keras`."
    )


def test_the_cli_refuses_another_backend_before_keras_loads():
    run = subprocess.run(
        [sys.executable, str(ROOT / "translate.py"), "--help"],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and run.stdout == ""
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("cyclegan_keras.BackendError: cyclegan_keras needs Keras's TensorFlow backend")
    assert "ModuleNotFoundError" not in run.stderr


def test_keras_already_imported_with_another_backend_is_refused():
    # jax and torch are not installed: a stand-in for a Keras that runs on one.
    run = python(
        "import sys, types\n"
        "sys.modules['keras'] = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: 'jax'))\n"
        "try:\n"
        "    import cyclegan_keras\n"
        "except ImportError as error:\n"
        "    print(error)\n",
        KERAS_BACKEND="tensorflow",
    )
    assert run.returncode == 0, run.stderr
    assert "Keras was imported with the 'jax' backend" in run.stdout


def test_keras_already_on_tensorflow_is_what_counts():
    # Keras fixes its backend when imported; a later KERAS_BACKEND change does not matter.
    run = python(
        "import os, keras\nos.environ['KERAS_BACKEND'] = 'jax'\nimport cyclegan_keras\nprint('imported')",
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    assert run.returncode == 0 and run.stdout.strip() == "imported", run.stderr[-2000:]


@pytest.mark.parametrize("value", [None, ""])
def test_unset_backend_becomes_tensorflow_and_import_loads_nothing(value):
    run = python(
        "import os, sys, cyclegan_keras\n"
        "print(os.environ['KERAS_BACKEND'], [m for m in ('keras', 'tensorflow') if m in sys.modules])",
        KERAS_BACKEND=value,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "tensorflow []"


def test_public_names_load_on_first_use():
    from cyclegan_keras import layers, model

    assert cyclegan_keras.CycleGAN is model.CycleGAN
    assert cyclegan_keras.InstanceNormalization is layers.InstanceNormalization
    assert cyclegan_keras.data is importlib.import_module("cyclegan_keras.data")
    assert {"CycleGAN", "ImagePool", "data", "export", "cli"} <= set(dir(cyclegan_keras))
    with pytest.raises(AttributeError, match="has no attribute 'Nonexistent'"):
        cyclegan_keras.Nonexistent


def test_version_is_one_pep440_string_that_pyproject_reads():
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", cyclegan_keras.__version__)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cyclegan_keras.__version__"}


def test_dependencies_are_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "dependencies" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    # setuptools reads each line as a requirement: no pip options, no -r.
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        assert not line.strip().startswith("-"), line


def test_the_onnx_extra_is_in_the_dev_requirements():
    # CI installs requirements-dev.txt, so the ONNX tests run with exactly the extra's lines.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dev = {line.strip() for line in (ROOT / "requirements-dev.txt").read_text().splitlines()}
    from cyclegan_keras.config import ONNX_PACKAGES  # what `export.py --onnx` checks for

    assert {re.split("[=<>]", requirement)[0] for requirement in extras["onnx"]} == set(ONNX_PACKAGES)
    assert set(extras["onnx"]) <= dev


def test_every_cli_is_a_console_script_and_a_shim():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"cyclegan-{name}": f"cyclegan_keras.cli.{name}:main" for name in CLI_NAMES}
    assert {"train", "translate", "export"} <= set(CLI_NAMES)
    for target in scripts.values():
        module, attribute = target.split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), target
    for name in CLI_NAMES:
        shim = (ROOT / f"{name}.py").read_text()
        assert f"from cyclegan_keras.cli.{name} import main" in shim, name
    # A CLI body at the top level (not installed by pip) must move into cyclegan_keras/cli/.
    top_level_bodies = [p.name for p in ROOT.glob("*.py") if "def main(" in p.read_text()]
    assert top_level_bodies == []
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert [name for name in scripts if f"`{name}`" not in readme] == []  # the README lists them all


@pytest.mark.parametrize("name", CLI_NAMES)
def test_each_console_script_target_prints_help(name, capsys):
    main = importlib.import_module(f"cyclegan_keras.cli.{name}").main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_export_cli_from_another_directory_with_a_relative_out(tmp_path, monkeypatch, capsys):
    # Installed, the package is not in the user's directory: a relative --out
    # must mean the user's directory in every process the command starts.
    from cyclegan_keras import networks
    from cyclegan_keras.cli import export as export_cli

    networks.resnet_generator(n_blocks=1, filters=8).save(tmp_path / "generator.keras")
    monkeypatch.chdir(tmp_path)
    argv = ["--model", "generator.keras", "--out", "exported", "--format", "saved_model", "--sample-size", "32"]
    assert export_cli.main(argv) == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "exported" / "export_report.json").exists()
