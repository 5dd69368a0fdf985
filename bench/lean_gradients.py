"""The generators' lean gradients vs TensorFlow's own: peak tensor memory and seconds of one backward pass.

In training (`training=True`) a generator's instance norms keep only their output for the gradient,
its ReLUs read that same tensor, and the blur of `Downsample` keeps nothing
(`InstanceNormalization(lean_gradient=True)`, `layers.ReLU`, `Downsample`); with `training=False`
the same layers, the same values, take TensorFlow's gradients. Each (generator, batch, gradient)
runs forward + backward (L1 to the input, gradients of every weight) in a fresh process, so its
peak tensor memory (BFC allocator, as on a GPU) is its own; seconds are the mean of `--steps` after
one warm-up (tracing). The two gradients are checked equal on the first setting.

    python bench/lean_gradients.py [--size 256] [--batches 1 2] [--steps 3] [--precision mixed_bfloat16]
"""

import argparse
import json
import time

import common  # environment first

GENERATORS = {
    "resnet_9blocks": {},
    "resnet_9blocks antialiased (CUT's)": {"antialias": True, "antialias_up": True},
}


def measure(generator, size, batch, lean, steps, precision="float32"):
    import numpy as np
    import tensorflow as tf

    from cyclegan_keras import distribute, networks

    tf.keras.utils.set_random_seed(0)
    with distribute.precision_policy(precision):
        g = networks.resnet_generator(9, 64, **GENERATORS[generator])
    x = tf.random.uniform((batch, size, size, 3), -1, 1, seed=1)

    @tf.function
    def backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(g(x, training=lean) - x))
        return tape.gradient(loss, g.trainable_variables)

    [gradient.numpy() for gradient in backward(x)]  # traces
    tf.config.experimental.reset_memory_stats("CPU:0")
    start = time.perf_counter()
    for _ in range(steps):
        gradients = [gradient.numpy() for gradient in backward(x)]
    seconds = (time.perf_counter() - start) / steps
    kernels = [gradient for variable, gradient in zip(g.trainable_variables, gradients) if "kernel" in variable.path]
    return {
        "peak_tensor_memory_mb": round(tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20),
        "seconds": round(seconds, 3),
        "kernel_gradient_checksum": [float(np.sum(np.abs(k))) for k in kernels],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="float32", help="float32, mixed_bfloat16, mixed_float16")
    parser.add_argument("--out", default="bench/results/lean_gradients.json")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(common.RESULT_PREFIX + json.dumps(measure(**json.loads(args.job))))
        return
    rows = []
    for generator in GENERATORS:
        for batch in args.batches:
            job = dict(generator=generator, size=args.size, batch=batch, steps=args.steps, precision=args.precision)
            tensorflows = common.in_fresh_process(__file__, {**job, "lean": False})
            lean = common.in_fresh_process(__file__, {**job, "lean": True})
            # Sums of |gradient| per kernel: the same gradients, to float32 round-off.
            worst = max(
                abs(a - b) / max(abs(b), 1e-12)
                for a, b in zip(lean.pop("kernel_gradient_checksum"), tensorflows.pop("kernel_gradient_checksum"))
            )
            row = {
                "generator": generator,
                "size": args.size,
                "precision": args.precision,
                "batch": batch,
                "tensorflow_gradients": tensorflows,
                "lean_gradients": lean,
                "memory_lean_over_tensorflow": round(
                    lean["peak_tensor_memory_mb"] / tensorflows["peak_tensor_memory_mb"], 2
                ),
                "speed_lean_over_tensorflow": round(tensorflows["seconds"] / lean["seconds"], 2),
                "kernel_gradient_sums_max_relative_difference": float(f"{worst:.2g}"),
            }
            rows.append(row)
            print(
                f"{generator}, {args.size}x{args.size}, batch {batch}: peak tensor memory "
                f"{tensorflows['peak_tensor_memory_mb']} -> {lean['peak_tensor_memory_mb']} MB "
                f"({row['memory_lean_over_tensorflow']}x), {tensorflows['seconds']} -> {lean['seconds']} s "
                f"({row['speed_lean_over_tensorflow']}x the speed), gradients within {worst:.1g}"
            )
    common.write_json(args.out, {"steps": args.steps, "runs": rows})


if __name__ == "__main__":
    main()
