"""Images per second the data pipeline delivers at 256x256.

Makes a folder of JPEGs of mixed sizes (200 to 640 px a side), builds the
domains (one parallel decode + resize pass, the cache) and then times the
training stream: pairing, random crop 256 of the 286 resize, flip, batch 1.
Also times the streaming path (decode on every access, when the cache does
not fit in memory). Compare with `bench/train_step.py`: the pipeline must
deliver at least 10x the training step rate.

    python bench/data_pipeline.py [--images 200] [--pairs 500]
"""

import argparse
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (environment first)


def make_folder(folder, count, rng):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        height, width = rng.integers(200, 641, 2)
        base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype="uint8")
        image = Image.fromarray(base).resize((int(width), int(height)), Image.BICUBIC)
        image.save(folder / f"{i:05d}.jpg", quality=90)


def images_per_second(dataset, pairs):
    iterator = iter(dataset)
    next(iterator)  # the first element pays for tracing
    start = time.perf_counter()
    for _ in range(pairs):
        next(iterator)
    return 2 * pairs / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="JPEGs per domain")
    parser.add_argument("--pairs", type=int, default=500, help="pairs timed per path")
    parser.add_argument("--out", default="bench/results/data_pipeline.json")
    args = parser.parse_args()

    import numpy as np

    from cyclegan_keras import data

    rng = np.random.default_rng(0)
    preprocessing = data.Preprocessing()  # resize 286, random crop 256, flip
    results = {"images_per_domain": args.images, "preprocess": "resize_and_crop 286 -> 256, flip, batch 1"}
    with tempfile.TemporaryDirectory() as tmp:
        for d in "AB":
            make_folder(Path(tmp) / f"train{d}", args.images, rng)
        start = time.perf_counter()
        domain_a, domain_b = data.reference_folder_domains(tmp, "train", preprocessing)
        build = time.perf_counter() - start
        results["cache_build_images_per_second"] = round(2 * args.images / build, 1)
        cached = data.unpaired_dataset(domain_a, domain_b, preprocessing, batch_size=1)
        results["cached_images_per_second"] = round(images_per_second(cached, args.pairs), 1)
        stream_a, stream_b = (data.folder_domain(Path(tmp) / f"train{d}", preprocessing, cache_bytes=0) for d in "AB")
        streamed = data.unpaired_dataset(stream_a, stream_b, preprocessing, batch_size=1)
        results["streaming_images_per_second"] = round(images_per_second(streamed, args.pairs // 5), 1)
    for key, value in results.items():
        print(f"{key}: {value}")
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
