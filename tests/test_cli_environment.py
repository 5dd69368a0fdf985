"""What every command prints around its work: fast `--help`, no TensorFlow noise, real errors kept."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cyclegan_keras import _env

ROOT = Path(__file__).resolve().parent.parent
CLI_NAMES = sorted(p.stem for p in (ROOT / "cyclegan_keras" / "cli").glob("*.py") if p.stem not in ("__init__", "args"))
# What TensorFlow 2.21 printed on a CPU-only machine before `_env` (see its docstring).
NOISE = ("E0000", "cuInit", "I0000", "cudart_stub", "absl::InitializeLog")


def clean_environment(**extra):
    """Our environment without the TensorFlow settings the test run itself uses."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    return {**env, **extra}


@pytest.mark.parametrize("name", CLI_NAMES)
def test_help_prints_usage_and_nothing_on_stderr(name):
    run = subprocess.run(
        [sys.executable, str(ROOT / f"{name}.py"), "--help"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.startswith("usage: "), run.stderr
    assert run.stderr == ""


@pytest.mark.parametrize("name", CLI_NAMES)
def test_help_takes_under_a_second_and_starts_no_tensorflow(name):
    code = (
        "import json, sys, time\n"
        "start = time.perf_counter()\n"
        f"from cyclegan_keras.cli.{name} import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "print(json.dumps({'loaded': loaded, 'seconds': time.perf_counter() - start}))\n"
    )
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", code], env=clean_environment(), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    wall = time.perf_counter() - start  # interpreter start included
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert wall < 1.0, f"{wall:.2f} s"


def test_a_command_that_runs_tensorflow_prints_only_its_own_error(tmp_path):
    # A file that is no model: finding that out loads Keras and TensorFlow.
    (tmp_path / "garbage.keras").write_bytes(b"not a zip")
    (tmp_path / "in.png").write_bytes(b"")
    argv = [
        "--model",
        str(tmp_path / "garbage.keras"),
        "--input",
        str(tmp_path / "in.png"),
        "--out",
        str(tmp_path / "o"),
    ]
    run = subprocess.run(
        [sys.executable, str(ROOT / "translate.py"), *argv],
        env=clean_environment(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: argument --model: ") and run.stderr.count("\n") == 1, run.stderr


def test_tensorflow_through_env_is_quiet_and_still_works():
    code = (
        "from cyclegan_keras import _env\n"
        "tf = _env.import_tensorflow()\n"
        "print(float(tf.reduce_sum(tf.ones((2, 3)))), tf.config.list_physical_devices('CPU')[0].device_type)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=clean_environment(), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["6.0", "CPU"]
    if not os.path.exists(_env.NVIDIA_DRIVER):  # what this test is about: a CPU-only machine
        assert not [line for line in run.stderr.splitlines() if any(word in line for word in NOISE)], run.stderr
    assert run.stderr == ""


CUINIT = "E0000 00:00:1795971381.522281    5712 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: x\n"
OTHER_ERROR = "E0000 00:00:1795971381.522281    5712 meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT\n"
INFO = "I0000 00:00:1795971379.409150    5712 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
WARNING = "W0000 00:00:1758131437.322781 3722519 computation_placer.cc:177] computation placer already registered\n"
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
PLAIN = "Traceback (most recent call last):\n"


@pytest.mark.parametrize(
    "line, level, driver, shown",
    [
        (CUINIT, 2, False, False),  # no driver: says only that there is no GPU
        (CUINIT, 2, True, True),  # a driver but cuInit fails: a real error
        (CUINIT, 0, False, True),  # level 0 asks for everything
        (OTHER_ERROR, 2, False, True),
        (OTHER_ERROR, 3, False, False),  # what TF_CPP_MIN_LOG_LEVEL=3 promises
        (INFO, 1, False, False),
        (INFO, 0, False, True),
        (WARNING, 1, False, True),
        (WARNING, 2, False, False),
        (BANNER, 2, False, False),
        (BANNER, 0, False, True),
        (PLAIN, 3, False, True),
    ],
)
def test_which_lines_are_kept(line, level, driver, shown):
    assert _env._keep(line, min_log_level=level, has_nvidia_driver=driver) is shown


def test_filtered_stderr_writes_back_what_it_keeps_even_when_the_block_raises():
    code = (
        "import os, sys\n"
        "from cyclegan_keras import _env\n"
        "try:\n"
        "    with _env.filtered_stderr(lambda line: 'drop' not in line):\n"
        "        os.write(2, b'keep 1\\ndrop this\\n')\n"
        "        sys.stderr.write('keep 2\\n')\n"
        "        raise RuntimeError('boom')\n"
        "except RuntimeError:\n"
        "    os.write(2, b'after\\n')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert run.stderr == "keep 1\nkeep 2\nafter\n"
