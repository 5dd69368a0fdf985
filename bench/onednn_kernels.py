"""Which oneDNN kernels a training step runs, per precision: evidence for bfloat16 speed on a CPU.

Runs a few training iterations of the benchmark model (resnet_9blocks, basic
PatchGAN, batch 1) under `ONEDNN_VERBOSE=1` in a child process per
precision, and tallies the oneDNN primitives executed by kind, data type and
implementation (`brg_conv_fwd:avx512_core_amx` on AMX, `...avx512_core_bf16`
on AVX512-BF16, `jit:avx512_core` for float32), with the time oneDNN reports
for each. Ops that TensorFlow runs outside oneDNN (instance norm's
reductions, padding, casts) do not appear. Verbose mode slows the step
(each primitive is timed and logged), and with TensorFlow's inter-op
threads primitives overlap, so the kernel times are for comparing kernels
between precisions, not for adding up to the step time.

    python bench/onednn_kernels.py [--size 128] [--steps 3] [--precisions float32 mixed_bfloat16]
"""

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import common

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import numpy as np, tensorflow as tf
from cyclegan_keras import CycleGAN, distribute, networks
with distribute.precision_policy({precision!r}):
    model = CycleGAN(networks.build_generator("resnet_9blocks"), networks.build_generator("resnet_9blocks"),
                     networks.build_discriminator("basic"), networks.build_discriminator("basic"))
    model.compile()
images = np.random.default_rng(0).uniform(-1, 1, (1, {size}, {size}, 3)).astype("float32")
data = tf.data.Dataset.from_tensors((images[0], images[0])).repeat().batch(1)
model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # tracing, first steps
print("TIMED_START", flush=True)
start = time.perf_counter()
model.fit(data, steps_per_epoch={steps}, epochs=1, verbose=0)
print("TIMED_END", (time.perf_counter() - start) / {steps}, flush=True)
"""


def tally(output, steps):
    timed = output.split("TIMED_START", 1)[1]
    seconds_per_step = float(timed.split("TIMED_END", 1)[1].split()[0])
    kernels = collections.defaultdict(lambda: [0, 0.0])
    for line in timed.splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields or len(fields) < 8:
            continue
        at = fields.index("exec")
        kind, implementation, data_types = fields[at + 2], fields[at + 3], fields[at + 5]
        source = data_types.split()[0].split(":")[1] if ":" in data_types else data_types
        key = f"{kind} {source} {implementation}"
        kernels[key][0] += 1
        kernels[key][1] += float(fields[-1])
    rows = sorted(kernels.items(), key=lambda item: -item[1][1])
    convolution_ms = sum(ms for key, (_, ms) in kernels.items() if key.startswith("convolution")) / steps
    return {
        "seconds_per_step_verbose": round(seconds_per_step, 3),
        "convolution_kernel_ms_per_step": round(convolution_ms, 1),
        "kernels": [
            {"kernel": k, "calls_per_step": c / steps, "ms_per_step": round(ms / steps, 1)} for k, (c, ms) in rows
        ],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--out", default="bench/results/onednn_kernels.json")
    args = parser.parse_args()
    root = str(Path(__file__).resolve().parent.parent)
    results = []
    for precision in args.precisions:
        code = CHILD.format(root=root, precision=precision, size=args.size, steps=args.steps)
        env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        result = {"precision": precision, "size": args.size, **tally(run.stdout, args.steps)}
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "kernels"}))
        for row in result["kernels"][:8]:
            print(f"   {row['ms_per_step']:9.1f} ms {row['calls_per_step']:6.1f} calls  {row['kernel']}")
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
