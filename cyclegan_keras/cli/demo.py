"""A web page to try a model in the browser: drop or pick a photo and see it translated (Gradio).

    python demo.py --model runs/synthetic                        # then open http://127.0.0.1:7860
    python demo.py --pretrained horse2zebra                      # the authors' generator, downloaded once
    python demo.py --model horse2zebra/generator.keras --examples 'horses/*.jpg'
    python demo.py --model runs/horse2zebra --host 0.0.0.0 --port 8080   # reachable from other machines

A CycleGAN offers both directions, a lone generator its own. Photos are read and translated as
translate.py does (EXIF orientation applied; tiles for a photo over --max-memory). Needs the demo extra:
pip install cyclegan-keras[demo]. Nothing is shared or sent out: no share link, no Gradio telemetry.
"""

import os
import sys
import tempfile
from pathlib import Path

from cyclegan_keras import _env
from cyclegan_keras.cli import args as cli_args
from cyclegan_keras.cli import full_disk_exits_1

MAX_EXAMPLES = 8
# Told before TensorFlow is imported (cyclegan_keras.demo imports it): at once, and where it is missing too.
GRADIO_MISSING = "the demo page needs Gradio: pip install cyclegan-keras[demo]"


def parser():
    result = cli_args.ArgumentParser(description=__doc__)
    source = result.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=cli_args.keras_model, help="a .keras file or a training work directory")
    cli_args.add_pretrained_argument(source)
    result.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on; 0.0.0.0: every address of this machine (default: %(default)s)",
    )
    result.add_argument(
        "--port", type=cli_args.Range(1, 65535), default=7860, help="port to serve on (default: %(default)s)"
    )
    result.add_argument(
        "--examples",
        type=cli_args.image_source,
        help=f"example photos of domain A, translated a2b: an image file, a folder or a glob (the first "
        f"{MAX_EXAMPLES}; default: one synthetic image per direction, from the set train.py trains on)",
    )
    cli_args.add_memory_arguments(result)
    return result


@full_disk_exits_1
def main(argv=None):
    cli = parser()
    args = cli.parse_args(argv)
    try:
        import gradio  # noqa: F401  (before TensorFlow: a missing extra is told at once)
    except ImportError:
        print(f"error: {GRADIO_MISSING}", file=sys.stderr)
        return 1
    _env.import_tensorflow()
    from cyclegan_keras import demo, inference, translation

    if args.pretrained:
        args.model = cli_args.fetch_pretrained(cli, args.pretrained)
    try:
        generators = translation.load_generators(args.model)
    except translation.ModelLoadError as error:
        cli.error(f"argument --model: {error}")
    try:
        for generator in generators.values():
            inference.check_tiling(generator, args.tile_size, args.tile_overlap)
    except ValueError as error:
        cli.error(f"argument --tile-size: {error}")
    with tempfile.TemporaryDirectory(prefix="cyclegan_demo_") as folder:
        if args.examples:
            paths, _ = translation.resolve_inputs(args.examples)
            examples = [(path, "a2b") for path in paths[:MAX_EXAMPLES]]
        else:
            channels = next(iter(generators.values())).input_shape[-1]
            examples = demo.write_examples(folder, generators, channels)
        title = _title(args)
        page = demo.build_demo(generators, examples, args.max_memory, args.tile_size, args.tile_overlap, title)
        try:
            demo.launch(page, args.host, args.port)
        except OSError:  # Gradio's "Cannot find empty port", or an address that is not this machine's
            cli.error(
                f"argument --port: cannot serve on {args.host}:{args.port}: the port is in use or the address is "
                "not this machine's; choose another --port (or --host)"
            )
    return 0


def _title(args):
    """The page's heading: the pretrained name and what it does, or the model's file (its folder for model.keras)."""
    if args.pretrained:
        from cyclegan_keras import pretrained

        entry = pretrained.get(args.pretrained)
        return f"{args.pretrained}: {entry.translates} ({pretrained.METHODS[entry.method][0]})"
    model = Path(os.path.realpath(args.model))
    return model.parent.name if model.name == "model.keras" else model.name


if __name__ == "__main__":
    sys.exit(main())
