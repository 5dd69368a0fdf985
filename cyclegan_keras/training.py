"""The one place that wires configuration, data, model and callbacks.

`train(config, workdir)` is what `python train.py` runs; `BUILDERS` holds the one function per
method (`config.model`) that knows it. The work directory's files are listed in the README; running
the same command again resumes from the last checkpoint, and a finished run is not retrained.
"""

import contextlib
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
from cyclegan_keras import data, distribute, files, inference, networks
from cyclegan_keras.config import (  # noqa: F401  (re-exported: training is where users look)
    PAIRED_MODELS,
    ConfigError,
    TrainConfig,
    make_config,
    parse_layers,
    upgrade_settings,
)
from cyclegan_keras.cut import CUT, PatchSampleMLP
from cyclegan_keras.model import CycleGAN
from cyclegan_keras.pix2pix import Pix2Pix

SYNTHETIC_TEST_COUNT = 64  # images per domain of the synthetic test split


def build_model(config):
    """The compiled model of `config.model`: its domain A has input_nc channels, B output_nc."""
    keras.utils.set_random_seed(config.seed)
    return BUILDERS[config.model](config)


def _initialized(networks_, config):
    """`networks_` re-initialized as `config.init_type` asks (the builders' own is normal(0, 0.02))."""
    if (config.init_type, config.init_gain) != ("normal", 0.02):
        for index, network in enumerate(networks_):
            networks.init_weights(network, config.init_type, config.init_gain, seed=config.seed * 4 + index)
    return networks_


def _optimizers(config):
    """The generators' and the discriminators' Adam, as every method here trains (the paper's betas)."""
    return dict(
        generator_optimizer=keras.optimizers.Adam(config.lr, beta_1=config.beta1, beta_2=0.999),
        discriminator_optimizer=keras.optimizers.Adam(config.lr, beta_1=config.beta1, beta_2=0.999),
    )


def _network_options(config):
    """The keyword arguments of `networks.build_generator` and `build_discriminator` that `config` sets."""
    generator = dict(filters=config.ngf, norm=config.norm, dropout=config.dropout)
    discriminator = dict(filters=config.ndf, norm=config.norm, lean_gradient=_lean_discriminator(config))
    if config.discriminator == "n_layers":
        discriminator["n_layers"] = config.n_layers_d
    return generator, discriminator


def _lean_discriminator(config):
    """The discriminators' norms keep only their outputs for the gradient, except under WGAN-GP's penalty."""
    return config.gan_mode != "wgangp"


def _build_cyclegan(config):
    a, b = config.input_nc, config.output_nc
    generator, discriminator = _network_options(config)
    networks_ = _initialized(
        [
            networks.build_generator(config.generator, input_channels=a, output_channels=b, **generator),
            networks.build_generator(config.generator, input_channels=b, output_channels=a, **generator),
            networks.build_discriminator(config.discriminator, input_channels=a, **discriminator),
            networks.build_discriminator(config.discriminator, input_channels=b, **discriminator),
        ],
        config,
    )
    model = CycleGAN(*networks_, pool_size=config.pool_size, seed=config.seed)
    model.compile(
        **_optimizers(config),
        gan_mode=config.gan_mode,
        lambda_a=config.lambda_a,
        lambda_b=config.lambda_b,
        lambda_identity=config.lambda_identity,
        jit_compile=config.xla,
    )
    return model


def _build_pix2pix(config):
    a, b = config.input_nc, config.output_nc
    generator, discriminator = _network_options(config)
    networks_ = _initialized(
        [
            networks.build_generator(config.generator, input_channels=a, output_channels=b, **generator),
            # Conditional: D judges the (input, output) pair, its channels concatenated.
            networks.build_discriminator(config.discriminator, input_channels=a + b, **discriminator),
        ],
        config,
    )
    model = Pix2Pix(*networks_, seed=config.seed)
    model.compile(**_optimizers(config), gan_mode=config.gan_mode, lambda_l1=config.lambda_l1, jit_compile=config.xla)
    return model


