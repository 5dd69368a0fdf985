"""Peak memory of a TF Serving process per request: refused ones and accepted ones.

Exports a resnet_9blocks generator (64 filters, random weights: memory does
not depend on them) with the default --max-pixels, then runs each case in a
fresh process that loads the SavedModel as TF Serving does (the v1 loader in
a session, tensors by their signature_def names) and sends its requests in
order, recording the peak RSS (ru_maxrss) after loading and after each
request. The 20000x20000 PNG is a real one (zero rows, 1.2 MB on disk): the
file that aborted the server before the limit.

    python bench/serving_memory.py [--cases png_then_256 ...] [--max-pixels N]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import common  # noqa: F401  (environment first)

CASES = {
    # name: requests in order, (signature, kind, height, width)
    "load_only": [],
    "png_20000_then_256": [("bytes", "png_file", 20000, 20000), ("bytes", "png", 256, 256)],
    "png_20000_then_max": [("bytes", "png_file", 20000, 20000), ("bytes", "png", "max", "max")],
    "uint8_max": [("uint8", "tensor", "max", "max")],
    "float_max": [("serving_default", "tensor", "max", "max")],
    "uint8_20000_then_256": [("uint8", "tensor", 20000, 20000), ("uint8", "tensor", 256, 256)],
}


def big_png(path, height, width):
    """An RGB PNG of zeros, compressed row by row (never the whole image in memory)."""
    import struct

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressor, row, body = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(height):
        body.append(compressor.compress(row))
    body.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")
    Path(path).write_bytes(data)


def peak_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_case(model, case, side, png_file):
    """In this (fresh) process: load `model` as TF Serving does and send the case's requests."""
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    records = []
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], model)
        records.append({"request": "load", "peak_rss_mb": peak_mb()})
        for signature_name, kind, height, width in CASES[case]:
            height, width = (side if height == "max" else height), (side if width == "max" else width)
            signature = meta_graph.signature_def[signature_name]
            (input_name,) = signature.inputs
            (output_name,) = signature.outputs
            if kind == "png_file":
                value = np.array([Path(png_file).read_bytes()], dtype=object)
            elif kind == "png":
                pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, "PNG")
                value = np.array([buffer.getvalue()], dtype=object)
            else:
                dtype = "uint8" if signature_name == "uint8" else "float32"
                value = np.zeros((1, height, width, 3), dtype)
            request_bytes = sum(len(v) for v in value) if value.dtype == object else value.nbytes
            start = time.perf_counter()
            try:
                session.run(signature.outputs[output_name].name, {signature.inputs[input_name].name: value})
                outcome, message = "accepted", None
            except tf.errors.InvalidArgumentError as error:
                outcome = "refused"
                message = next(line for line in error.message.splitlines() if "assertion failed" in line)
            del value
            records.append(
                {
                    "request": f"{signature_name} {height}x{width}",
                    "request_mb": round(request_bytes / 2**20, 1),
                    "outcome": outcome,
                    "message": message,
                    "seconds": round(time.perf_counter() - start, 2),
                    "peak_rss_mb": peak_mb(),
                }
            )
    print(json.dumps(records))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--max-pixels", type=int, default=None, help="default: the export default")
    parser.add_argument("--out", default="bench/results/serving_memory.json")
    parser.add_argument("--run-case", nargs=4, metavar=("MODEL", "CASE", "SIDE", "PNG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_case:
        model, case, side, png_file = args.run_case
        return run_case(model, case, int(side), png_file)

    import math

    import keras

    from cyclegan_keras import export, networks
    from cyclegan_keras.config import SERVING_MAX_PIXELS

    max_pixels = args.max_pixels or SERVING_MAX_PIXELS
    side = math.isqrt(max_pixels)
    keras.utils.set_random_seed(0)
    generator = networks.build_generator("resnet_9blocks")
    results = {"generator": "resnet_9blocks", "filters": 64, "max_pixels": max_pixels, "max_side": side, "cases": {}}
    with tempfile.TemporaryDirectory() as work:
        model = Path(work) / "saved_model" / "1"
        start = time.perf_counter()
        export.export_saved_model(generator, model, max_pixels=max_pixels)
        results["export_seconds"] = round(time.perf_counter() - start, 1)
        png_file = Path(work) / "20000x20000.png"
        big_png(png_file, 20000, 20000)
        results["png_20000_file_mb"] = round(png_file.stat().st_size / 2**20, 2)
        for case in args.cases:
            run = subprocess.run(
                [sys.executable, __file__, "--run-case", str(model), case, str(side), str(png_file)],
                capture_output=True,
                text=True,
            )
            if run.returncode != 0:
                records = {"error": f"exit {run.returncode}: {run.stderr.strip().splitlines()[-1:]}"}
            else:
                records = json.loads(run.stdout.strip().splitlines()[-1])
            results["cases"][case] = records
            print(case, json.dumps(records, indent=1))
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
