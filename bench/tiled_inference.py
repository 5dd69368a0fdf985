"""Translating phone-size photos within a memory budget: peak RSS, seconds per megapixel, tile quality.

A resnet_9blocks generator with 64 filters and the authors' initialization,
N(0, 0.02) weights (the speed and memory do not depend on the weights; the
instance norms' statistics matter to the outputs all the same), translates
matplotlib's grace_hopper.jpg upscaled (bicubic) to each size, written as a
JPEG as a phone would. Every case runs in its own process, so its peak RSS
(`ru_maxrss`) is its own.

- `speed` (`--sizes`, megapixels, 4:3): `translate_files` on the photo
  with `--max-memory` (default 3G): peak RSS, seconds, seconds per MP, and
  whether it was tiled.
- `quality` (`--quality`): at 2048x1536, the untiled translation against
  the tiled one (a budget that forces tiles): PSNR and SSIM of the uint8
  outputs (and of the same tiles given the whole image's own statistics,
  which isolates the tile borders from the reduced statistics pass), and
  the tile border jump: `jump(c) = mean |x[:, c+1] - x[:, c]|`
  over rows and channels (0..255); the largest over the columns (and rows)
  where neighbouring tiles are blended, against the largest over the
  columns (rows) at least one overlap away from any tile border.
  `--trained MODEL` runs it again with a trained generator. Both also give
  the PSNR with the statistics taken at other scales of the image, the
  quality the statistics pass's size buys, and the PSNR and seconds with
  0-3 leading norms' statistics gathered exactly at full size
  (`inference.EXACT_NORMS`).
- `cost` (`--cost`): the same tiled 1024x768 translation with no exact
  norm and with `inference.EXACT_NORMS`, interleaved over three rounds
  after a warm-up: seconds and their ratio, side by side in one process.
- `calibrate` (`--calibrate`): untiled translations at three sizes, peak
  RSS growth against `inference.memory_needed`'s graph estimate, which
  gives `inference.ALLOCATION_FACTOR`.

    python bench/tiled_inference.py                       # 1, 12, 24 MP and the quality case
    python bench/tiled_inference.py --sizes 1,12 --no-quality
    python bench/tiled_inference.py --sizes '' --calibrate
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (environment first)

PHOTO = "grace_hopper.jpg"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,12,24", help="megapixels of the speed cases, comma-separated")
    parser.add_argument("--max-memory", default="3G", help="budget of the speed cases (default: 3G)")
    parser.add_argument("--no-quality", dest="quality", action="store_false", help="skip the 2048x1536 case")
    parser.add_argument("--calibrate", action="store_true", help="also measure the allocation factor")
    parser.add_argument("--cost", action="store_true", help="also time the exact norms against none, side by side")
    parser.add_argument(
        "--trained",
        help="also run the quality case with this trained model (.keras CycleGAN or work directory), a2b",
    )
    parser.add_argument("--out", default="bench/results/tiled_inference.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # run one case in this process
    return parser.parse_args(argv)


def photo(width, height, path):
    """grace_hopper.jpg upscaled to `width` x `height`, written as a JPEG."""
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data(PHOTO)) as image:
        image.convert("RGB").resize((width, height), Image.BICUBIC).save(path, quality=92)
    return path


def size_for(megapixels):
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 8)) * 8
    return width, width * 3 // 4


def generator():
    import keras

    from cyclegan_keras import networks

    keras.utils.set_random_seed(0)
    return networks.build_generator("resnet_9blocks", filters=64)


def rss_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def warm_up(network):
    """Traces the whole-image and the tiled functions on small images, outside the measurement."""
    import numpy as np

    from cyclegan_keras import inference

    image = np.zeros((96, 128, 3), np.float32)
    inference.translate_images(network, image, max_memory=2**34, tile_size=0)
    inference.translate_images(network, image, max_memory=2**34, tile_size=96, overlap=8)


def speed_case(megapixels, max_memory):
    from cyclegan_keras import inference, translation
    from cyclegan_keras.cli.args import byte_size

    budget = byte_size(max_memory)
    width, height = size_for(megapixels)
    network = generator()
    warm_up(network)
    with tempfile.TemporaryDirectory() as folder:
        path = photo(width, height, Path(folder) / "photo.jpg")
        whole = inference.images_per_call(network, height, width, budget) > 0
        result = {"megapixels": round(width * height / 1e6, 2), "width": width, "height": height}
        result.update(
            max_memory=budget, tiled=not whole, estimate_whole=inference.memory_needed(network, 1, height, width)
        )
        if not whole:
            tiling = inference.plan_tiles(network, height, width, budget)
            result.update(tile=tiling.tile, tiles=len(tiling.rows) * len(tiling.columns), overlap=tiling.overlap)
            result.update(estimate_tiled=tiling.memory, statistics_size=tiling.statistics_size)
        result["rss_before"] = rss_bytes()
        start = time.perf_counter()
        translation.translate_files(network, str(path), Path(folder) / "out", max_memory=budget, verbose=False)
        seconds = time.perf_counter() - start
    result.update(seconds=round(seconds, 1), seconds_per_mp=round(seconds / (width * height / 1e6), 2))
    result["peak_rss"] = peak_rss_bytes()
    return result


def jumps(image, axis):
    """`mean |x[c+1] - x[c]|` for each column (axis=1) or row (axis=0) c, over the rest, on 0..255."""
    import numpy as np

    return np.abs(np.diff(image.astype(np.float32), axis=axis)).mean(axis=(1 - axis, 2))


def border_jump(image, offsets, tile, overlap, axis):
    """(largest jump where tiles are blended, largest jump at least `overlap` from every tile border)."""
    import numpy as np

    jump = jumps(image, axis)
    blended = np.zeros(len(jump), bool)
    near = np.zeros(len(jump), bool)
    for a, b in zip(offsets[1:], [o + tile for o in offsets[:-1]]):  # each shared band [a, b)
        blended[a:b] = True
        near[max(a - overlap, 0) : b + overlap] = True
    return float(jump[blended].max()) if blended.any() else 0.0, float(jump[~near].max())


def quality_case(trained=None):
    import numpy as np
    import tensorflow as tf

    from cyclegan_keras import inference, metrics, translation

    width, height = 2048, 1536
    network = translation.load_generator(trained) if trained else generator()
    with tempfile.TemporaryDirectory() as folder:
        path = photo(width, height, Path(folder) / "photo.jpg")
        from cyclegan_keras import data

        image = data.read_image(path).numpy().astype(np.float32) / 127.5 - 1.0
    whole = inference.memory_needed(network, 1, height, width)
    budget = whole // 3
    tiling = inference.plan_tiles(network, height, width, budget)
    start = time.perf_counter()
    untiled = metrics.to_uint8(inference.translate_images(network, image, max_memory=2 * whole, tile_size=0))
    untiled_seconds = time.perf_counter() - start
    start = time.perf_counter()
    tiled = metrics.to_uint8(inference.translate_images(network, image, max_memory=budget))
    tiled_seconds = time.perf_counter() - start
    # The tile borders alone: the same tiles with the whole image's own statistics.
    statistics = inference.recorded_statistics(network, image)
    exact = metrics.to_uint8(inference._translate_tiled(network, image, tiling, statistics))
    error = tiled.astype(np.float64) - untiled.astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / max(np.mean(error**2), 1e-12))
    exact_error = exact.astype(np.float64) - untiled.astype(np.float64)
    exact_psnr = 10 * np.log10(255.0**2 / max(np.mean(exact_error**2), 1e-12))
    ssim = float(tf.image.ssim(tf.constant(tiled[None]), tf.constant(untiled[None]), 255).numpy()[0])
    result = {"generator": trained or "resnet_9blocks, N(0, 0.02)", "width": width, "height": height}
    result.update(budget=budget, estimate_whole=whole)
    result.update(tile=tiling.tile, rows=tiling.rows, columns=tiling.columns, overlap=tiling.overlap)
    result.update(statistics_size=tiling.statistics_size, psnr_db=round(float(psnr), 2), ssim=round(ssim, 5))
    result.update(max_abs_error=int(np.abs(error).max()), untiled_seconds=round(untiled_seconds, 1))
    result["psnr_db_with_whole_image_statistics"] = round(float(exact_psnr), 2)
    # What the statistics pass's size is worth: the same tiles, statistics from the image resized by each scale.
    result["psnr_db_by_statistics_scale"] = {}
    for scale in (0.37, 0.5, 0.6, 0.75):
        size = (int(height * scale) // 4 * 4, int(width * scale) // 4 * 4)
        small = tf.image.resize(image[None], size, method="bilinear", antialias=True)[0].numpy()
        scaled = metrics.to_uint8(
            inference._translate_tiled(network, image, tiling, inference.recorded_statistics(network, small))
        )
        scaled_error = scaled.astype(np.float64) - untiled.astype(np.float64)
        scaled_psnr = 10 * np.log10(255.0**2 / max(np.mean(scaled_error**2), 1e-12))
        result["psnr_db_by_statistics_scale"][str(scale)] = round(float(scaled_psnr), 2)
    # What the exact leading statistics are worth: the same tiles with 0-3 norms gathered at full size.
    result["exact_norms"] = inference.EXACT_NORMS
    result["psnr_db_by_exact_norms"] = {}
    for count in (0, 1, 2, 3):
        with exact_norms(network, count):
            start = time.perf_counter()
            counted = metrics.to_uint8(inference._translate_tiled(network, image, tiling))
            seconds = time.perf_counter() - start
        counted_error = counted.astype(np.float64) - untiled.astype(np.float64)
        counted_psnr = 10 * np.log10(255.0**2 / max(np.mean(counted_error**2), 1e-12))
        result["psnr_db_by_exact_norms"][str(count)] = {
            "psnr_db": round(float(counted_psnr), 2),
            "seconds": round(seconds, 1),
        }
    result["tiled_seconds"] = round(tiled_seconds, 1)
    for name, axis, offsets, side in (("columns", 1, tiling.columns, 1), ("rows", 0, tiling.rows, 0)):
        border, interior = border_jump(tiled, offsets, tiling.tile[side], tiling.overlap, axis)
        untiled_border, _ = border_jump(untiled, offsets, tiling.tile[side], tiling.overlap, axis)
        result[f"border_jump_{name}"] = round(border, 2)
        result[f"untiled_jump_at_borders_{name}"] = round(untiled_border, 2)
        result[f"interior_jump_max_{name}"] = round(interior, 2)
    result["peak_rss"] = peak_rss_bytes()
    return result


@contextlib.contextmanager
def exact_norms(network, count):
    """`inference.EXACT_NORMS` set to `count` for `network` inside the block, restored after it."""
    from cyclegan_keras import inference

    runner, saved = inference._runner(network), inference.EXACT_NORMS
    inference.EXACT_NORMS = count
    runner.__dict__.pop("leading", None)  # rebuilt for this count
    try:
        yield
    finally:
        inference.EXACT_NORMS = saved
        runner.__dict__.pop("leading", None)


def cost_case():
    """Seconds of one tiled 1024x768 translation with 0 and with EXACT_NORMS exact norms, interleaved, 3 rounds."""
    import numpy as np

    from cyclegan_keras import data, inference

    width, height = 1024, 768
    network = generator()
    with tempfile.TemporaryDirectory() as folder:
        image = data.read_image(photo(width, height, Path(folder) / "photo.jpg")).numpy().astype(np.float32)
    image = image / 127.5 - 1.0
    tiling = inference.plan_tiles(network, height, width, inference.memory_needed(network, 1, height, width) // 3)
    counts, seconds = (0, inference.EXACT_NORMS), {}
    for round_ in range(4):  # the first round warms up (traces), the other three count
        for count in counts:
            with exact_norms(network, count):
                start = time.perf_counter()
                inference._translate_tiled(network, image, tiling)
                if round_:
                    seconds.setdefault(str(count), []).append(round(time.perf_counter() - start, 2))
    median = {count: float(np.median(values)) for count, values in seconds.items()}
    ratio = median[str(counts[1])] / median[str(counts[0])]
    tiles = len(tiling.rows) * len(tiling.columns)
    return {
        "width": width,
        "height": height,
        "tiles": tiles,
        "seconds": seconds,
        "ratio_exact_to_none": round(ratio, 3),
    }


def calibrate_case(width, height):
    import numpy as np

    from cyclegan_keras import inference

    network = generator()
    warm_up(network)
    image = np.zeros((height, width, 3), np.float32)
    runner = inference._runner(network)
    before = rss_bytes()
    inference.translate_images(network, image, max_memory=2**40, tile_size=0)
    grown = peak_rss_bytes() - before
    graph = runner.bytes_per_pixel * inference._padded_size(runner, height, width)[0] * width
    images = 4 * 6 * height * width * inference.IMAGE_BUFFERS
    return {
        "width": width,
        "height": height,
        "rss_growth": grown,
        "graph_peak_bytes": int(graph),
        "factor": round((grown - images) / graph, 2),
        "estimate": inference.memory_needed(network, 1, height, width),
    }


def run_case(case, args, trained=None):
    """Runs one case in a fresh process and returns its result."""
    command = [sys.executable, __file__, "--case", case, "--max-memory", args.max_memory]
    command += ["--trained", trained] if trained else []
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"case {case} failed:\n{result.stderr[-3000:]}")
    print(f"{case}: {lines[-1]}", flush=True)
    return json.loads(lines[-1])


def main():
    args = parse_args()
    if args.case:
        kind, _, value = args.case.partition(":")
        if kind == "speed":
            result = speed_case(float(value), args.max_memory)
        elif kind == "quality":
            result = quality_case(args.trained)
        elif kind == "cost":
            result = cost_case()
        else:
            result = calibrate_case(*map(int, value.split("x")))
        print(json.dumps(result))
        return
    results = {"generator": "resnet_9blocks, 64 filters, N(0, 0.02) weights", "photo": PHOTO}
    results["max_memory"] = args.max_memory
    results["speed"] = [run_case(f"speed:{size}", args) for size in args.sizes.split(",") if size]
    if args.quality:
        results["quality"] = run_case("quality", args)
        if args.trained:
            results["quality_trained"] = run_case("quality", args, args.trained)
    if args.cost:
        results["exact_norms_cost"] = run_case("cost", args)
    if args.calibrate:
        results["calibrate"] = [run_case(f"calibrate:{size}", args) for size in ("512x384", "1024x768", "1536x1152")]
    common.write_json(args.out, results)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
