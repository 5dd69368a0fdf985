"""Export a trained generator for production and check it equals the Keras model.

    python export.py --model runs/horse2zebra/model.keras --out exported/
    python export.py --model runs/horse2zebra --direction BtoA --format tflite \\
        --tflite-quantization int8 --representative datasets/horse2zebra/testB --out exported/
    python export.py --from-torch horse2zebra.pth --out horse2zebra/
    python export.py --pretrained horse2zebra --out horse2zebra/

Writes OUT/saved_model/1/ (TF Serving), OUT/generator_<variant>.tflite (and
OUT/generator.keras with --from-torch or --pretrained, OUT/generator.onnx with --onnx) once every
artifact, reloaded in a fresh process, matches the Keras model; OUT/export_report.json has the figures. With
--eval-real DIR the report also scores each artifact's translations: FID/KID
against DIR (weights: --inception-weights, $CYCLEGAN_INCEPTION_WEIGHTS or
~/.cache/cyclegan_keras/) and PSNR/SSIM/MAE against Keras.
"""

import os
import sys

from cyclegan_keras import _env, files
from cyclegan_keras.cli import args as cli_args
from cyclegan_keras.cli import full_disk_exits_1
from cyclegan_keras.config import EXPORT_ALIASES, EXPORT_PRECISIONS, ONNX_INSTALL, SERVING_MAX_PIXELS, TFLITE_VARIANTS

MIN_SAMPLE_SIZE = 8  # the odd-sized parity sample is (size - 6) x (size + 10)


def parser():
    result = cli_args.ArgumentParser(description=__doc__)
    source = result.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        type=cli_args.keras_model,
        help="a .keras file (CycleGAN or generator) or a training work directory",
    )
    source.add_argument(
        "--from-torch", type=cli_args.torch_file, help="a PyTorch generator state dict (.pth) of the authors' code"
    )
    cli_args.add_pretrained_argument(source)
    result.add_argument("--out", required=True, type=cli_args.output_folder, help="output folder")
    cli_args.add_direction_argument(result)
    result.add_argument("--format", default="all", choices=["saved_model", "tflite", "all"], help="default: all")
    result.add_argument(
        "--onnx",
        action="store_true",
        help="also write OUT/generator.onnx (any batch, height and width), verified with onnxruntime; "
        f"needs the [onnx] extra: {ONNX_INSTALL}",
    )
    result.add_argument(
        "--precision",
        default="float32",
        type=_current_name,
        choices=EXPORT_PRECISIONS,
        help="what the SavedModel computes in (float32 in and out); mixed_bfloat16 (or bfloat16) is for GPUs, "
        "TPUs and CPUs with AMX or AVX512-BF16 (default: float32)",
    )
    result.add_argument(
        "--max-pixels",
        type=cli_args.Range(1),
        default=SERVING_MAX_PIXELS,
        help="the most pixels (height x width, summed over its images) one SavedModel request may hold; larger "
        f"ones get INVALID_ARGUMENT before decoding (default: {SERVING_MAX_PIXELS} = 2048x2048)",
    )
    result.add_argument(
        "--tflite-quantization",
        default=None,
        type=_current_name,
        choices=[*TFLITE_VARIANTS, "all"],
        help="float32 (or none: no quantization), float16, dynamic (int8 weights), int8 (calibrated), or all "
        "(default: float32)",
    )
    for flag, kind, text in (
        (
            "--representative",
            cli_args.image_folder,
            "folder of input-domain images: int8 calibration and parity samples (default: synthetic images)",
        ),
        (
            "--eval-real",
            cli_args.fid_image_folder,
            "target-domain images: score every artifact's translations with FID/KID against them",
        ),
        (
            "--eval-input",
            cli_args.image_folder,
            "input-domain images translated for --eval-real (default: --representative)",
        ),
        (
            "--inception-weights",
            cli_args.torch_file,
            "FID Inception weights for --eval-real (pytorch-fid's .pth or the TorchScript .pt)",
        ),
    ):
        result.add_argument(flag, type=kind, help=text)
    result.add_argument(
        "--sample-size",
        type=cli_args.Range(MIN_SAMPLE_SIZE),
        default=256,
        help=f"side of the parity samples, >= {MIN_SAMPLE_SIZE} (default: 256)",
    )
    return result


