"""Score a translation: FID, KID, PSNR/SSIM/MAE and label scores, beside the identity baseline.

    # translate testA with a model and score against the real testB
    python evaluate.py --model runs/horse2zebra/model.keras --direction a2b --input testA/ --real testB/
    # images already translated (another tool's output), as pytorch-fid scores two folders
    python evaluate.py --fake results/ --real testB/ [--input testA/ for the baseline]
    # paired ground truth and the paper's Cityscapes label scores
    python evaluate.py --model photo2label.keras --input testA/ --truth testB/ --labels cityscapes
    # one of the authors' generators by name (downloaded and converted once)
    python evaluate.py --pretrained horse2zebra --input testA/ --real testB/

FID/KID need the FID Inception weights (pt_inception-2015-12-05-6726825d.pth):
--inception-weights, $CYCLEGAN_INCEPTION_WEIGHTS or ~/.cache/cyclegan_keras/;
without them the other scores are still computed.
"""

import json
import sys
from pathlib import Path

from cyclegan_keras import _env, files
from cyclegan_keras.cli import args as cli_args
from cyclegan_keras.cli import full_disk_exits_1
from cyclegan_keras.config import RESIZE_MODES


def parser():
    result = cli_args.ArgumentParser(description=__doc__)
    source = result.add_mutually_exclusive_group(required=True)
    model_help = "a .keras file, work directory, SavedModel directory, .tflite or .onnx file"
    source.add_argument("--model", type=cli_args.model_source, help=model_help)
    source.add_argument("--fake", type=cli_args.image_folder, help="a folder of images already translated")
    cli_args.add_pretrained_argument(source)
    cli_args.add_direction_argument(result)
    for flag, kind, text in (
        ("--input", cli_args.image_folder, "input-domain images: translated with --model; the identity baseline"),
        ("--real", cli_args.fid_image_folder, "target-domain images for FID and KID (>= 2)"),
        ("--truth", cli_args.image_folder, "ground truth of each input, matched by file name: PSNR, SSIM, MAE"),
        ("--labels", cli_args.labels_source, "label scores of label maps: 'cityscapes' or a palette file (R G B name)"),
        (
            "--inception-weights",
            cli_args.inception_weights_file,
            "FID Inception weights (.pth of pytorch-fid, or TorchScript .pt)",
        ),
    ):
        result.add_argument(flag, type=kind, help=text)
    result.add_argument("--resize-mode", default="pytorch-fid", choices=RESIZE_MODES, help="default: pytorch-fid")
    for flag, minimum, default, text in (
        ("--batch-size", 1, 50, "images per batch, >= 1 (default: 50)"),
        ("--kid-subsets", 1, 100, "KID subsets, >= 1 (default: 100, clean-fid's)"),
        ("--kid-subset-size", 2, 1000, "KID subset size, >= 2 (default: 1000)"),
    ):
        result.add_argument(flag, type=cli_args.Range(minimum), default=default, help=text)
    cli_args.add_memory_arguments(result)
    result.add_argument(
        "--json",
        type=cli_args.output_file,
        help="write the scores and settings to this JSON file (never over a file evaluate.py did not write)",
    )
    result.add_argument("--quiet", action="store_true", help="no progress bars")
    return result


def check_args(args):
    if (args.model or args.pretrained) and not args.input:
        return f"--{'model' if args.model else 'pretrained'} needs --input (the images to translate)"
    if not args.real and not args.truth:
        return "nothing to score: give --real (FID, KID) and/or --truth (PSNR, SSIM, MAE)"
    if args.labels and not args.truth:
        return "--labels needs --truth (the true label maps)"
    for flag in ("max_memory", "tile_size", "tile_overlap"):
        if getattr(args, flag) is not None and not (args.model or args.pretrained):
            return f"--{flag.replace('_', '-')} applies only with --model or --pretrained (it bounds the translation)"
    return cli_args.lone_generator_problem(args)


