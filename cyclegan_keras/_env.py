"""Quiet TensorFlow logging for the command-line tools: `TF_CPP_MIN_LOG_LEVEL=2` unless the user set one.

That level does not hide what TensorFlow 2.21 logs before absl is initialized (abseil-cpp PR #1957),
nor, without an NVIDIA driver, an ERROR `failed call to cuInit` only level 3 hides (with every real
error). So `import_tensorflow()` filters fd 2: absl lines below the level, the banner, that cuInit line.
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
    """Imports TensorFlow and initializes its devices without that noise; returns the module."""
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
    if level <= 0:
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
    """Captures fd 2 in a file (a pipe could fill and block) during the block, then writes back what `keep` accepts."""
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
