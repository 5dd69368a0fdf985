"""Memory and time of reading one image file: `data.read_image` against the decode it replaced.

Makes JPEG photos of 1, 12 and 24 MP (stored landscape, EXIF Orientation 6,
so reading turns them upright) and a PNG that declares 20000x20000 pixels.
Each reading runs in a fresh process, after a warm-up decode, so the peak
RSS it adds is its own. `previous` is the decode before EXIF and header
checks: 16 bits per channel, rounded back to 8 through float32, no
orientation.

    python bench/decode.py [--sizes 1 12 24]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import common

MEASURE = r"""
import json, sys, time
import common  # noqa: F401
import tensorflow as tf
from cyclegan_keras import data

path, reader, warm = sys.argv[1:4]

def previous(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint16, expand_animations=False)
    return tf.cast(tf.round(tf.cast(image, tf.float32) / 257.0), tf.uint8)

read = {"read_image": data.read_image, "previous": previous}[reader]
def status(field):
    line = next(line for line in open("/proc/self/status") if line.startswith(field))
    return int(line.split()[1]) / 1024  # MB

read(warm)
open("/proc/self/clear_refs", "w").write("5")  # restarts the peak (VmHWM) from the current RSS
before = status("VmRSS")
start = time.perf_counter()
try:
    shape, outcome = list(read(path).shape), "decoded"
except data.UnreadableImage as error:
    shape, outcome = None, error.reason
seconds = time.perf_counter() - start
added = status("VmHWM") - before
print(json.dumps({"shape": shape, "outcome": outcome, "seconds": seconds, "peak_rss_added_mb": added}))
"""


def photo(path, megapixels):
    import numpy as np
    from PIL import Image

    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = height * 4 // 3
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    small.resize((width, height), Image.BICUBIC).save(path, quality=90, exif=exif)
    return width, height


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 12, 24], help="photo sizes in megapixels")
    parser.add_argument("--out", default="bench/results/decode.json")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_exif import png_declaring

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm.jpg"
        photo(warm, 0.01)
        cases = []
        for megapixels in args.sizes:
            path = Path(tmp) / f"{megapixels:g}mp.jpg"
            width, height = photo(path, megapixels)
            cases.append((f"{width}x{height} JPEG, Orientation 6", path))
        cases.append(("20000x20000 PNG (declared)", png_declaring(Path(tmp) / "huge.png", 20000, 20000)))
        for name, path in cases:
            for reader in ("read_image", "previous"):
                if reader == "previous" and "declared" in name:
                    continue  # it would decode (or fail on) 1.2 GB: what the header check prevents
                output = subprocess.run(
                    [sys.executable, "-c", MEASURE, str(path), reader, str(warm)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=Path(__file__).resolve().parent,
                ).stdout
                row = {"file": name, "bytes": path.stat().st_size, "reader": reader, **json.loads(output)}
                results.append(row)
                print(
                    f"{name:34s} {reader:10s} {str(row['shape']):18s} {row['seconds']:7.3f} s "
                    f"peak RSS +{row['peak_rss_added_mb']:7.1f} MB  {row['outcome'][:60]}"
                )
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
