"""Seconds per CycleGAN training iteration, as the reference defines one.

batch 1 per replica, resnet_9blocks generators, basic PatchGAN
discriminators, lsgan, pool 50, identity loss on; the timed path is
`model.fit`. GFLOP/s take one iteration as 1.88 TFLOP at 256x256 and 0.47
TFLOP at 128x128 (the reference's counts). Each precision and strategy is
measured in the same run, so their ratios compare like with like; the JSON
records the CPU model and its AMX/AVX512 flags.

    python bench/train_step.py [--sizes 128 256] [--precisions float32 mixed_bfloat16]
                               [--strategies one_device mirrored] [--steps 5] [--jit]

`mirrored` runs MirroredStrategy over two logical devices of this one
machine (two GPUs where there are, else two logical CPUs): on a CPU it
cannot be faster, the figure shows the overhead of the replicated step.
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


def make_strategy(name):
    import tensorflow as tf

    if name == "one_device":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus[:2]] if len(gpus) >= 2 else ["/cpu:0", "/cpu:1"]
    return tf.distribute.MirroredStrategy(devices)


def measure(size, steps, warmup, jit_compile, precision="float32", strategy_name="one_device"):
    import numpy as np
    import tensorflow as tf

    from cyclegan_keras import CycleGAN, distribute, networks

    strategy = make_strategy(strategy_name)
    with strategy.scope(), distribute.precision_policy(precision):
        model = CycleGAN(
            networks.build_generator("resnet_9blocks"),
            networks.build_generator("resnet_9blocks"),
            networks.build_discriminator("basic"),
            networks.build_discriminator("basic"),
            pool_size=50,
        )
        model.compile(jit_compile=jit_compile)
    replicas = strategy.num_replicas_in_sync
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 1, size, size, 3)).astype("float32")
    data = tf.data.Dataset.from_tensors((images[0][0], images[1][0])).repeat().batch(replicas, drop_remainder=True)
    timer = StepTimer()
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer()], shuffle=False)
    times = timer.times[warmup:]
    seconds = float(np.median(times))
    result = {
        "size": size,
        "precision": precision,
        "strategy": strategy_name,
        "replicas": replicas,
        "jit_compile": jit_compile,
        "steps_timed": len(times),
        "first_step_s": round(timer.times[0], 2),
        "seconds_per_iteration": round(seconds, 3),
        "seconds_min": round(min(times), 3),
        "images_per_second": round(replicas / seconds, 3),
    }
    if size in TFLOP_PER_ITERATION:
        result["gflops_per_second"] = round(replicas * TFLOP_PER_ITERATION[size] * 1000 / seconds, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--precisions", nargs="+", default=["float32"], help="float32, mixed_bfloat16, mixed_float16")
    parser.add_argument("--strategies", nargs="+", default=["one_device"], help="one_device, mirrored")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations (tracing)")
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA")
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args()
    if "mirrored" in args.strategies:
        import tensorflow as tf

        if len(tf.config.list_physical_devices("GPU")) < 2:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    results = []
    for size in args.sizes:
        for strategy in args.strategies:
            for precision in args.precisions:
                result = measure(size, args.steps, args.warmup, args.jit, precision, strategy)
                print(result, flush=True)
                results.append(result)
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