@full_disk_exits_1
def main(argv=None):
    cli = parser()
    args = cli.parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.json:
        manifest = files.Manifest(Path(args.json).parent)
        try:
            manifest.check([Path(args.json).name])
        except files.ForeignFile as error:
            print(f"error: argument --json: {error}", file=sys.stderr)
            return 2
    _env.import_tensorflow()
    from cyclegan_keras import inference, metrics, pth

    if args.pretrained:
        args.model = cli_args.fetch_pretrained(cli, args.pretrained)
    try:
        scores, notes = run(args)
    except inference.MemoryBudgetError as error:
        print(f"error: argument --max-memory: {error}", file=sys.stderr)
        return 2
    # Also data.DataError, metrics.MetricError, pth.ConversionError (ValueErrors) and WeightsNotFound.
    except (pth.UnsafePickleError, FileNotFoundError, ValueError) as error:
        flag = _flag_holding(getattr(error, "path", None), args)
        print(f"error: {f'argument {flag}: ' if flag else ''}{error}", file=sys.stderr)
        return 2
    for note in notes:
        print(note)
    print(format_table(scores))
    if args.json:
        manifest.write_text(Path(args.json).name, json.dumps(metrics.finite_or_str(scores), indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0


def _flag_holding(path, args):
    """The folder flag (`--fake`, `--input`, ...) whose folder holds `path`, or None."""
    if path is None:
        return None
    for name in ("fake", "input", "real", "truth"):
        folder = getattr(args, name)
        if folder and Path(path).resolve().is_relative_to(Path(folder).resolve()):
            return f"--{name}"
    return None


def run(args):
    """Loads what the flags name, scores it, and returns `(scores, notes to print)`."""
    from cyclegan_keras import data, fid_inception, metrics

    settings = metrics.EvalSettings(
        batch_size=args.batch_size,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        verbose=not args.quiet,
    )
    notes = []
    real_paths = data.list_image_files(args.real) if args.real else None
    truth_paths = data.list_image_files(args.truth) if args.truth else None
    input_paths = data.list_image_files(args.input) if args.input else None
    if real_paths is not None and len(real_paths) < 2:
        raise metrics.MetricError(f"FID needs at least 2 images; --real {args.real} has {len(real_paths)}")
    palette = None
    if args.labels:
        palette = (
            metrics.Palette.cityscapes() if args.labels == "cityscapes" else metrics.Palette.from_file(args.labels)
        )
    features = None
    if real_paths is not None:
        weights = fid_inception.find_weights(args.inception_weights)
        if weights is None:
            if truth_paths is None:
                raise fid_inception.WeightsNotFound(
                    f"FID and KID need the FID Inception weights, and nothing else was asked (--truth). "
                    f"{fid_inception.download_hint()}"
                )
            notes.append(f"FID/KID skipped: no FID Inception weights found. {fid_inception.download_hint()}")
        else:
            features = fid_inception.load_inception(weights, args.resize_mode)
    scored = dict(real_paths=real_paths, truth_paths=truth_paths, features=features, palette=palette)
    scored.update(settings=settings, truth_root=args.truth)
    if args.model:
        from cyclegan_keras.translation import load_translator

        translator = load_translator(args.model, args.direction, args.max_memory, args.tile_size, args.tile_overlap)
        scores = metrics.evaluate_generator(
            translator,
            input_paths,
            input_channels=translator.input_channels,
            output_channels=translator.output_channels,
            input_root=args.input,
            **scored,
        )
        source = {"model": str(args.model), "model_kind": translator.kind, "direction": args.direction}
        if args.pretrained:
            source["pretrained"] = args.pretrained
    else:
        fake_paths = data.list_image_files(args.fake)
        scores = metrics.evaluate_folders(
            fake_paths, input_paths=input_paths, fake_root=args.fake, input_root=args.input, **scored
        )
        source = {"fake": str(args.fake)}
    if real_paths is not None and features is None:
        scores["fid_skipped"] = "no FID Inception weights file (see --inception-weights)"
    scores["settings"].update(source, input=args.input, real=args.real, truth=args.truth)
    return scores, notes


ROWS = (
    ("fid", "FID", "{:.3f}"),
    ("kid_mean", "KID x 1000", None),
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("mae", "MAE (0..255)", "{:.2f}"),
    ("pixel_accuracy", "per-pixel acc.", "{:.3f}"),
    ("class_accuracy", "per-class acc.", "{:.3f}"),
    ("class_iou", "class IoU", "{:.3f}"),
)


def _cell(scores, key, fmt):
    if scores is None or key not in scores:
        return ""
    if scores[key] is None:
        return "skipped"
    if key == "kid_mean":
        return f"{1000 * scores['kid_mean']:.3f} +- {1000 * scores['kid_std']:.3f}"
    return fmt.format(scores[key])


def format_table(scores):
    """The model's scores beside the identity baseline's, one metric a line."""
    identity = scores.get("identity")
    lines = [f"{'':16} {'model':>20} {'identity (input)':>20}" if identity else f"{'':16} {'model':>20}"]
    for key, label, fmt in ROWS:
        if key not in scores:
            continue
        line = f"{label:16} {_cell(scores, key, fmt):>20}"
        lines.append(line + (f" {_cell(identity, key, fmt):>20}" if identity else ""))
    settings = scores["settings"]
    summary = f"{settings['images']} image(s)"
    if settings.get("real_images"):
        summary += f" vs {settings['real_images']} real"
    if settings.get("resize_mode"):
        digest = (settings.get("inception_weights_sha256") or "random")[:12]
        summary += f"; Inception resize {settings['resize_mode']}, weights sha256 {digest}"
    lines.append(summary)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