def _current_name(text):
    """argparse type: the older spellings `bfloat16` and `none` as today's names."""
    return EXPORT_ALIASES.get(text, text)


def load_representative(folder, channels, size):
    from cyclegan_keras import data

    preprocessing = data.Preprocessing(load_size=size, crop_size=size, flip=False, channels=channels)
    domain = data.folder_domain(folder, preprocessing)
    return list(data.domain_images(domain, preprocessing, count=64))


@full_disk_exits_1
def main(argv=None):
    cli = parser()
    args = cli.parse_args(argv)
    if args.tflite_quantization is not None and args.format == "saved_model":
        cli.error(f"argument --tflite-quantization: applies only with --format tflite or all. Received: {args.format}")
    if cli_args.lone_generator_problem(args):
        cli.error(cli_args.lone_generator_problem(args))
    for flag in ("eval_input", "inception_weights"):
        if getattr(args, flag) and not args.eval_real:
            cli.error(f"argument --{flag.replace('_', '-')}: applies only with --eval-real")
    sample_pixels = args.sample_size**2 if args.representative else (args.sample_size - 6) * (args.sample_size + 10)
    if args.format != "tflite" and args.max_pixels < sample_pixels:
        cli.error(
            f"argument --max-pixels: the SavedModel is verified on --sample-size {args.sample_size} samples of up "
            f"to {sample_pixels} pixels; give at least that or a smaller --sample-size. Received: {args.max_pixels}"
        )
    if args.eval_real and not (args.eval_input or args.representative):
        cli.error(
            "argument --eval-real: needs input-domain images to translate: --eval-input DIR (or --representative)"
        )
    _env.import_tensorflow()
    from cyclegan_keras import export
    from cyclegan_keras.data import DataError

    if args.onnx:
        try:
            export.require_onnx()
        except export.MissingPackage as error:
            cli.error(f"argument --onnx: {error}")
    generator = load_source(cli, args)
    channels = generator.input_shape[-1]
    representative = samples = None
    if args.representative:
        try:
            representative = load_representative(args.representative, channels, args.sample_size)
        except DataError as error:
            cli.error(f"argument --representative: {error}")
        samples = representative[:2]
    formats = ("saved_model", "tflite") if args.format == "all" else (args.format,)
    formats += ("onnx",) if args.onnx else ()
    quantization = args.tflite_quantization or "float32"
    variants = TFLITE_VARIANTS if quantization == "all" else (quantization,)
    if samples is None:
        samples = export.sample_images(generator, args.sample_size)
    evaluation = prepare_evaluation(cli, args, generator) if args.eval_real else None
    try:
        report = export.export(
            generator,
            args.out,
            formats,
            variants,
            representative,
            samples,
            save_generator=bool(args.from_torch or args.pretrained),
            precision=args.precision,
            max_pixels=args.max_pixels,
        )
    except export.ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (files.ForeignFile, files.FolderInUse) as error:
        cli.error(f"argument --out: {error}")
    print(f"{'artifact':34} {'max abs err':>11} {'PSNR dB':>8} {'MB':>7} {'ms/image':>9}  float ops")
    for artifact in report["artifacts"]:
        label = (
            artifact["path"]
            if artifact["variant"] in artifact["path"]
            else f"{artifact['path']} [{artifact['variant']}]"
        )
        print(
            f"{label:34} {artifact['max_abs_error']:11.2e} {str(artifact['psnr_db']):>8} "
            f"{artifact['size_bytes'] / 2**20:7.2f} {artifact['latency_ms_per_image']:9.1f}  "
            f"{','.join(artifact.get('float_ops', [])) or '-'}"
        )
    report_path = os.path.join(args.out, "export_report.json")
    print(f"Keras: {report['keras_latency_ms_per_image']} ms/image. Report: {report_path}")
    if evaluation is not None:
        return evaluate(args, generator, report, report_path, **evaluation)
    return 0


