"""Seconds per CycleGAN training iteration, as the reference defines one.

batch 1, resnet_9blocks generators, basic PatchGAN discriminators, lsgan,
pool 50, identity loss on; the timed path is `model.fit`. GFLOP/s take one
iteration as 1.88 TFLOP at 256x256 and 0.47 TFLOP at 128x128 (the
reference's counts). For comparison, the authors' PyTorch code takes about
6.3 s (128) and 21 s (256) per iteration on a 2-core CPU.

    python bench/train_step.py [--sizes 128 256] [--steps 5] [--jit]
"""

import argparse
import time

import common  # noqa: F401  (environment first)

TFLOP_PER_ITERATION = {128: 0.47, 256: 1.88}


class StepTimer:
    def __init__(self):
        self.times = []

    def __call__(self):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                timer.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                timer.times.append(time.perf_counter() - timer.start)

        return Callback()


def measure(size, steps, warmup, jit_compile):
    import numpy as np
    import tensorflow as tf

    from cyclegan_keras import CycleGAN, networks

    model = CycleGAN(
        networks.build_generator("resnet_9blocks"),
        networks.build_generator("resnet_9blocks"),
        networks.build_discriminator("basic"),
        networks.build_discriminator("basic"),
        pool_size=50,
    )
    model.compile(jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 1, size, size, 3)).astype("float32")
    data = tf.data.Dataset.from_tensors((images[0][0], images[1][0])).repeat().batch(1, drop_remainder=True)
    timer = StepTimer()
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer()], shuffle=False)
    times = timer.times[warmup:]
    seconds = float(np.median(times))
    result = {
        "size": size,
        "jit_compile": jit_compile,
        "steps_timed": len(times),
        "first_step_s": round(timer.times[0], 2),
        "seconds_per_iteration": round(seconds, 3),
        "seconds_min": round(min(times), 3),
    }
    if size in TFLOP_PER_ITERATION:
        result["gflops_per_second"] = round(TFLOP_PER_ITERATION[size] * 1000 / seconds, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=5, help="timed iterations per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations (tracing)")
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA")
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        result = measure(size, args.steps, args.warmup, args.jit)
        print(result, flush=True)
        results.append(result)
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
