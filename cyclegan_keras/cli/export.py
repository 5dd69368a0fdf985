"""Export a trained generator for production and check it equals the Keras model.

    python export.py --model runs/horse2zebra/model.keras --out exported/
    python export.py --model runs/horse2zebra --direction b2a --format tflite \\
        --tflite-quantization int8 --representative datasets/horse2zebra/testB --out exported/

Writes OUT/saved_model/1/ (TF Serving: signatures serving_default, uint8,
bytes), OUT/generator_<variant>.tflite, and OUT/export_report.json: every
artifact reloaded in a fresh process and compared with the Keras model (max
abs error, PSNR, size, ops, latency).
"""

import argparse
import os
import sys

from cyclegan_keras import _env

QUANTIZATIONS = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8"}


def parser():
    result = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = result.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a .keras file (CycleGAN or generator) or a training work directory")
    source.add_argument("--from-torch", help="a PyTorch generator state dict (.pth) of the authors' code")
    result.add_argument("--out", required=True, help="output folder")
    result.add_argument("--direction", default="a2b", choices=["a2b", "b2a"], help="which generator (default: a2b)")
    result.add_argument("--format", default="all", choices=["saved_model", "tflite", "all"], help="default: all")
    result.add_argument(
        "--tflite-quantization",
        default="none",
        choices=[*QUANTIZATIONS, "all"],
        help="none (float32), float16, dynamic (int8 weights), int8 (calibrated), or all (default: none)",
    )
    result.add_argument("--representative", help="folder of input-domain images: int8 calibration and parity samples")
    result.add_argument(
        "--sample-size", type=int, default=256, help="side of the synthetic parity samples (default: 256)"
    )
    return result


def load_representative(folder, channels, size):
    from cyclegan_keras import data

    preprocessing = data.Preprocessing(load_size=size, crop_size=size, flip=False, channels=channels)
    domain = data.folder_domain(folder, preprocessing)
    return list(data.domain_images(domain, preprocessing, count=64))


def main(argv=None):
    args = parser().parse_args(argv)
    _env.import_tensorflow()
    from cyclegan_keras import export
    from cyclegan_keras.data import DataError

    try:
        if args.from_torch:
            from cyclegan_keras.convert import load_torch_generator

            generator = load_torch_generator(args.from_torch)
            os.makedirs(args.out, exist_ok=True)
            generator.save(os.path.join(args.out, "generator.keras"))
        else:
            from cyclegan_keras.inference import load_generator

            generator = load_generator(args.model, args.direction)
        channels = generator.input_shape[-1]
        representative = samples = None
        if args.representative:
            representative = load_representative(args.representative, channels, args.sample_size)
            samples = representative[:2]
        formats = ("saved_model", "tflite") if args.format == "all" else (args.format,)
        variants = (
            tuple(QUANTIZATIONS.values())
            if args.tflite_quantization == "all"
            else (QUANTIZATIONS[args.tflite_quantization],)
        )
        if samples is None:
            samples = export.sample_images(generator, args.sample_size)
        report = export.export(generator, args.out, formats, variants, representative, samples)
    except (DataError, FileNotFoundError, ValueError, export.ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{'artifact':34} {'max abs err':>11} {'PSNR dB':>8} {'MB':>7} {'ms/image':>9}  float ops")
    for artifact in report["artifacts"]:
        print(
            f"{artifact['path']:34} {artifact['max_abs_error']:11.2e} {str(artifact['psnr_db']):>8} "
            f"{artifact['size_bytes'] / 2**20:7.2f} {artifact['latency_ms_per_image']:9.1f}  "
            f"{','.join(artifact.get('float_ops', [])) or '-'}"
        )
    report_path = os.path.join(args.out, "export_report.json")
    print(f"Keras: {report['keras_latency_ms_per_image']} ms/image. Report: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
