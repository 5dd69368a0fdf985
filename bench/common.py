"""Shared helpers for the benchmarks: environment and JSON output."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def machine():
    import tensorflow as tf

    from cyclegan_keras import distribute

    flags = distribute.cpu_flags()
    return {
        "cpu_model": distribute.cpu_info("model name") or platform.processor() or platform.machine(),
        # What decides bfloat16 speed on a CPU: AMX tiles, AVX512-BF16, or neither.
        "cpu_flags": sorted(f for f in flags if f.startswith(("amx", "avx512", "avx2", "fma"))),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def write_json(path, results):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(f"wrote {path}")


def synthetic_task(size=32):
    """The learning benchmarks' data: 64 + 64 training images, 16 held-out A images and their true B."""
    from cyclegan_keras.data import synthetic_images, synthetic_mapping

    def to_float(images):
        return images.astype("float32") / 127.5 - 1.0

    test_a = to_float(synthetic_images("A", 16, size, seed=3))
    real_a, real_b = (to_float(synthetic_images(d, 64, size, seed=s)) for d, s in (("A", 1), ("B", 2)))
    return real_a, real_b, test_a, synthetic_mapping(test_a, "a2b")


RESULT_PREFIX = "RESULT "


def in_fresh_process(script, job):
    """Runs `script --job JOB` in a new Python, so that its peak memory is its own; returns the dict it printed
    after `RESULT_PREFIX`. The process counts its tensor memory with TensorFlow's BFC allocator, as on a GPU."""
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true"}
    process = subprocess.run(
        [sys.executable, script, "--job", json.dumps(job)], capture_output=True, text=True, check=False, env=env
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode or not lines:
        raise RuntimeError(f"{job} failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def learning_record(model, init_type, seed, steps, errors, test_a, truth_b, seconds, **settings):
    """One learning run's JSON: the error to the true mapping at each scored step, beside the input's own."""
    import numpy as np

    return {
        "model": model,
        "init_type": init_type,
        **settings,
        "seed": seed,
        "steps": steps,
        "error_to_true_mapping": errors,
        "identity_error": round(float(np.mean(np.abs(test_a - truth_b))), 4),
        "seconds": round(seconds, 1),
    }
