"""Shared helpers for the benchmarks: environment and JSON output."""

import json
import os
import platform
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
