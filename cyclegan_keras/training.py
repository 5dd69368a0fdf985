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
    WORKDIR/best.keras         with --eval-every: the best model by FID (see
                               callbacks.Evaluation), best.json its scores

Running the same command again after a crash resumes from the last
checkpoint; a finished run is not trained again.
"""

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import callbacks as cb
from cyclegan_keras import data, distribute, networks
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
# Images per domain of the synthetic test split (snapshots show the first
# --snapshot-count of them; --eval-every scores them all).
SYNTHETIC_TEST_COUNT = 64


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
    strategy: str = "auto"
    precision: str = "float32"
    eval_every: int = 0
    inception_weights: str = None

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
        for name in ("n_epochs", "n_epochs_decay", "pool_size", "checkpoint_every", "eval_every"):
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
        if self.strategy not in distribute.STRATEGIES:
            fail(f"--strategy must be one of {', '.join(distribute.STRATEGIES)}. Received: {self.strategy!r}")
        if self.precision not in distribute.PRECISIONS:
            fail(f"--precision must be one of {', '.join(distribute.PRECISIONS)}. Received: {self.precision!r}")
        # A few ms: the strides' truth. Built in a graph of its own, so no
        # eager op runs before a multi-worker strategy is made.
        with tf.Graph().as_default():
            probe = networks.build_generator(self.generator, filters=1)
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
        count = config.synthetic_count if phase == "train" else max(config.snapshot_count, SYNTHETIC_TEST_COUNT)
        domains = data.synthetic_domains(count, config.load_size, phase, pre_a, config.seed, preprocessing_b=pre_b)
    else:
        domains = data.tfds_domains(
            config.dataset, phase, pre_a, config.data_dir, config.download, preprocessing_b=pre_b
        )
    return domains if config.direction == "AtoB" else domains[::-1]


# -- The run ------------------------------------------------------------------------


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (e.g. a NaN loss)."""


# Settings that may change when a run is resumed: they change how the rest of
# the run is done or logged, not what was trained so far. A change is logged.
RESUMABLE = (
    "lr",
    "checkpoint_every",
    "snapshot_every",
    "snapshot_count",
    "strict_data",
    "strategy",
    "jit_compile",
    "deterministic",
    "download",
    "data_dir",
    "inception_weights",
)


def check_workdir(config, workdir, write=True):
    """Checks that `workdir` holds no other run, then records `config` there.

    A work directory holds a run once training has written a checkpoint or
    the final model; before that (a first try that failed on its data, say)
    its config.json is simply replaced. Settings in `RESUMABLE` may differ
    from the run's; each change is printed.

    Args:
        write: whether to write config.json (only the chief does).
    """
    workdir = Path(workdir)
    path = workdir / "config.json"
    wanted = dataclasses.asdict(config)
    # A setting added since the run began is absent from its config.json: it had the default.
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    started = cb.Checkpoint.latest(workdir / "checkpoints") is not None or (workdir / "model.keras").exists()
    if started and path.exists():
        found = {**defaults, **json.loads(path.read_text())}
        differences = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        fixed = [k for k in differences if k not in RESUMABLE]
        if fixed:
            listing = ", ".join(f"{k}: {found.get(k)!r} -> {wanted.get(k)!r}" for k in fixed)
            raise ConfigError(
                f"Work directory {workdir} holds a run with a different configuration ({listing}). "
                "Use another --workdir, or the same settings to resume it."
            )
        for key in differences:
            print(f"Resuming with {key} changed: {found.get(key)!r} -> {wanted.get(key)!r}")
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(wanted, indent=2) + "\n"
        cb.replace_atomically(path, lambda partial: partial.write_text(text))


def make_strategy(config):
    """The `tf.distribute.Strategy` of `config.strategy`; a bad choice is a `ConfigError`."""
    try:
        return distribute.make_strategy(config.strategy)
    except distribute.DistributeError as error:
        raise ConfigError(str(error)) from None


