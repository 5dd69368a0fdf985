"""The one place that wires configuration, data, model and callbacks.

`train(config, workdir)` is what `python train.py` runs. The work directory
holds everything a run produces and needs to resume:

    WORKDIR/config.json        the resolved configuration
    WORKDIR/checkpoints/       crash-proof checkpoints (see callbacks.Checkpoint)
    WORKDIR/snapshots/         epoch_XXX.png translation grids
    WORKDIR/log.csv            epoch-mean losses and the learning rate
    WORKDIR/loss_curve.png     the losses, drawn at the end
    WORKDIR/bad_files.txt      images that could not be read, if any
    WORKDIR/model.keras        the trained CycleGAN

Running the same command again after a crash resumes from the last
checkpoint; a finished run is not trained again.
"""

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import callbacks as cb
from cyclegan_keras import data, networks
from cyclegan_keras.model import CycleGAN

DIRECTIONS = ("AtoB", "BtoA")

# `python train.py` with no arguments: the synthetic dataset, small enough to
# train in a few minutes on a laptop CPU. Used only for settings not given.
SYNTHETIC_DEFAULTS = dict(
    generator="resnet_6blocks",
    ngf=32,
    ndf=32,
    load_size=72,
    crop_size=64,
    n_epochs=3,
    n_epochs_decay=2,
)


