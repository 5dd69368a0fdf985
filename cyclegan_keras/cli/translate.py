"""Translate images with a trained CycleGAN (or a converted generator).

    python translate.py --model runs/synthetic/model.keras --input photos/ --out translated/
    python translate.py --model runs/horse2zebra --direction b2a --input 'zebras/*.jpg' --out horses/

Outputs have each input's own size; OUT/index.html shows input | output.
"""

import argparse
import os
import sys

from cyclegan_keras import _env


def parser():
    result = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--model", required=True, help="a .keras file or a training work directory")
    result.add_argument("--input", required=True, help="an image file, a folder (recursive) or a glob pattern")
    result.add_argument("--out", required=True, help="output folder")
    result.add_argument("--direction", default="a2b", choices=["a2b", "b2a"], help="default: a2b")
    result.add_argument("--batch-size", type=int, default=4, help="images of the same size per batch (default: 4)")
    return result


def main(argv=None):
    args = parser().parse_args(argv)
    _env.import_tensorflow()
    from cyclegan_keras.data import DataError
    from cyclegan_keras.inference import load_generator, translate_files

    try:
        generator = load_generator(args.model, args.direction)
        written, bad = translate_files(generator, args.input, args.out, args.batch_size)
    except (DataError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"Wrote {len(written)} image(s) and {os.path.join(args.out, 'index.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
