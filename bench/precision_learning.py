"""Does a model trained in mixed precision learn as well as float32?

The synthetic task has a known true mapping T: trains the same small
CycleGAN (resnet, 1 block, 8 filters, 32x32, batch 4, pool 10) for the same
steps from the same initial weights in each precision, and reports mean
|G(a) - T(a)| on held-out images (and seconds per step). bfloat16 passes if
its error is within 20 % of float32's.

    python bench/precision_learning.py [--steps 300] [--precisions float32 mixed_bfloat16]
"""

import argparse
import time

import common  # noqa: F401  (environment first)


def run(precision, steps, seed=1):
    import keras
    import numpy as np
    import tensorflow as tf

    from cyclegan_keras import CycleGAN, distribute, networks

    real_a, real_b, test_a, truth_b = common.synthetic_task()
    keras.utils.set_random_seed(seed)
    with distribute.precision_policy(precision):
        model = CycleGAN(
            networks.resnet_generator(n_blocks=1, filters=8),
            networks.resnet_generator(n_blocks=1, filters=8),
            networks.patchgan_discriminator(filters=8),
            networks.patchgan_discriminator(filters=8),
            pool_size=10,
        )
        model.compile()
    data = tf.data.Dataset.from_tensor_slices((real_a, real_b)).shuffle(64, seed=0).batch(4).repeat()
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    error = float(np.mean(np.abs(model.translate(test_a) - truth_b)))
    identity = float(np.mean(np.abs(test_a - truth_b)))
    return {
        "precision": precision,
        "steps": steps,
        "error_to_true_mapping": round(error, 4),
        "identity_error": round(identity, 4),
        "seconds_per_step_incl_tracing": round(seconds / steps, 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--out", default="bench/results/precision_learning.json")
    args = parser.parse_args()
    results = []
    for precision in args.precisions:
        result = run(precision, args.steps)
        print(result, flush=True)
        results.append(result)
    baseline = results[0]
    for result in results[1:]:
        ratio = result["error_to_true_mapping"] / baseline["error_to_true_mapping"]
        result["error_ratio_to_" + baseline["precision"]] = round(ratio, 3)
        print(f"{result['precision']}: error {ratio:.3f}x {baseline['precision']}'s")
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
