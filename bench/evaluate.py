"""Images per second of FID feature extraction at 299x299, and the cost of FID and KID.

Feature extraction is what an evaluation spends its time on: the FID
Inception-v3 (5.7 GFLOP per 299x299 image) on every translation and every
real image. Timed on 256x256 uint8 images (the CycleGAN output size):
- `network`: the Keras network alone on already-resized 299x299 batches;
- `pytorch-fid` and `clean`: the whole `InceptionFeatures` call, with each
  mode's resize (TF bilinear in the graph; PIL bicubic per channel on the
  CPU for clean-fid's mode).
Then FID (2048-d, n vs n features) and KID (clean-fid's 100 subsets)
from features. Weights are random unless --weights is given: the speed
does not depend on them.

    python bench/evaluate.py [--images 64] [--batch-size 16] [--weights PATH]
    python bench/evaluate.py --images 4 --batch-size 2 --size 75   # smoke run, not comparable
"""

import argparse
import os
import platform
import time

import common  # noqa: F401  (environment first)


def cpu():
    """The CPU model and the vector extensions that matter to TensorFlow's kernels."""
    model, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    flags = [
                        f
                        for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")
                        if f in present
                    ]
                    break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_flags": flags, "cpu_count": os.cpu_count()}


def images_per_second(fn, images, batch_size, runs):
    fn(images[:batch_size])  # trace and warm up
    best = None
    for _ in range(runs):
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            fn(images[i : i + batch_size])
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return round(len(images) / best, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--size", type=int, default=299, help="network input side (299 for comparable figures)")
    parser.add_argument("--weights", help="FID Inception weights (default: random weights)")
    parser.add_argument("--out", default="bench/results/evaluate.json")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from cyclegan_keras import fid_inception, metrics

    keras.utils.set_random_seed(0)
    if args.weights:
        model = fid_inception.load_weights(fid_inception.fid_inception_v3(), args.weights)
    else:
        model = fid_inception.fid_inception_v3()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 256, 256, 3), dtype=np.uint8)
    results = {
        **cpu(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "images": args.images,
        "batch_size": args.batch_size,
        "input": "256x256 uint8",
        "network_size": args.size,
        "weights": "given" if args.weights else "random",
    }
    resized = fid_inception.preprocess(images, "pytorch-fid", args.size)
    forward = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, args.size, args.size, 3))]
    )
    results["network_images_per_s"] = images_per_second(
        lambda x: forward(x).numpy(), resized, args.batch_size, args.runs
    )
    for mode in fid_inception.RESIZE_MODES:
        features = fid_inception.InceptionFeatures(model, mode, size=args.size)
        results[f"{mode}_images_per_s"] = images_per_second(features, images, args.batch_size, args.runs)

    count = max(args.images, 2)
    fake, real = rng.random((count, 2048)), rng.random((count, 2048))
    start = time.perf_counter()
    metrics.fid(fake, real)
    results[f"fid_seconds_{count}_vs_{count}"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    metrics.kid(fake, real)
    results[f"kid_seconds_{count}_vs_{count}_100_subsets"] = round(time.perf_counter() - start, 3)
    for key, value in results.items():
        print(f"{key}: {value}")
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
