"""Memory and time of a convolution's two gradients: TensorFlow's kernels against `NarrowConv2D`'s.

For each shape (batch, side, kernel, input -> output channels), a stride-1 valid convolution's
gradient with respect to its input and to its kernel, by TensorFlow's `Conv2DBackpropInput` and
`Conv2DBackpropFilter` and by the forward convolutions `layers.NarrowConv2D` computes instead:
peak tensor memory above what was allocated before (TensorFlow's BFC allocator, which this script
turns on for the CPU) and the median time of `--runs`, with the largest difference relative to
TensorFlow's result. The first shape is the generator's last convolution at 256x256 as CUT
trains it (batch 2: real_a and real_b), the second a discriminator's logits, the third a 3x3
convolution to many channels, for which `NarrowConv2D` is not used.

    python bench/conv_gradients.py [--runs 5]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # before TensorFlow: counts the CPU's tensor memory

import common  # noqa: E402,F401  (environment first)

SHAPES = [(2, 256, 7, 64, 3), (2, 30, 4, 512, 1), (2, 256, 3, 128, 64)]


def measure(fn, args, runs):
    """(peak MB above the start, median seconds, result) of `fn(*args)` after one warm-up call."""
    import numpy as np
    import tensorflow as tf

    fn(*args).numpy()
    times, peak = [], 0.0
    for _ in range(runs):
        tf.config.experimental.reset_memory_stats("CPU:0")
        start_bytes = tf.config.experimental.get_memory_info("CPU:0")["current"]
        start = time.perf_counter()
        result = fn(*args).numpy()
        times.append(time.perf_counter() - start)
        peak = max(peak, (tf.config.experimental.get_memory_info("CPU:0")["peak"] - start_bytes) / 2**20)
    return round(peak, 1), round(float(np.median(times)), 4), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="bench/results/conv_gradients.json")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from cyclegan_keras.layers import NarrowConv2D, conv2d_by_forward_gradients

    results = []
    for batch, side, k, cin, cout in SHAPES:
        inputs = tf.random.uniform((batch, side + k - 1, side + k - 1, cin), -1, 1, seed=1)
        upstream = tf.random.uniform((batch, side, side, cout), -1, 1, seed=2)
        layer = NarrowConv2D(cout, k, use_bias=False)
        layer.build(inputs.shape)
        kernel = tf.convert_to_tensor(layer.kernel)

        def ours(x, w, wrt):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = conv2d_by_forward_gradients(x, w)
            return tape.gradient(y, x if wrt == "input" else w, output_gradients=upstream)

        theirs = {
            "input": lambda x, w: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=w, out_backprop=upstream, strides=[1, 1, 1, 1], padding="VALID"
            ),
            "kernel": lambda x, w: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(w), out_backprop=upstream, strides=[1, 1, 1, 1], padding="VALID"
            ),
        }
        for wrt, reference in theirs.items():
            tf_mb, tf_s, expected = measure(tf.function(reference), (inputs, kernel), args.runs)
            our_mb, our_s, got = measure(tf.function(lambda x, w: ours(x, w, wrt)), (inputs, kernel), args.runs)
            row = {
                "batch": batch,
                "side": side,
                "kernel": k,
                "channels": f"{cin}->{cout}",
                "gradient": wrt,
                "tensorflow_mb": tf_mb,
                "tensorflow_s": tf_s,
                "forward_conv_mb": our_mb,
                "forward_conv_s": our_s,
                "max_relative_difference": float(np.abs(got - expected).max() / np.abs(expected).max()),
            }
            results.append(row)
            print(
                f"{batch}x{side}x{side}, {k}x{k} {cin}->{cout}, d/d {wrt}: TensorFlow {tf_mb} MB {tf_s * 1000:.0f} ms, "
                f"forward convolution {our_mb} MB {our_s * 1000:.0f} ms "
                f"(difference {row['max_relative_difference']:.1e})"
            )
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