class ConfigError(ValueError):
    """A setting the user gave is invalid; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Defaults are the paper's.

    Field names are the reference's options (`train.py` flags, with `-` for
    `_`). `dataset` is `"synthetic"`, a tfds `cycle_gan` config, or ignored
    when `dataroot` (a folder with trainA/ and trainB/) or `train_a` and
    `train_b` (any two folders) are given.
    """

    dataset: str = "synthetic"
    dataroot: str = None
    train_a: str = None
    train_b: str = None
    data_dir: str = None
    download: bool = False
    synthetic_count: int = 128
    direction: str = "AtoB"
    input_nc: int = 3
    output_nc: int = 3
    generator: str = "resnet_9blocks"
    discriminator: str = "basic"
    n_layers_d: int = 3
    ngf: int = 64
    ndf: int = 64
    norm: str = "instance"
    dropout: bool = False
    gan_mode: str = "lsgan"
    pool_size: int = 50
    lambda_a: float = 10.0
    lambda_b: float = 10.0
    lambda_identity: float = 0.5
    lr: float = 2e-4
    beta1: float = 0.5
    n_epochs: int = 100
    n_epochs_decay: int = 100
    batch_size: int = 1
    load_size: int = 286
    crop_size: int = 256
    preprocess: str = "resize_and_crop"
    no_flip: bool = False
    seed: int = 0
    steps_per_epoch: int = None
    checkpoint_every: int = 500
    snapshot_every: int = None
    snapshot_count: int = 4
    strict_data: bool = False
    jit_compile: bool = False
    deterministic: bool = False

    def __post_init__(self):
        def fail(message):
            raise ConfigError(message)

        if self.generator not in networks.GENERATORS:
            fail(f"--generator {self.generator!r} is unknown. Valid: {', '.join(networks.GENERATORS)}")
        if self.discriminator not in networks.DISCRIMINATORS:
            fail(f"--discriminator {self.discriminator!r} is unknown. Valid: {', '.join(networks.DISCRIMINATORS)}")
        if self.direction not in DIRECTIONS:
            fail(f"--direction must be one of {DIRECTIONS}. Received: {self.direction!r}")
        if not self.uses_folders and self.dataset != "synthetic" and self.dataset not in data.TFDS_CONFIGS:
            fail(
                f"--dataset {self.dataset!r} is unknown. Valid: synthetic, {', '.join(data.TFDS_CONFIGS)}; "
                "or give --dataroot FOLDER"
            )
        if (self.train_a is None) != (self.train_b is None):
            fail("--train-a and --train-b go together: give a folder for each domain")
        for name in ("n_epochs", "n_epochs_decay", "pool_size", "checkpoint_every"):
            if getattr(self, name) < 0:
                fail(f"--{name.replace('_', '-')} must be >= 0. Received: {getattr(self, name)}")
        if self.n_epochs + self.n_epochs_decay < 1:
            fail("--n-epochs plus --n-epochs-decay must be at least 1")
        for name in ("batch_size", "ngf", "ndf", "input_nc", "output_nc", "n_layers_d", "snapshot_count"):
            if getattr(self, name) < 1:
                fail(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            fail(f"--steps-per-epoch must be >= 1. Received: {self.steps_per_epoch}")
        try:
            preprocessing = self.preprocessing("A")
        except ValueError as error:
            fail(f"--preprocess/--load-size/--crop-size: {error}")
        probe = networks.build_generator(self.generator, filters=1)  # a few ms: the strides' truth
        multiple, smallest = networks.size_multiple(probe), networks.min_size(probe)
        if preprocessing.crops and (self.crop_size % multiple or self.crop_size < smallest):
            fail(
                f"--crop-size {self.crop_size} must be a multiple of {multiple} and at least {smallest} "
                f"for --generator {self.generator}. Try --crop-size "
                f"{max(smallest, self.crop_size // multiple * multiple)}"
            )
        if self.lambda_identity > 0 and self.input_nc != self.output_nc:
            fail(
                f"The identity loss needs --input-nc equal to --output-nc ({self.input_nc} != "
                f"{self.output_nc}): add --lambda-identity 0"
            )

    @property
    def uses_folders(self):
        return self.dataroot is not None or self.train_a is not None

    def preprocessing(self, domain):
        """`data.Preprocessing` for the model's domain "A" (input_nc channels) or "B" (output_nc)."""
        channels = self.input_nc if domain == "A" else self.output_nc
        return data.Preprocessing(
            mode=self.preprocess,
            load_size=self.load_size,
            crop_size=self.crop_size,
            flip=not self.no_flip,
            channels=channels,
        )


def make_config(**given):
    """A `TrainConfig` from the settings a user gave (None means not given).

    On the synthetic dataset the settings of `SYNTHETIC_DEFAULTS` replace the
    paper's when not given, so `python train.py` finishes in minutes.
    """
    given = {key: value for key, value in given.items() if value is not None}
    folders = given.get("dataroot") or given.get("train_a")
    if given.get("dataset", "synthetic") == "synthetic" and not folders:
        given = {**SYNTHETIC_DEFAULTS, **given}
    return TrainConfig(**given)


# -- Building blocks ----------------------------------------------------------------


def build_model(config):
    """A compiled `CycleGAN` for `config`: A has input_nc channels, B output_nc."""
    keras.utils.set_random_seed(config.seed)
    channels_a, channels_b = config.input_nc, config.output_nc
    if config.direction == "BtoA":
        channels_a, channels_b = channels_b, channels_a

    def generator(channels_in, channels_out):
        return networks.build_generator(
            config.generator,
            filters=config.ngf,
            input_channels=channels_in,
            output_channels=channels_out,
            norm=config.norm,
            dropout=config.dropout,
        )

    def discriminator(channels):
        kwargs = dict(filters=config.ndf, input_channels=channels, norm=config.norm)
        if config.discriminator == "n_layers":
            kwargs["n_layers"] = config.n_layers_d
        return networks.build_discriminator(config.discriminator, **kwargs)

    model = CycleGAN(
        generator(channels_a, channels_b),
        generator(channels_b, channels_a),
        discriminator(channels_a),
        discriminator(channels_b),
        pool_size=config.pool_size,
        seed=config.seed,
    )

    def adam():
        return keras.optimizers.Adam(learning_rate=config.lr, beta_1=config.beta1, beta_2=0.999)

    model.compile(
        generator_optimizer=adam(),
        discriminator_optimizer=adam(),
        gan_mode=config.gan_mode,
        lambda_a=config.lambda_a,
        lambda_b=config.lambda_b,
        lambda_identity=config.lambda_identity,
        jit_compile=config.jit_compile,
    )
    return model


def load_domains(config, phase):
    """Domains (A, B) of `phase`, in the model's direction; None if the source has no such phase.

    With `--direction BtoA` the dataset's B images are the model's domain A.
    """
    pre_a, pre_b = config.preprocessing("A"), config.preprocessing("B")
    if config.direction == "BtoA":
        pre_a, pre_b = pre_b, pre_a
    if config.train_a is not None:
        if phase != "train":
            return None
        domains = (
            data.folder_domain(config.train_a, pre_a, config.strict_data, name="A"),
            data.folder_domain(config.train_b, pre_b, config.strict_data, name="B"),
        )
    elif config.dataroot is not None:
        root = Path(config.dataroot)
        if phase != "train" and not all((root / f"{phase}{d}").is_dir() for d in "AB"):
            return None
        domains = data.reference_folder_domains(root, phase, pre_a, config.strict_data, preprocessing_b=pre_b)
    elif config.dataset == "synthetic":
        count = config.synthetic_count if phase == "train" else config.snapshot_count
        domains = data.synthetic_domains(count, config.load_size, phase, pre_a, config.seed, preprocessing_b=pre_b)
    else:
        domains = data.tfds_domains(
            config.dataset, phase, pre_a, config.data_dir, config.download, preprocessing_b=pre_b
        )
    return domains if config.direction == "AtoB" else domains[::-1]


# -- The run ------------------------------------------------------------------------


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (e.g. a NaN loss)."""


def check_workdir(config, workdir):
    """Writes config.json, or checks that the one there matches `config`."""
    path = Path(workdir) / "config.json"
    wanted = dataclasses.asdict(config)
    if path.exists():
        found = json.loads(path.read_text())
        differences = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        if differences:
            listing = ", ".join(f"{k}: {found.get(k)!r} -> {wanted.get(k)!r}" for k in differences)
            raise ConfigError(
                f"Work directory {workdir} holds a run with a different configuration ({listing}). "
                "Use another --workdir, or the same settings to resume it."
            )
        return
    Path(workdir).mkdir(parents=True, exist_ok=True)
    text = json.dumps(wanted, indent=2) + "\n"
    cb.replace_atomically(path, lambda partial: partial.write_text(text))


def train(config, workdir, verbose=1):
    """Trains a CycleGAN as `config` says, resuming from `workdir` if it can.

    Returns:
        The trained `CycleGAN`, also saved as `WORKDIR/model.keras`.

    Raises:
        ConfigError, data.DataError: before any training, for bad settings or data.
        TrainingError: a loss became NaN or infinite (the last good
            checkpoint is kept).
    """
    workdir = Path(workdir)
    check_workdir(config, workdir)
    final_path = workdir / "model.keras"
    if final_path.exists():
        print(f"{workdir} already holds a trained model: {final_path}")
        return keras.models.load_model(final_path)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    domain_a, domain_b = load_domains(config, "train")
    report = data.report_bad_files([domain_a, domain_b])
    if report:
        print(report)
        (workdir / "bad_files.txt").write_text(report + "\n")
    test_domains = load_domains(config, "test") or (domain_a, domain_b)
    count = min(config.snapshot_count, len(test_domains[0]), len(test_domains[1]))
    snapshot_a = data.domain_images(test_domains[0], config.preprocessing("A"), count)
    snapshot_b = data.domain_images(test_domains[1], config.preprocessing("B"), count)

    steps = data.steps_per_epoch(domain_a, domain_b, config.batch_size)
    if steps < 1:
        raise data.DataError(f"An epoch of {max(len(domain_a), len(domain_b))} pairs is less than one batch")
    steps = min(steps, config.steps_per_epoch or steps)
    total_epochs = config.n_epochs + config.n_epochs_decay

    checkpoint_dir = workdir / "checkpoints"
    latest = cb.Checkpoint.latest(checkpoint_dir)
    if latest is not None:
        path, epoch, step = latest
        model = keras.models.load_model(path)
        print(f"Resumed from {path}: epoch {epoch + 1}, step {step} of {steps} done before.")
    else:
        model, epoch, step = build_model(config), 0, 0

    stop_on_non_finite = cb.StopOnNonFinite()
    checkpoint = cb.Checkpoint(checkpoint_dir, steps, config.checkpoint_every or None)
    callbacks = [
        stop_on_non_finite,
        cb.LinearDecaySchedule(config.lr, config.n_epochs, config.n_epochs_decay),
        keras.callbacks.CSVLogger(str(workdir / "log.csv"), append=True),
        cb.ImageSnapshot(
            snapshot_a,
            snapshot_b,
            workdir / "snapshots",
            config.snapshot_every,
            tensorboard_dir=workdir / "tensorboard",
        ),
        checkpoint,
        cb.LossCurve(workdir / "log.csv", workdir / "loss_curve.png"),
    ]

    def stream(start_epoch):
        return data.unpaired_dataset(
            domain_a,
            domain_b,
            config.preprocessing("A"),
            preprocessing_b=config.preprocessing("B"),
            batch_size=config.batch_size,
            seed=config.seed,
            start_epoch=start_epoch,
            steps_per_epoch=steps,
        )

    if 0 < step < steps and epoch < total_epochs:
        # Finish the interrupted epoch first: its remaining steps, from the
        # exact batch where it stopped.
        checkpoint.step_offset = step
        model.fit(
            stream(epoch).skip(step),
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=steps - step,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )
        checkpoint.step_offset = 0
        epoch += 1
    if epoch < total_epochs and not stop_on_non_finite.error:
        model.fit(
            stream(epoch),
            initial_epoch=epoch,
            epochs=total_epochs,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )
    if stop_on_non_finite.error:
        raise TrainingError(
            f"Training stopped: {stop_on_non_finite.error}. The last good checkpoint is kept in "
            f"{checkpoint_dir}; lower --lr or check the data, then run again to resume."
        )
    cb.replace_atomically(final_path, model.save)
    print(f"Saved the trained model to {final_path}")
    if config.dataset == "synthetic" and not config.uses_folders:
        print(synthetic_report(model, config))
    return model


def synthetic_report(model, config):
    """How close G(a) is to the synthetic dataset's true mapping."""
    test_a, _ = load_domains(config, "test")
    real_a = data.domain_images(test_a, config.preprocessing("A"))
    truth = data.synthetic_mapping(real_a, "a2b" if config.direction == "AtoB" else "b2a")
    error = float(np.mean(np.abs(model.translate(real_a) - truth)))
    baseline = float(np.mean(np.abs(real_a - truth)))
    return f"Synthetic test set: mean |G(a) - true mapping| = {error:.3f} (the input itself: {baseline:.3f})"
