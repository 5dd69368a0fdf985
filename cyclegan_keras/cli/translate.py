"""Translate images with a trained CycleGAN (or a converted generator).

    python translate.py --model runs/synthetic/model.keras --input photos/ --out translated/
    python translate.py --model runs/horse2zebra --direction BtoA --input 'zebras/*.jpg' --out horses/
    python translate.py --model horse2zebra/generator.keras --input horses/ --out zebras/ --preprocess resize
    python translate.py --pretrained horse2zebra --input photo.jpg --out out/

Each image keeps its own size (--preprocess none) or is resized to a
--load-size square as the reference's test.py (--preprocess resize);
OUT/index.html shows input | output. It never replaces a file in --out that
it did not write, and clashing names get _1, _2, ... suffixes. Images that
do not fit --max-memory are translated in overlapping tiles.
"""

import os
import sys
from pathlib import Path

from cyclegan_keras import _env, files
from cyclegan_keras.cli import args as cli_args
from cyclegan_keras.cli import full_disk_exits_1
from cyclegan_keras.config import DEFAULT_LOAD_SIZE, INFERENCE_PREPROCESS


def parser():
    result = cli_args.ArgumentParser(description=__doc__)
    source = result.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=cli_args.keras_model, help="a .keras file or a training work directory")
    cli_args.add_pretrained_argument(source)
    result.add_argument(
        "--input",
        required=True,
        type=cli_args.image_source,
        help="an image file, a folder (recursive) or a glob pattern (quote it)",
    )
    result.add_argument(
        "--out", required=True, type=cli_args.output_folder, help="output folder, outside any --input folder"
    )
    cli_args.add_direction_argument(result)
    result.add_argument(
        "--batch-size",
        type=cli_args.Range(1),
        default=4,
        help="images of the same size translated together, >= 1; at most this many are held in memory (default: 4)",
    )
    result.add_argument(
        "--preprocess",
        default="none",
        choices=INFERENCE_PREPROCESS,
        help="none: the input's own size; resize: a square --load-size, as the reference's test.py (default: none)",
    )
    result.add_argument(
        "--load-size",
        type=cli_args.Range(1),
        help=f"side of the square with --preprocess resize, >= 1 (default: {DEFAULT_LOAD_SIZE}, the reference's)",
    )
    cli_args.add_memory_arguments(result)
    return result


@full_disk_exits_1
def main(argv=None):
    cli = parser()
    args = cli.parse_args(argv)
    if args.load_size is not None and args.preprocess != "resize":
        cli.error(f"argument --load-size: applies only with --preprocess resize. Received: {args.load_size}")
    out, folder = Path(os.path.realpath(args.out)), Path(os.path.realpath(args.input))
    if os.path.isdir(args.input) and (out == folder or folder in out.parents):  # translation.plan_outputs' rule
        cli.error(
            f"argument --out: {args.out} is inside the input folder {args.input}: the translations would mix with "
            "the originals and be read as inputs next time; choose a folder outside it"
        )
    if cli_args.lone_generator_problem(args):
        cli.error(cli_args.lone_generator_problem(args))
    _env.import_tensorflow()
    from cyclegan_keras import inference, translation
    from cyclegan_keras.data import DataError

    try:
        translation.plan_outputs(args.input, args.out)
    except translation.OutputConflict as error:
        cli.error(f"argument --out: {error}")
    except DataError as error:
        cli.error(f"argument --input: {error}")
    if args.pretrained:
        args.model = cli_args.fetch_pretrained(cli, args.pretrained)
    try:
        generator = translation.load_generator(args.model, args.direction)
    except translation.ModelLoadError as error:
        cli.error(f"argument --model: {error}")
    except ValueError as error:
        cli.error(f"argument --direction: {error}")
    try:
        inference.check_tiling(generator, args.tile_size, args.tile_overlap)
    except ValueError as error:
        cli.error(f"argument --tile-size: {error}")
    try:
        written, bad = translation.translate_files(
            generator,
            args.input,
            args.out,
            args.batch_size,
            args.preprocess,
            args.load_size or DEFAULT_LOAD_SIZE,
            verbose=sys.stdout.isatty(),  # no progress bar escapes in logs
            max_memory=args.max_memory,
            tile_size=args.tile_size,
            overlap=args.tile_overlap,
        )
    except inference.MemoryBudgetError as error:
        cli.error(f"argument --max-memory: {error}")
    except DataError as error:
        cli.error(f"argument --input: {error}")
    except (translation.OutputConflict, files.FolderInUse) as error:  # found again once --out is locked
        cli.error(f"argument --out: {error}")
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"Wrote {len(written)} image(s) and {os.path.join(args.out, 'index.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
