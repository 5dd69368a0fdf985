"""Train a CycleGAN.

    python train.py                                  # built-in synthetic data, minutes on a CPU
    python train.py --dataroot datasets/horse2zebra  # a folder with trainA/ trainB/ (testA/ testB/)
    python train.py --dataset horse2zebra --download # tensorflow-datasets' cycle_gan

Running the same command again resumes an interrupted run from its last
checkpoint. Everything lands in --workdir; the trained model is
WORKDIR/model.keras.
"""

import argparse
import dataclasses
import os
import sys

from cyclegan_keras import _env

HELP = {
    "dataset": "'synthetic' (built in, no download) or a tfds cycle_gan config: horse2zebra, monet2photo, ...",
    "dataroot": "folder in the reference layout: trainA/, trainB/ (and testA/, testB/ for snapshots)",
    "train_a": "folder of domain A images (with --train-b), instead of --dataroot",
    "train_b": "folder of domain B images (with --train-a)",
    "data_dir": "tensorflow-datasets data folder",
    "download": "let tensorflow-datasets download the dataset (needs the internet)",
    "synthetic_count": "images per domain of the synthetic dataset",
    "direction": "AtoB or BtoA: which folder is the model's domain A",
    "input_nc": "channels of domain A images (1 grayscale, 3 RGB, 4 RGBA)",
    "output_nc": "channels of domain B images",
    "generator": "resnet_9blocks, resnet_6blocks, unet_256 or unet_128",
    "discriminator": "basic (70x70 PatchGAN), n_layers (with --n-layers-d) or pixel",
    "n_layers_d": "stride-2 layers of the n_layers discriminator",
    "ngf": "generator filters in the first layer",
    "ndf": "discriminator filters in the first layer",
    "norm": "instance, batch or none",
    "dropout": "dropout(0.5) in the generators (off for CycleGAN, as the paper)",
    "gan_mode": "lsgan, vanilla or wgangp",
    "pool_size": "image pool size per direction; 0 disables it",
    "lambda_a": "weight of the cycle loss A -> B -> A",
    "lambda_b": "weight of the cycle loss B -> A -> B",
    "lambda_identity": "identity loss weight relative to the cycle weights (0 disables it)",
    "lr": "initial Adam learning rate",
    "beta1": "Adam beta_1",
    "n_epochs": "epochs at the initial learning rate",
    "n_epochs_decay": "epochs of linear decay to zero after that",
    "batch_size": "images per domain in a batch",
    "load_size": "resize images to this size first",
    "crop_size": "then crop to this size",
    "preprocess": "resize_and_crop, crop, scale_width, scale_width_and_crop or none",
    "no_flip": "no random horizontal flips",
    "seed": "seed of the initial weights, the data order and the augmentation",
    "steps_per_epoch": "cap an epoch at this many steps",
    "checkpoint_every": "also checkpoint every this many steps (epoch ends always); 0: epoch ends only",
    "snapshot_every": "also save a snapshot every this many steps",
    "snapshot_count": "image pairs in each snapshot",
    "strict_data": "fail before training if any image file cannot be read (default: skip and report it)",
    "jit_compile": "compile the training step with XLA",
    "deterministic": "deterministic ops (slower; for bit-exact reruns)",
    "strategy": "auto, one_device, mirrored (all local GPUs), multi_worker (TF_CONFIG) or tpu; "
    "--batch-size is per replica",
    "precision": "float32, mixed_bfloat16 (TPU, recent GPUs, CPUs with AMX/AVX512-BF16) or mixed_float16 (GPUs)",
    "eval_every": "every this many epochs (and at the last), score the test split: FID/KID with Inception "
    "weights, PSNR/SSIM/MAE on the synthetic data; logged to log.csv and TensorBoard, best model kept as "
    "WORKDIR/best.keras; 0: off",
    "inception_weights": "FID Inception weights for --eval-every (pytorch-fid's .pth or the TorchScript .pt; "
    "default: $CYCLEGAN_INCEPTION_WEIGHTS, then ~/.cache/cyclegan_keras/)",
}
FLAG_NAMES = {"jit_compile": "--xla"}


def parser():
    _env.import_tensorflow()  # until TrainConfig moves out of training.py, which imports TensorFlow
    from cyclegan_keras.training import SYNTHETIC_DEFAULTS, TrainConfig

    result = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--workdir", help="where the run is written (default: runs/DATASET)")
    for field in dataclasses.fields(TrainConfig):
        flag = FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        text = HELP[field.name]
        if field.type is bool:
            result.add_argument(flag, dest=field.name, action="store_true", default=None, help=text)
            continue
        shown = f"default: {field.default}"
        if field.name in SYNTHETIC_DEFAULTS:
            shown += f"; {SYNTHETIC_DEFAULTS[field.name]} on the synthetic dataset"
        # None means "not given", so make_config can tell defaults from choices.
        result.add_argument(flag, dest=field.name, type=field.type, default=None, help=f"{text} ({shown})")
    return result


def main(argv=None):
    args = vars(parser().parse_args(argv))
    workdir = args.pop("workdir")
    _env.import_tensorflow()

    from cyclegan_keras.data import DataError
    from cyclegan_keras.training import ConfigError, TrainingError, make_config, train

    try:
        config = make_config(**args)
        if workdir is None:
            source = config.dataroot or config.train_a or config.dataset
            workdir = os.path.join("runs", os.path.basename(os.path.normpath(source)))
        train(config, workdir)
    except (ConfigError, DataError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, TrainingError) else 2
    print(f"Done. Open {workdir}/snapshots/ and {workdir}/loss_curve.png; the model is {workdir}/model.keras")
    return 0


if __name__ == "__main__":
    sys.exit(main())
