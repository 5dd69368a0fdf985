"""Train a CycleGAN (or CUT, FastCUT: --model cut, fastcut; pix2pix on pairs: --model pix2pix).

    python train.py                                  # built-in synthetic data, minutes on a CPU
    python train.py --dataroot datasets/horse2zebra  # a folder with trainA/ trainB/ (testA/ testB/)
    python train.py --dataset horse2zebra --download # tensorflow-datasets' cycle_gan
    python train.py --model pix2pix --dataroot datasets/facades --direction b2a  # pairs: train/ of A|B files
    python train.py --model cut --dataroot datasets/horse2zebra   # CUT, one direction (A -> B)

Running the same command again resumes an interrupted run from its last
checkpoint. Everything lands in --workdir; the trained model is
WORKDIR/model.keras.
"""

import argparse
import dataclasses
import os
import sys

from cyclegan_keras import _env, files
from cyclegan_keras import config as config_module
from cyclegan_keras.cli import args as cli_args
from cyclegan_keras.cli import full_disk_exits_1

INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)
KIND_TYPES = {
    "dataroot": cli_args.dataroot,
    "inception_weights": cli_args.inception_weights_file,
    "image_folder": cli_args.image_folder,
    "output_folder": cli_args.output_folder,
    "direction": cli_args.direction,
    "layers": cli_args.layer_indices,
}


def argument(field):
    """`add_argument` keyword arguments for a `TrainConfig` field; one without help or a check is refused."""
    m = field.metadata
    if "help" not in m:
        raise TypeError(f"TrainConfig.{field.name} has no help: declare it with config.setting(...)")
    by_model = [(model, d[field.name]) for model, d in config_module.MODEL_DEFAULTS.items() if field.name in d]
    if field.type is bool and not by_model:
        return dict(action="store_true", default=None, help=m["help"])
    shown = f"default: {field.default}"
    if field.name in config_module.SYNTHETIC_DEFAULTS:
        shown += f"; {config_module.SYNTHETIC_DEFAULTS[field.name]} on the synthetic dataset"
    for model, value in by_model:
        shown += f"; {value} for --model {model}"
        synthetic = config_module.SYNTHETIC_MODEL_DEFAULTS.get(model, {})
        if field.name in synthetic:
            shown += f" ({synthetic[field.name]} on the synthetic dataset)"
    if field.type is bool:  # a method turns it on by default: --no-NAME turns it off
        return dict(action=argparse.BooleanOptionalAction, default=None, help=f"{m['help']} ({shown})")
    owners = [model for model, names in config_module.MODEL_SETTINGS.items() if field.name in names]
    if owners:
        shown += f"; --model {', '.join(owners)} only"
    # None means "not given", so make_config can tell defaults from choices.
    check = KIND_TYPES.get(m["kind"]) or config_module.value_range(field)
    if check is None and m["choices"] is None:
        raise TypeError(f"TrainConfig.{field.name} has no check: give it choices, bounds or a kind")
    return dict(default=None, help=f"{m['help']} ({shown})", choices=m["choices"], type=check or field.type)


def parser():
    result = cli_args.ArgumentParser(description=__doc__)
    result.add_argument(
        "--workdir", type=cli_args.output_folder, help="where the run is written (default: runs/DATASET)"
    )
    for field in dataclasses.fields(config_module.TrainConfig):
        result.add_argument(config_module.flag_name(field), dest=field.name, **argument(field))
    return result


@full_disk_exits_1
def main(argv=None):
    try:
        args = vars(parser().parse_args(argv))
        workdir = args.pop("workdir")
        try:
            config = config_module.make_config(**args)
        except config_module.ConfigError as error:  # before TensorFlow starts
            print(f"error: {error}", file=sys.stderr)
            return 2
        problem = config.dataroot and cli_args.dataroot_layout_problem(config.dataroot, config.dataset_mode)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        if workdir is None:
            source = config.dataroot or config.train_a or config.dataset
            workdir = os.path.join("runs", os.path.basename(os.path.normpath(source)))
        _env.import_tensorflow()
        from cyclegan_keras.data import DataError
        from cyclegan_keras.training import ConfigError, TrainingError, TrainingInterrupted, train

        try:
            # One line per epoch when the output is a file or a pipe: no bars, no carriage returns.
            train(config, workdir, verbose=1 if sys.stdout.isatty() else 2)
        except files.FolderInUse as error:
            print(f"error: argument --workdir: {error}", file=sys.stderr)
            return 2
        except (ConfigError, DataError, TrainingError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1 if isinstance(error, TrainingError) else 2
        except TrainingInterrupted as interrupted:
            print(interrupted, file=sys.stderr)
            return INTERRUPTED
    except KeyboardInterrupt:
        print("stopped before training started; run the same command to start it", file=sys.stderr)
        return INTERRUPTED
    print(
        f"Done. Open {workdir}/snapshots/ and {workdir}/loss_curve.png "
        f"(or: tensorboard --logdir {workdir}/tensorboard); the model is {workdir}/model.keras"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
