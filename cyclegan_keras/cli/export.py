"""Export a trained generator for production and check it equals the Keras model.

    python export.py --model runs/horse2zebra/model.keras --out exported/
    python export.py --model runs/horse2zebra --direction BtoA --format tflite \\
        --tflite-quantization int8 --representative datasets/horse2zebra/testB --out exported/
    python export.py --from-torch horse2zebra.pth --out horse2zebra/

Writes OUT/saved_model/1/ (TF Serving: signatures serving_default, uint8,
bytes), OUT/generator_<variant>.tflite, and OUT/export_report.json: every
artifact reloaded in a fresh process and compared with the Keras model (max
abs error, PSNR, size, ops, latency). With --from-torch also
OUT/generator.keras. Every flag is checked before any work, and OUT is
written only once everything is verified.
"""

import os
import sys

from cyclegan_keras import _env
from cyclegan_keras.cli import args as cli_args

QUANTIZATIONS = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8"}
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
    result.add_argument("--out", required=True, type=cli_args.output_folder, help="output folder")
    result.add_argument(
        "--direction",
        default="a2b",
        type=cli_args.direction,
        metavar="{a2b,b2a}",
        help="which generator of a CycleGAN; the reference's AtoB/BtoA also work (default: a2b)",
    )
    result.add_argument("--format", default="all", choices=["saved_model", "tflite", "all"], help="default: all")
    result.add_argument(
        "--precision",
        default="float32",
        choices=["float32", "bfloat16"],
        help="what the SavedModel computes in; bfloat16 (float32 in and out) is for GPUs, TPUs and CPUs "
        "with AMX or AVX512-BF16, its PSNR against float32 is in the report (default: float32)",
    )
    result.add_argument(
        "--tflite-quantization",
        default=None,
        choices=[*QUANTIZATIONS, "all"],
        help="none (float32), float16, dynamic (int8 weights), int8 (calibrated), or all (default: none)",
    )
    result.add_argument(
        "--representative",
        type=cli_args.image_folder,
        help="folder of input-domain images: int8 calibration and parity samples (default: synthetic images)",
    )
    result.add_argument(
        "--sample-size",
        type=cli_args.IntRange(MIN_SAMPLE_SIZE),
        default=256,
        help=f"side of the parity samples, >= {MIN_SAMPLE_SIZE} (default: 256)",
    )
    return result


def load_representative(folder, channels, size):
    from cyclegan_keras import data

    preprocessing = data.Preprocessing(load_size=size, crop_size=size, flip=False, channels=channels)
    domain = data.folder_domain(folder, preprocessing)
    return list(data.domain_images(domain, preprocessing, count=64))


def main(argv=None):
    cli = parser()
    args = cli.parse_args(argv)
    if args.tflite_quantization is not None and args.format == "saved_model":
        cli.error(f"argument --tflite-quantization: applies only with --format tflite or all. Received: {args.format}")
    if args.from_torch and args.direction != "a2b":
        cli.error("argument --direction: a --from-torch file holds one generator, which translates its own direction")
    _env.import_tensorflow()
    from cyclegan_keras import export
    from cyclegan_keras.data import DataError

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
    quantization = args.tflite_quantization or "none"
    variants = tuple(QUANTIZATIONS.values()) if quantization == "all" else (QUANTIZATIONS[quantization],)
    if samples is None:
        samples = export.sample_images(generator, args.sample_size)
    try:
        report = export.export(
            generator,
            args.out,
            formats,
            variants,
            representative,
            samples,
            save_generator=bool(args.from_torch),
            precision=args.precision,
        )
    except export.ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
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
    return 0


def load_source(cli, args):
    """The generator of --model or --from-torch; a file that does not load ends the command (exit 2)."""
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
    from cyclegan_keras.inference import ModelLoadError, load_generator

    try:
        return load_generator(args.model, args.direction)
    except (FileNotFoundError, ModelLoadError) as error:
        cli.error(f"argument --model: {error}")
    except ValueError as error:
        cli.error(f"argument --direction: {error}")


if __name__ == "__main__":
    sys.exit(main())