def _build_cut(config):
    """CUT or FastCUT (`config.model`), as the reference's `--model cut --CUT_mode ...`; the mode's defaults
    come from `config.MODEL_DEFAULTS`."""
    a, b = config.input_nc, config.output_nc
    generator = networks.build_generator(
        config.generator,
        input_channels=a,
        output_channels=b,
        filters=config.ngf,
        norm=config.norm,
        dropout=config.dropout,
        antialias=not config.no_antialias,
        antialias_up=not config.no_antialias_up,
    )
    discriminator = dict(
        filters=config.ndf,
        norm=config.norm,
        antialias=not config.no_antialias,
        lean_gradient=_lean_discriminator(config),
    )
    if config.discriminator == "n_layers":
        discriminator["n_layers"] = config.n_layers_d
    elif config.discriminator == "pixel":
        del discriminator["antialias"]  # 1x1 convolutions: nothing to blur (the reference's PixelDiscriminator)
    discriminator = networks.build_discriminator(config.discriminator, input_channels=b, **discriminator)
    nce_layers = parse_layers(config.nce_layers)
    channels = [output.shape[-1] for output in networks.encoder_features(generator, nce_layers).outputs]
    # The reference initialises netF as netG and netD (init_type, init_gain).
    networks_ = _initialized([generator, discriminator, PatchSampleMLP(channels, config.netf_nc)], config)
    model = CUT(*networks_, nce_layers=nce_layers, seed=config.seed)
    objective = {name: getattr(config, name) for name in CUT_OBJECTIVE}
    model.compile(**_optimizers(config), **objective, jit_compile=config.xla)
    return model


# The settings of CUT.compile, by their names in TrainConfig.
CUT_OBJECTIVE = (
    "gan_mode",
    "lambda_nce",
    "nce_idt",
    "num_patches",
    "nce_t",
    "flip_equivariance",
    "nce_includes_all_negatives_from_minibatch",
)


# config.model -> the function building its compiled model.
BUILDERS = {"cyclegan": _build_cyclegan, "cut": _build_cut, "fastcut": _build_cut, "pix2pix": _build_pix2pix}


def load_domains(config, phase):
    """Domains (A, B) of `phase` in the model's direction (b2a: the dataset's B is A); None if no such phase.

    With `--dataset-mode aligned` or `paired` the i-th images of A and B are a pair.
    """
    pre_a, pre_b = config.preprocessing("A"), config.preprocessing("B")
    if config.direction == "b2a":
        pre_a, pre_b = pre_b, pre_a
    limit = config.max_dataset_size
    mode = config.dataset_mode
    if config.train_a is not None:
        if phase != "train":
            return None
        if mode == "paired":
            domains = data.paired_folder_domains(config.train_a, config.train_b, pre_a, pre_b, limit=limit)
        else:
            domains = (
                data.folder_domain(config.train_a, pre_a, name="A", limit=limit),
                data.folder_domain(config.train_b, pre_b, name="B", limit=limit),
            )
    elif config.dataroot is not None:
        root = Path(config.dataroot)
        if mode == "aligned":
            # pix2pix's datasets: train/, test/ and val/ (edges2shoes has val/ only).
            folders = [root / name for name in ((phase,) if phase == "train" else ("test", "val"))]
            folder = next((folder for folder in folders if folder.is_dir()), None)
            if folder is None:
                return None
            domains = data.aligned_domains(folder, pre_a, pre_b, limit=limit)
        elif phase != "train" and not all((root / f"{phase}{d}").is_dir() for d in "AB"):
            return None
        elif mode == "paired":
            a, b = f"{phase}A", f"{phase}B"
            domains = data.paired_folder_domains(root / a, root / b, pre_a, pre_b, names=(a, b), limit=limit)
        else:
            domains = data.reference_folder_domains(root, phase, pre_a, preprocessing_b=pre_b, limit=limit)
    elif config.dataset == "synthetic":
        count = config.synthetic_count if phase == "train" else max(config.snapshot_count, SYNTHETIC_TEST_COUNT)
        count = min(count, limit or count)
        domains = data.synthetic_domains(
            count, config.load_size, phase, pre_a, config.seed, preprocessing_b=pre_b, paired=mode != "unaligned"
        )
    else:
        domains = data.tfds_domains(
            config.dataset, phase, pre_a, config.data_dir, config.download, preprocessing_b=pre_b
        )
        domains = tuple(_first(domain, limit) for domain in domains)
    if config.strict_data and any(domain.bad for domain in domains):
        raise data.DataError(
            "--strict-data: " + data.report_bad_files(domains) + "\nFix or remove them, or run without --strict-data"
        )
    return domains if config.direction == "a2b" else domains[::-1]