def train(config, workdir, verbose=1, strategy=None):
    """Trains a CycleGAN as `config` says, resuming from `workdir` if it can.

    Under a multi-worker strategy every worker runs this with the same
    arguments; the chief writes `workdir`, the others write to a temporary
    folder that they delete, and all resume from the chief's checkpoints
    (so `workdir` must be on storage that every worker can read).

    Args:
        config: `TrainConfig`.
        workdir: the run's folder.
        verbose: `fit()`'s verbosity. Defaults to `1`.
        strategy: a `tf.distribute.Strategy`, or None to make the one
            `config.strategy` names. Defaults to `None`.

    Returns:
        The trained `CycleGAN`, also saved as `WORKDIR/model.keras`.

    Raises:
        ConfigError, data.DataError: before any training, for bad settings or data.
        TrainingError: a loss became NaN or infinite (the last good
            checkpoint is kept).
    """
    # First: a multi-worker strategy must exist before any other TF op.
    strategy = strategy or make_strategy(config)
    chief = distribute.is_chief(strategy)
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a folder")
    run_dir = workdir if chief else Path(tempfile.mkdtemp(prefix="cyclegan-worker-"))
    try:
        return _train(config, workdir, run_dir, strategy, verbose)
    finally:
        if not chief:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train(config, workdir, run_dir, strategy, verbose):
    """`train()` once the strategy exists: reads `workdir`, writes `run_dir`."""
    try:
        warning = distribute.check_precision(config.precision)
    except distribute.DistributeError as error:
        raise ConfigError(str(error)) from None
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    features = eval_features(config)  # a bad weights file fails before anything is written
    check_workdir(config, workdir, write=run_dir == workdir)
    final_path = workdir / "model.keras"
    if final_path.exists():
        print(f"{workdir} already holds a trained model: {final_path}")
        with strategy.scope():
            return keras.models.load_model(final_path)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    domain_a, domain_b = load_domains(config, "train")
    report = data.report_bad_files([domain_a, domain_b])
    if report:
        print(report)
        (run_dir / "bad_files.txt").write_text(report + "\n")
    test_split = load_domains(config, "test")
    test_domains = test_split or (domain_a, domain_b)
    count = min(config.snapshot_count, len(test_domains[0]), len(test_domains[1]))
    snapshot_a = data.domain_images(test_domains[0], config.preprocessing("A"), count)
    snapshot_b = data.domain_images(test_domains[1], config.preprocessing("B"), count)

    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    steps = data.steps_per_epoch(domain_a, domain_b, global_batch)
    if steps < 1:
        raise data.DataError(
            f"An epoch of {max(len(domain_a), len(domain_b))} pairs is less than one global batch "
            f"({global_batch} = --batch-size {config.batch_size} x {replicas} replicas)"
        )
    steps = min(steps, config.steps_per_epoch or steps)
    total_epochs = config.n_epochs + config.n_epochs_decay
    print(
        f"Training on {replicas} replica(s) ({type(strategy).__name__}), global batch {global_batch} "
        f"(--batch-size {config.batch_size} per replica), precision {config.precision}, "
        f"{steps} steps per epoch."
    )

    latest = cb.Checkpoint.latest(workdir / "checkpoints")
    with strategy.scope():
        if latest is not None:
            path, epoch, step = latest
            model = keras.models.load_model(path)
            print(f"Resumed from {path}: epoch {epoch + 1}, step {step} of {steps} done before.")
        else:
            with distribute.precision_policy(config.precision):
                model = build_model(config)
            epoch, step = 0, 0

    evaluation = None
    if config.eval_every:
        evaluation, line = make_evaluation(config, test_split, features, run_dir, total_epochs)
        print(line)
    stop_on_non_finite = cb.StopOnNonFinite()
    checkpoint = cb.Checkpoint(run_dir / "checkpoints", steps, config.checkpoint_every or None)
    callbacks = [
        stop_on_non_finite,
        cb.LinearDecaySchedule(config.lr, config.n_epochs, config.n_epochs_decay),
        *([evaluation] if evaluation else []),  # before the CSVLogger, which logs its scores
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
        cb.ImageSnapshot(
            snapshot_a,
            snapshot_b,
            run_dir / "snapshots",
            config.snapshot_every,
            tensorboard_dir=run_dir / "tensorboard",
        ),
        checkpoint,
        cb.LossCurve(run_dir / "log.csv", run_dir / "loss_curve.png"),
    ]

    def stream(start_epoch, skip_steps=0):
        """The training batches from `start_epoch`, `skip_steps` into it, split over the replicas."""

        def pipeline(context):
            # One input pipeline per worker, feeding its replicas one batch
            # each per step; the pipelines' shards of each epoch together
            # make the global batches one device would see.
            local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
            pipelines = context.num_input_pipelines
            batches = data.unpaired_dataset(
                domain_a,
                domain_b,
                config.preprocessing("A"),
                preprocessing_b=config.preprocessing("B"),
                batch_size=config.batch_size,
                seed=config.seed,
                start_epoch=start_epoch,
                steps_per_epoch=steps * local_replicas,
                shard=(pipelines, context.input_pipeline_id) if pipelines > 1 else None,
            )
            return batches.skip(skip_steps * local_replicas) if skip_steps else batches

        if strategy is tf.distribute.get_strategy():
            return pipeline(tf.distribute.InputContext())
        return strategy.distribute_datasets_from_function(pipeline)

    if 0 < step < steps and epoch < total_epochs:
        # Finish the interrupted epoch first: its remaining steps, from the
        # exact batch where it stopped.
        checkpoint.step_offset = step
        model.fit(
            stream(epoch, step),
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
        kept = cb.Checkpoint.latest(workdir / "checkpoints")
        where = (
            f"The last good checkpoint, {kept[0]}, is kept: lower --lr or check the data, then run "
            "the same command again to resume from it."
            if kept
            else "No checkpoint was written before it: lower --lr or check the data and run again."
        )
        raise TrainingError(f"Training stopped: {stop_on_non_finite.error}. {where}")
    cb.replace_atomically(run_dir / "model.keras", model.save)
    if run_dir == workdir:
        print(f"Saved the trained model to {final_path}")
        if config.dataset == "synthetic" and not config.uses_folders:
            print(synthetic_report(model, config))
    return model


def eval_features(config):
    """The FID Inception for `--eval-every`, or None (evaluation off, or no weights found).

    Raises:
        ConfigError: `--inception-weights` (or CYCLEGAN_INCEPTION_WEIGHTS)
            names a missing file or one that is not the FID weights.
    """
    if not config.eval_every:
        return None
    from cyclegan_keras import convert, fid_inception

    try:
        weights = fid_inception.find_weights(config.inception_weights)
        return None if weights is None else fid_inception.load_inception(weights)
    except fid_inception.WeightsNotFound as error:  # names the flag or variable
        raise ConfigError(str(error)) from None
    except (FileNotFoundError, ValueError, convert.UnsafePickleError) as error:
        raise ConfigError(f"--inception-weights {config.inception_weights or weights}: {error}") from None


def make_evaluation(config, test_split, features, run_dir, total_epochs):
    """The `callbacks.Evaluation` of `--eval-every`, and one line saying what it will log.

    Scores the test split's domain A, preprocessed as for the snapshots:
    FID/KID against its domain B with Inception weights; PSNR/SSIM/MAE
    against the true mapping on the synthetic dataset. The best model is
    kept by FID, else by PSNR, else not at all.
    """
    every = f"--eval-every {config.eval_every}"
    if test_split is None:
        line = (
            f"{every}: this run has no test split (testA/ and testB/ in --dataroot), so no metric is "
            "computed; the metric columns of log.csv stay nan"
        )
        return cb.Evaluation(config.eval_every, None), line
    from cyclegan_keras import fid_inception, metrics

    test_a, test_b = test_split
    pre_a, pre_b = config.preprocessing("A"), config.preprocessing("B")
    truth_fn = None
    if config.dataset == "synthetic" and not config.uses_folders:
        direction = "a2b" if config.direction == "AtoB" else "b2a"

        def truth_fn(images):
            return data.synthetic_mapping(metrics.to_uint8(images), direction)

    evaluation = cb.Evaluation(
        config.eval_every,
        lambda: data.domain_batches(test_a, pre_a),
        lambda: data.domain_batches(test_b, pre_b),
        features=features,
        truth_fn=truth_fn,
        best_path=run_dir / "best.keras",
        final_epoch=total_epochs,
        tensorboard_dir=run_dir / "tensorboard",
    )
    logged = []
    if features is not None:
        logged.append(f"fid, kid_mean, kid_std (Inception weights {features.weights_path})")
    if truth_fn is not None:
        logged.append("psnr, ssim, mae (vs the synthetic dataset's true mapping)")
    if not logged:
        return evaluation, (
            f"{every}: nothing to compute: no FID Inception weights ({fid_inception.download_hint()}) and no "
            "ground truth for this unpaired test split; the metric columns of log.csv stay nan"
        )
    skipped = "" if features is not None else f"; no FID/KID: no Inception weights ({fid_inception.download_hint()})"
    best = f"best model by {evaluation.monitor} kept as {run_dir / 'best.keras'}"
    return evaluation, (
        f"{every}: scoring the test split's {len(test_a)} A images -> B ({len(test_b)} real) every "
        f"{config.eval_every} epoch(s) and at the last: {'; '.join(logged)}{skipped}; {best}"
    )


def synthetic_report(model, config):
    """How close G(a) is to the synthetic dataset's true mapping."""
    test_a, _ = load_domains(config, "test")
    real_a = data.domain_images(test_a, config.preprocessing("A"))
    truth = data.synthetic_mapping(real_a, "a2b" if config.direction == "AtoB" else "b2a")
    error = float(np.mean(np.abs(model.translate(real_a) - truth)))
    baseline = float(np.mean(np.abs(real_a - truth)))
    return f"Synthetic test set: mean |G(a) - true mapping| = {error:.3f} (the input itself: {baseline:.3f})"
