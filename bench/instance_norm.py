"""Instance normalization: ours vs Keras GroupNormalization(groups=-1).

Times a resnet_6blocks generator's forward + backward pass at 128x128,
batch 1, with each implementation in every norm slot, checks both give the
same output, and exports each generator to TFLite float32 to measure how
far it drifts from TensorFlow at 256x256.

    python bench/instance_norm.py [--size 128] [--steps 10]
"""

import argparse
import time
from unittest import mock

import common  # noqa: F401  (environment first)


def build_generator(norm_factory):
    import keras

    from cyclegan_keras import networks

    with mock.patch.object(networks, "_norm", lambda norm, name, lean_gradient=False: norm_factory(name)):
        keras.utils.set_random_seed(0)
        return networks.resnet_generator(n_blocks=6)


def tflite_drift(generator, size=256):
    """Max abs difference between TFLite float32 and TensorFlow outputs."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from cyclegan_keras import export

    image = np.random.default_rng(1).uniform(-1, 1, (1, size, size, 3)).astype("float32")
    expected = np.asarray(generator(image))
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_tflite(generator, Path(tmp) / "g.tflite", "float32")
        interpreter = Interpreter(model_path=str(path))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, image.shape, strict=False)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, image)
        interpreter.invoke()
        output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return float(np.max(np.abs(output - expected)))


def time_generator(norm_factory, size, steps):
    import numpy as np
    import tensorflow as tf

    generator = build_generator(norm_factory)
    images = tf.constant(np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype("float32"))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = generator(x, training=True)
            loss = tf.reduce_mean(tf.abs(y - x))
        return y, tape.gradient(loss, generator.trainable_variables)

    output, _ = step(images)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(images)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), np.asarray(output), tflite_drift(generator)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="bench/results/instance_norm.json")
    args = parser.parse_args()

    import keras
    import numpy as np

    from cyclegan_keras.layers import InstanceNormalization

    ours, out_ours, drift_ours = time_generator(lambda name: InstanceNormalization(name=name), args.size, args.steps)
    group, out_group, drift_group = time_generator(
        lambda name: keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, center=False, scale=False, name=name),
        args.size,
        args.steps,
    )
    results = {
        "size": args.size,
        "generator": "resnet_6blocks, forward + backward, batch 1",
        "instance_norm_ours_s": round(ours, 4),
        "group_normalization_s": round(group, 4),
        "group_over_ours": round(group / ours, 2),
        "max_abs_output_difference": float(np.max(np.abs(out_ours - out_group))),
        "tflite_float32_drift_at_256_ours": drift_ours,
        "tflite_float32_drift_at_256_group_normalization": drift_group,
    }
    for key, value in results.items():
        print(f"{key}: {value}")
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
