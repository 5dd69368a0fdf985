"""Process settings of the command-line tools, in one place.

Each CLI module imports this first and calls `import_tensorflow()` after its
arguments are parsed (so `--help` never starts TensorFlow). Importing it sets
`TF_CPP_MIN_LOG_LEVEL=2` unless the user set it (the package's `__init__`
has already settled `KERAS_BACKEND`).

Why `import_tensorflow()` filters stderr: TensorFlow 2.21 logs through absl,
and what its wheels log before `absl::InitializeLog()` is called (which they
never call) goes to stderr whatever `TF_CPP_MIN_LOG_LEVEL` says (the open
abseil-cpp pull request #1957 is about exactly that): a banner `WARNING: All
log messages before absl::InitializeLog() ...`, then `I0000 ... port.cc]
oneDNN custom operations are on ...` and `I0000 ... cudart_stub.cc] Could not
find cuda drivers ...`, twice, once per TensorFlow shared library. Then, on a
machine without an NVIDIA driver, the first use of a device initializes the
CUDA platform, whose `cuInit` fails and is logged at ERROR: `E0000 ...
cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call
to cuInit: UNKNOWN ERROR (303)`. Only `TF_CPP_MIN_LOG_LEVEL=3` hides that
line, and with it every real error; `CUDA_VISIBLE_DEVICES=""` or `-1` does not
stop the call (measured with TensorFlow 2.21 on a CPU-only machine).

So the import and the device initialization run with stderr (the file
descriptor, where C++ writes) captured, and the captured lines are written
back except, when `TF_CPP_MIN_LOG_LEVEL` is above 0: absl-format lines below
that level (what the setting promises), the banner, and the `cuInit` failure
when there is no NVIDIA kernel driver (`/proc/driver/nvidia/version` missing),
where it says only that there is no GPU. Everything else, errors included,
comes through; `TF_CPP_MIN_LOG_LEVEL=0` shows everything.
"""

import contextlib
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [^\]]+\] ")
_SEVERITIES = "IWEF"  # TF_CPP_MIN_LOG_LEVEL 1 drops I, 2 also W, 3 also E
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NO_DRIVER_CUINIT = re.compile(r"\] failed call to cuInit: .*CUDA error")
NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def import_tensorflow():
    """Imports TensorFlow and initializes its devices, without the noise described above.

    Returns:
        The `tensorflow` module.
    """
    with filtered_stderr(_keep):
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


def _min_log_level():
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def _keep(line, min_log_level=None, has_nvidia_driver=None):
    """Whether a captured stderr line is shown."""
    level = _min_log_level() if min_log_level is None else min_log_level
    driver = os.path.exists(NVIDIA_DRIVER) if has_nvidia_driver is None else has_nvidia_driver
    if level <= 0:  # the user asked for everything
        return True
    if line.rstrip("\n") == _BANNER:
        return False
    match = _ABSL_LINE.match(line)
    if not match:
        return True
    if _SEVERITIES.index(match.group(1)) < level:
        return False
    return driver or not _NO_DRIVER_CUINIT.search(line)


@contextlib.contextmanager
def filtered_stderr(keep):
    """Captures file descriptor 2 while the block runs, then writes back the lines `keep` accepts.

    Captured to a file (not a pipe, which could fill and block the writer);
    written back even when the block raises, before the exception's traceback.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if keep(line)))
            sys.stderr.flush()