def _first(domain, limit):
    if limit is None or len(domain) <= limit:
        return domain
    if domain.images is not None:
        return dataclasses.replace(domain, images=domain.images[:limit])
    orientations = domain.orientations and domain.orientations[:limit]
    return dataclasses.replace(domain, paths=domain.paths[:limit], orientations=orientations)


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (e.g. a NaN loss)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where it stopped and how to resume."""


# Settings a resumed run may change: how the rest is done or logged, not what was trained.
RESUMABLE = (
    "lr", "checkpoint_every", "snapshot_every", "snapshot_every_epochs", "snapshot_count", "strict_data",
    "strategy", "xla", "deterministic", "download", "data_dir", "inception_weights",
)  # fmt: skip


def check_workdir(config, workdir, write=True):
    """Checks that `workdir` holds no run with other settings (but `RESUMABLE`), then records `config` there.

    Raises:
        ConfigError: `workdir` holds a run (a checkpoint or model.keras) with other settings.
    """
    workdir = Path(workdir)
    path = workdir / "config.json"
    wanted = dataclasses.asdict(config)
    started = cb.Checkpoint.latest(workdir / "checkpoints") is not None or (workdir / "model.keras").exists()
    if started and path.exists():
        found = upgrade_settings(json.loads(path.read_text()))
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
        files.write_text(path, json.dumps(wanted, indent=2) + "\n")


def train(config, workdir, verbose=1, strategy=None):
    """Trains the model of `config`, resuming from `workdir` if it can, holding `WORKDIR/.lock`.

    Under a multi-worker strategy every worker runs this alike: the chief writes `workdir`,
    the others a temporary folder, and all resume from the chief's checkpoints.

    Args:
        strategy: a `tf.distribute.Strategy` (None: the one `config.strategy` names).

    Returns:
        The trained model (`CycleGAN`, `CUT`), also saved as `WORKDIR/model.keras`.

    Raises:
        ConfigError, data.DataError: before any training, for bad settings or data.
        files.FolderInUse: another process is training into `workdir`.
        files.DiskFull: the disk filled; the message says how to resume.
        TrainingError: a loss became NaN or infinite (the last good checkpoint is kept).
        TrainingInterrupted: Ctrl-C; the message says how to resume.
    """
    if strategy is None:  # first: a multi-worker strategy must exist before any other TF op
        try:
            strategy = distribute.make_strategy(config.strategy)
        except distribute.DistributeError as error:
            raise ConfigError(str(error)) from None
    chief = distribute.is_chief(strategy)
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a folder")
    run_dir = workdir if chief else Path(tempfile.mkdtemp(prefix="cyclegan-worker-"))
    try:
        with _one_writer(workdir) if chief else contextlib.nullcontext():
            return _train(config, workdir, run_dir, strategy, verbose)
    except files.DiskFull as error:
        raise error.rerun(_resume_hint(workdir)) from None
    finally:
        if not chief:
            shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def _one_writer(workdir):
    """Holds WORKDIR/.lock for the block; clears what a killed holder left half-written."""
    with files.exclusive(workdir) as lock:
        if lock.unsupported:
            print(f"warning: {lock.unsupported}: nothing stops a second run writing here at the same time")
        else:
            if lock.stale:
                holder = files.describe(lock.stale)
                print(f"note: {workdir} was held by {holder}, which ended without releasing it; taken over")
            for folder in (workdir, workdir / "checkpoints"):
                files.remove_partials(folder)
        yield


def _resume_hint(workdir):
    kept = cb.Checkpoint.latest(Path(workdir) / "checkpoints")
    if kept:
        return f"run the same command to resume (from the last checkpoint: epoch {kept[1] + 1}, step {kept[2]})"
    return "run the same command to start again (no checkpoint was written yet)"


def _train(config, workdir, run_dir, strategy, verbose):
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

    domains = load_domains(config, "train")
    report = data.report_bad_files(domains)
    if report:
        print(report)
        files.write_text(run_dir / "bad_files.txt", report + "\n")
    test_split = load_domains(config, "test")
    steps = _steps_per_epoch(config, domains, strategy)
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

    total_epochs = config.total_epochs
    evaluation = None
    if config.eval_every:
        evaluation, line = make_evaluation(config, test_split, features, run_dir)
        print(line)
    shown = test_split or domains
    count = min(config.snapshot_count, *map(len, shown))
    snapshots = [data.domain_images(d, config.test_preprocessing(name), count) for d, name in zip(shown, "AB")]
    position, stop_on_non_finite = _Position(epoch, step), cb.StopOnNonFinite()
    checkpoint = cb.Checkpoint(run_dir / "checkpoints", steps, config.checkpoint_every or None)
    callbacks = [
        position,  # first: it counts a step as done before any other callback can be interrupted
        stop_on_non_finite,
        cb.StepTimer(),
        cb.LearningRateSchedule(
            config.lr,
            config.lr_policy,
            config.n_epochs,
            config.n_epochs_decay,
            epoch_count=config.epoch_count,
            lr_decay_iters=config.lr_decay_iters,
            history_csv=workdir / "log.csv",
            **({"monitor": model.plateau_monitor} if model.plateau_monitor else {}),
        ),
        *([evaluation] if evaluation else []),  # before the CSV log, which records its scores
        cb.CSVLog(run_dir / "log.csv", append=True),
        cb.EpochScalars(run_dir / "tensorboard"),  # after the CSV log, before the checkpoint: as its rows
        cb.ImageSnapshot(
            *snapshots,
            run_dir / "snapshots",
            config.snapshot_every,
            tensorboard_dir=run_dir / "tensorboard",
            every_n_epochs=config.snapshot_every_epochs,
            initial_step=epoch * steps + step,
        ),
        checkpoint,  # after the CSV log: an epoch is saved once its row is written (plateau replays them)
        cb.LossCurve(run_dir / "log.csv", run_dir / "loss_curve.png"),
    ]

    def fit(first_epoch, skip=0):
        """From `skip` steps into `first_epoch`: to that epoch's end if skipping, else to the last."""
        checkpoint.step_offset = position.step_offset = skip
        model.fit(
            _batches(config, domains, steps, strategy, first_epoch, skip),
            initial_epoch=first_epoch,
            epochs=first_epoch + 1 if skip else total_epochs,
            steps_per_epoch=steps - skip,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )

    if epoch < total_epochs:
        print("Compiling the training step (the first step takes a while)...", flush=True)
    try:
        if 0 < step < steps and epoch < total_epochs:
            fit(epoch, skip=step)  # the interrupted epoch first, from the exact batch where it stopped
            epoch += 1
        if epoch < total_epochs and not stop_on_non_finite.error:
            fit(epoch)
    except KeyboardInterrupt:
        resume = _resume_hint(workdir)
        raise TrainingInterrupted(f"stopped at epoch {position.epoch + 1} step {position.step}; {resume}") from None
    if stop_on_non_finite.error:
        kept = cb.Checkpoint.latest(workdir / "checkpoints")
        where = (
            f"The last good checkpoint, {kept[0]}, is kept: lower --lr or check the data, then run "
            "the same command again to resume from it."
            if kept
            else "No checkpoint was written before it: lower --lr or check the data and run again."
        )
        raise TrainingError(f"Training stopped: {stop_on_non_finite.error}. {where}")
    kept = cb.Checkpoint.latest(run_dir / "checkpoints")
    size = kept[0].stat().st_size if kept and kept[0].exists() else None  # what the final model needs too
    files.replace_atomically(run_dir / "model.keras", model.save, size=size)
    # The last checkpoint holds what model.keras holds (a finished run is recognised by model.keras):
    # drop it, the state file first so that no state ever names a missing file.
    (run_dir / "checkpoints" / cb.Checkpoint.STATE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if run_dir == workdir:
        print(f"Saved the trained model to {final_path}")
        if config.dataset == "synthetic" and not config.uses_folders:
            print(synthetic_report(model, config))
    return model


def _steps_per_epoch(config, domains, strategy):
    """Steps per epoch (one pass over the data at most), printed with the replicas and batch."""
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    steps = data.steps_per_epoch(*domains, global_batch)
    if steps < 1:
        raise data.DataError(
            f"An epoch of {max(map(len, domains))} pairs is less than one global batch "
            f"({global_batch} = --batch-size {config.batch_size} x {replicas} replicas)"
        )
    if config.steps_per_epoch and config.steps_per_epoch > steps:
        # An epoch stays one pass over the data, as the reference's; say so rather than cut silently.
        print(
            f"--steps-per-epoch {config.steps_per_epoch} is more than one pass over the data "
            f"({steps} steps of global batch {global_batch}): epochs have {steps} steps."
        )
    steps = min(steps, config.steps_per_epoch or steps)
    one_device = strategy is tf.distribute.get_strategy()
    print(
        f"Training on {replicas} replica(s) ({'one device' if one_device else type(strategy).__name__}), "
        f"global batch {global_batch} (--batch-size {config.batch_size} per replica), "
        f"precision {config.precision}, {steps} steps per epoch."
    )
    return steps


def _batches(config, domains, steps, strategy, start_epoch, skip_steps=0):

    # A method that learns from pairs gets them whole; the others, unpaired batches (even of paired data).
    dataset = data.paired_dataset if config.model in PAIRED_MODELS else data.unpaired_dataset

    def pipeline(context):
        # The pipelines' shards of each epoch together make the global batches one device would see.
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        pipelines = context.num_input_pipelines
        batches = dataset(
            *domains,
            config.preprocessing("A"),
            preprocessing_b=config.preprocessing("B"),
            batch_size=config.batch_size,
            seed=config.seed,
            start_epoch=start_epoch,
            steps_per_epoch=steps * local_replicas,
            shard=(pipelines, context.input_pipeline_id) if pipelines > 1 else None,
            serial=config.serial_batches,
        )
        return batches.skip(skip_steps * local_replicas) if skip_steps else batches

    if strategy is tf.distribute.get_strategy():
        return pipeline(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(pipeline)


def eval_features(config):
    """The FID Inception for `--eval-every`, or None (evaluation off, or no weights found).

    Raises:
        ConfigError: the weights named are missing or not the FID weights.
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


def make_evaluation(config, test_split, features, run_dir):
    """The `callbacks.Evaluation` of `--eval-every`, and one line saying what it will log."""
    every = f"--eval-every {config.eval_every}"
    if test_split is None:
        line = (
            f"{every}: this run has no test split (testA/ and testB/ in --dataroot, or test/ or val/ with "
            "--dataset-mode aligned), so no metric is "
            "computed; the metric columns of log.csv stay nan"
        )
        return cb.Evaluation(config.eval_every, None), line
    from cyclegan_keras import fid_inception, metrics

    test_a, test_b = test_split
    pre_a, pre_b = config.test_preprocessing("A"), config.test_preprocessing("B")
    truth_fn = truths = None
    if config.dataset == "synthetic" and not config.uses_folders:

        def truth_fn(images):
            return data.synthetic_mapping(metrics.to_uint8(images), config.direction)

    elif config.dataset_mode != "unaligned":  # each test input's pair is its truth

        def truths():
            return data.domain_batches(test_b, pre_b)

    evaluation = cb.Evaluation(
        config.eval_every,
        lambda: data.domain_batches(test_a, pre_a),
        lambda: data.domain_batches(test_b, pre_b),
        features=features,
        truth_fn=truth_fn,
        best_path=run_dir / "best.keras",
        final_epoch=config.total_epochs,
        tensorboard_dir=run_dir / "tensorboard",
        truths=truths,
    )
    logged = []
    if features is not None:
        logged.append(f"fid, kid_mean, kid_std (Inception weights {features.weights_path})")
    if truth_fn is not None:
        logged.append("psnr, ssim, mae (vs the synthetic dataset's true mapping)")
    elif truths is not None:
        logged.append("psnr, ssim, mae (vs each input's pair)")
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


class _Position(keras.callbacks.Callback):
    """Where training is, for the Ctrl-C message: 0-based `epoch` and the steps of it done."""

    def __init__(self, epoch, step):
        super().__init__()
        self.epoch, self.step, self.step_offset = epoch, step, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step = epoch, self.step_offset

    def on_train_batch_end(self, batch, logs=None):
        self.step = self.step_offset + batch + 1


def synthetic_report(model, config):
    """How close G(a) is to the synthetic dataset's true mapping."""
    test_a, _ = load_domains(config, "test")
    real_a = data.domain_images(test_a, config.test_preprocessing("A"))
    truth = data.synthetic_mapping(real_a, config.direction)
    error = float(np.mean(np.abs(inference.translate_images(model.generator("a2b"), real_a) - truth)))
    baseline = float(np.mean(np.abs(real_a - truth)))
    return f"Synthetic test set: mean |G(a) - true mapping| = {error:.3f} (the input itself: {baseline:.3f})"