def prepare_evaluation(cli, args, generator):
    """The images and the FID network of --eval-real, checked before any export."""
    from cyclegan_keras import data, fid_inception, metrics, pth

    input_folder = args.eval_input or args.representative
    input_paths = data.list_image_files(input_folder)
    real_paths = data.list_image_files(args.eval_real)
    try:
        metrics.check_channels(
            "the model's outputs",
            generator.output_shape[-1],
            "the --eval-real images",
            metrics.set_channels(real_paths),
        )
    except metrics.MetricError as error:
        cli.error(f"argument --eval-real: {error}")
    if len(input_paths) < 2:
        cli.error(f"argument --eval-input: FID needs at least 2 images; {input_folder} holds {len(input_paths)}")
    try:
        weights = fid_inception.find_weights(args.inception_weights)
        features = None if weights is None else fid_inception.load_inception(weights)
    except (FileNotFoundError, ValueError, pth.UnsafePickleError) as error:
        cli.error(f"argument --inception-weights: {error}")
    what = f"FID/KID against the {len(real_paths)} images of {args.eval_real} (weights {weights})"
    if features is None:
        what = f"no FID/KID: no FID Inception weights ({fid_inception.download_hint()})"
    print(
        f"After the export, each artifact translates the {len(input_paths)} images of {input_folder}: "
        f"{what}; PSNR/SSIM/MAE against the Keras translations"
    )
    return {"input_paths": input_paths, "real_paths": real_paths, "features": features}


def evaluate(args, generator, report, report_path, input_paths, real_paths, features):
    """Scores every artifact (export.evaluate_artifacts), prints the table, rewrites the report."""
    import json

    from cyclegan_keras import data, export, metrics

    try:
        export.evaluate_artifacts(generator, args.out, report, input_paths, real_paths, features)
    except (data.DataError, metrics.MetricError) as error:
        print(f"error: scoring the exports: {error} (the export itself is complete in {args.out})", file=sys.stderr)
        return 1
    files.Manifest(args.out).write_text("export_report.json", json.dumps(report, indent=2) + "\n")
    print(format_evaluation(report))
    return 0


def format_evaluation(report):
    """One row per model: FID, KID and the scores against the Keras translations."""
    evaluation = report["evaluation"]

    def cell(scores, key, fmt):
        value = (scores or {}).get(key)
        if value is None:
            return "-"
        if isinstance(value, str):
            return value
        return fmt.format(1000 * value if key.startswith("kid") else value)

    rows = [("Keras", evaluation["keras"])]
    rows += [(artifact["path"], artifact.get("evaluation")) for artifact in report["artifacts"]]
    if evaluation.get("identity"):
        rows.append(("the inputs themselves", evaluation["identity"]))
    title = f"{evaluation['images']} image(s)"
    if evaluation["real_images"] and not evaluation["fid_skipped"]:
        title += f" vs {evaluation['real_images']} real"
    lines = [f"{title:34} {'FID':>9} {'KID x 1000':>17} {'PSNR vs Keras':>14} {'SSIM':>7} {'MAE':>6}"]
    for name, scores in rows:
        kid = "-"
        if scores and scores.get("kid_mean") is not None:
            kid = f"{cell(scores, 'kid_mean', '{:.3g}')} +- {cell(scores, 'kid_std', '{:.2g}')}"
        lines.append(
            f"{name:34} {cell(scores, 'fid', '{:.4g}'):>9} {kid:>17} {cell(scores, 'psnr_vs_keras', '{:.2f}'):>14} "
            f"{cell(scores, 'ssim_vs_keras', '{:.4f}'):>7} {cell(scores, 'mae_vs_keras', '{:.2f}'):>6}"
        )
    return "\n".join(lines)


def load_source(cli, args):
    """The generator of --model, --from-torch or --pretrained; a file that does not load ends the command (exit 2)."""
    if args.from_torch:
        from cyclegan_keras import convert

        try:
            return convert.load_torch_generator(args.from_torch)
        except (
            FileNotFoundError,
            convert.CorruptCheckpointError,
            convert.UnsafePickleError,
            convert.ConversionError,
        ) as error:
            cli.error(f"argument --from-torch: {error}")
    from cyclegan_keras.translation import ModelLoadError, load_generator

    if args.pretrained:
        args.model = cli_args.fetch_pretrained(cli, args.pretrained)
    try:
        return load_generator(args.model, args.direction)
    except (FileNotFoundError, ModelLoadError) as error:
        cli.error(f"argument --model: {error}")
    except ValueError as error:
        cli.error(f"argument --direction: {error}")


if __name__ == "__main__":
    sys.exit(main())
