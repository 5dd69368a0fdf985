"""Callbacks for training a `CycleGAN` with `fit()`: the reference's schedules, step timing,
image snapshots, a loss curve, non-finite loss detection, crash-proof
checkpoints and test-set evaluation (FID, KID, PSNR) keeping the best model.
Each takes its inputs as arguments and works with any fit()."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from cyclegan_keras import files, metrics
from cyclegan_keras.config import LR_POLICIES


def linear_decay_factor(epoch, n_epochs, n_epochs_decay, epoch_count=1):
    """The reference's `linear` policy: 1 for n_epochs, then linear decay.

    `1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1)`, with
    `epoch` counted from 0. The last epoch trains at `1 / (n_epochs_decay + 1)`
    of the base rate.
    """
    return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)


class PlateauState:
    """The reference's `ReduceLROnPlateau(mode="min", factor=0.2, threshold=0.01, patience=5)`.

    PyTorch's algorithm with its other defaults (relative threshold, no
    cooldown, min_lr 0, eps 1e-8): a value counts as better when it is below
    `best * (1 - threshold)`; after more than `patience` epochs that are not
    better, the rate is multiplied by `factor`.
    """

    def __init__(self, factor=0.2, threshold=0.01, patience=5):
        self.factor, self.threshold, self.patience = factor, threshold, patience
        self.best = math.inf
        self.bad_epochs = 0
        self.scale = 1.0

    def step(self, value, base_lr):
        """Takes one epoch's monitored value; returns the new scale of the base rate."""
        if value < self.best * (1.0 - self.threshold):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            if base_lr * self.scale * (1.0 - self.factor) > 1e-8:  # PyTorch's eps: skip negligible changes
                self.scale *= self.factor
            self.bad_epochs = 0
        return self.scale


class LearningRateSchedule(keras.callbacks.Callback):
    """Sets both optimizers' rate at each epoch start, by one of the reference's policies.

    Policies (`networks.py get_scheduler` of the authors' code, the rate of
    0-based epoch `e` being the PyTorch scheduler's after `e` steps):
    - `linear`: `base_lr * linear_decay_factor(e, n_epochs, n_epochs_decay, epoch_count)`;
    - `step`: `base_lr * 0.1 ** (e // lr_decay_iters)` (`StepLR(step_size=lr_decay_iters, gamma=0.1)`);
    - `cosine`: `base_lr * (1 + cos(pi * e / n_epochs)) / 2` (`CosineAnnealingLR(T_max=n_epochs,
      eta_min=0)`: 0 at epoch n_epochs, and, as PyTorch's, rising again after it);
    - `plateau`: `ReduceLROnPlateau(mode="min", factor=0.2, threshold=0.01, patience=5)` on the
      epoch mean of `monitor` (see `PlateauState`). The reference steps it on a metric that its
      CycleGAN model never sets (a constant 0, so the rate falls x0.2 every 6 epochs whatever
      happens); this monitors a real loss.

    The rate is computed from the epoch number alone, so `fit(initial_epoch=e)` continues the
    schedule; for `plateau`, the state is rebuilt from the epochs before `e` in `history_csv`
    (the `CSVLogger` file of the run), so a resumed run needs no other saved state. The rate is
    added to the epoch logs as `lr`.

    Args:
        base_lr: float. The initial rate.
        policy: one of `config.LR_POLICIES`. Defaults to `"linear"`.
        n_epochs: int. Epochs at the base rate (linear), or the cosine's half period.
        n_epochs_decay: int. Epochs of linear decay.
        epoch_count: int. The reference's starting epoch count (linear). Defaults to `1`.
        lr_decay_iters: int. Epochs between steps (step). Defaults to `50`.
        monitor: str. The log key `plateau` watches. Defaults to `"cycle_loss"`.
        history_csv: path or None. The run's CSV log, read to resume `plateau`.
    """

    def __init__(
        self,
        base_lr,
        policy="linear",
        n_epochs=100,
        n_epochs_decay=100,
        epoch_count=1,
        lr_decay_iters=50,
        monitor="cycle_loss",
        history_csv=None,
    ):
        super().__init__()
        if policy not in LR_POLICIES:
            raise ValueError(f"policy must be one of {LR_POLICIES}. Received: policy={policy!r}")
        self.base_lr = base_lr
        self.policy = policy
        self.n_epochs = n_epochs
        self.n_epochs_decay = n_epochs_decay
        self.epoch_count = epoch_count
        self.lr_decay_iters = lr_decay_iters
        self.monitor = monitor
        self.history_csv = history_csv
        self.plateau = None
        self.plateau_epoch = 0  # epochs the plateau state has seen

    def factor(self, epoch):
        """The rate of 0-based `epoch` relative to `base_lr` (plateau: from the epochs seen so far)."""
        if self.policy == "linear":
            return linear_decay_factor(epoch, self.n_epochs, self.n_epochs_decay, self.epoch_count)
        if self.policy == "step":
            return 0.1 ** (epoch // self.lr_decay_iters)
        if self.policy == "cosine":
            return (1.0 + math.cos(math.pi * epoch / max(self.n_epochs, 1))) / 2.0
        return self._plateau_before(epoch).scale

    def rate(self, epoch):
        return self.base_lr * self.factor(epoch)

    def _plateau_before(self, epoch):
        """The plateau state after the epochs before `epoch`, replayed from the CSV log when resuming."""
        if self.plateau is None or self.plateau_epoch != epoch:
            self.plateau = PlateauState()
            values = _logged_values(self.history_csv, self.monitor) if self.history_csv else {}
            missing = [e for e in range(epoch) if e not in values]
            if missing:
                raise ValueError(
                    f"lr policy 'plateau' resumes from {self.history_csv}, which lacks {self.monitor} "
                    f"of epoch(s) {', '.join(str(e + 1) for e in missing)}"
                )
            for e in range(epoch):
                self.plateau.step(values[e], self.base_lr)
            self.plateau_epoch = epoch
        return self.plateau

    def on_epoch_begin(self, epoch, logs=None):
        for optimizer in _optimizers(self.model):
            optimizer.learning_rate.assign(self.rate(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(_optimizers(self.model)[0].learning_rate.numpy())
        if self.policy == "plateau" and logs and self.monitor in logs:
            self._plateau_before(epoch).step(float(logs[self.monitor]), self.base_lr)
            self.plateau_epoch = epoch + 1


class LinearDecaySchedule(LearningRateSchedule):
    """The paper's schedule: `LearningRateSchedule(base_lr, "linear", n_epochs, n_epochs_decay)`."""

    def __init__(self, base_lr, n_epochs, n_epochs_decay):
        super().__init__(base_lr, "linear", n_epochs, n_epochs_decay)


def _logged_values(csv_path, key):
    """`{epoch: value}` of one column of a CSVLogger file (the last row of an epoch logged twice wins)."""
    if not Path(csv_path).exists():
        return {}
    with open(csv_path, newline="") as file:
        return {int(row["epoch"]): float(row[key]) for row in csv.DictReader(file) if row.get(key) not in (None, "")}


class StepTimer(keras.callbacks.Callback):
    """Adds `seconds_per_step` to the epoch logs: the mean wall time of the epoch's steps.

    A step is timed from `on_train_batch_begin` to `on_train_batch_end`: the
    input pipeline's next batch and the training step, not the other
    callbacks. The first epoch's mean includes the step's compilation.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.total, self.count, self.start = 0.0, 0, None

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.start is not None:
            self.total += time.perf_counter() - self.start
            self.count += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.count:
            logs["seconds_per_step"] = self.total / self.count


class CSVLog(keras.callbacks.Callback):
    """The epoch logs as a CSV file, one row appended at each epoch end.

    Keras's `CSVLogger` (columns `epoch` and the first epoch's log keys,
    sorted) without the empty `val_*` columns it adds when there is no
    validation, plus `extra_columns` (for values logged only at some
    epochs). A row is appended whole or not at all (`files.append_text`),
    so a full disk never leaves half a row.
    """

    def __init__(self, filename, separator=",", append=False, extra_columns=()):
        super().__init__()
        self.filename = Path(filename)
        self.separator = separator
        self.append = append
        self.extra_columns = tuple(extra_columns)
        self.keys = None

    def on_train_begin(self, logs=None):
        self.keys = None
        if not self.append:
            self.filename.unlink(missing_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted({*logs, *self.extra_columns})
        text = io.StringIO()
        writer = csv.writer(text, delimiter=self.separator, lineterminator="\r\n")  # as csv.excel, Keras's
        if not self.filename.exists() or self.filename.stat().st_size == 0:
            writer.writerow(["epoch", *self.keys])
        writer.writerow([epoch, *(logs.get(key, "NA") for key in self.keys)])
        files.append_text(self.filename, text.getvalue())


def _optimizers(model):
    return getattr(model.optimizer, "optimizers", None) or [model.optimizer]


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training when any loss becomes NaN or infinite.

    The message names the loss, the epoch and the step; `self.error` keeps it
    for the caller. Put it before the checkpoint callback, which then does not
    save the broken state, so the last good checkpoint is kept.
    """

    def __init__(self):
        super().__init__()
        self.error = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                self.error = f"{name} became {float(value)} at epoch {self.epoch + 1}, step {batch + 1}"
                self.model.stop_training = True
                return


class ImageSnapshot(keras.callbacks.Callback):
    """Saves a grid of translations of fixed images.

    One row per image pair: real_a | fake_b | cycled_a | real_b | fake_a |
    cycled_b, titled with the epoch and the losses, drawn with matplotlib to
    `out_dir/epoch_XXX.png` (or `step_XXXXXXX.png` with `every_n_steps`).
    Written to TensorBoard too when `tensorboard_dir` is given and
    tensorboard is installed.

    Args:
        images_a: float array `(n, h, w, c)` in [-1, 1], domain A.
        images_b: float array `(n, h, w, c)` in [-1, 1], domain B (same n).
        out_dir: folder for the PNGs.
        every_n_steps: int or None. Also snapshot every this many steps.
        cell_size: int. Pixels per image cell. Defaults to `128`.
        tensorboard_dir: folder or None. Defaults to `None`.
        every_n_epochs: int. Snapshot at the end of every this many epochs;
            0: never at epoch ends. Defaults to `1`.
    """

    COLUMNS = ("real_a", "fake_b", "cycled_a", "real_b", "fake_a", "cycled_b")
    TITLE_PIXELS = 40

    def __init__(
        self,
        images_a: np.ndarray,
        images_b: np.ndarray,
        out_dir: str | os.PathLike,
        every_n_steps: int | None = None,
        cell_size: int = 128,
        tensorboard_dir: str | os.PathLike | None = None,
        every_n_epochs: int = 1,
    ):
        super().__init__()
        if len(images_a) != len(images_b) or len(images_a) == 0:
            raise ValueError(
                f"ImageSnapshot needs the same, non-zero number of A and B images. "
                f"Received: {len(images_a)} and {len(images_b)}"
            )
        self.images_a = np.asarray(images_a, "float32")
        self.images_b = np.asarray(images_b, "float32")
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.cell_size = cell_size
        self.tensorboard_dir = tensorboard_dir
        self.every_n_epochs = every_n_epochs
        self.epoch = 0
        self.step = 0

    def grid(self) -> list[tuple[np.ndarray, ...]]:
        """The rows of translated images, as a list of 6-tuples of arrays."""
        model = self.model
        fake_b = model.translate(self.images_a, "a2b")
        cycled_a = model.translate(fake_b, "b2a")
        fake_a = model.translate(self.images_b, "b2a")
        cycled_b = model.translate(fake_a, "a2b")
        return list(zip(self.images_a, fake_b, cycled_a, self.images_b, fake_a, cycled_b))

    def save(self, name: str, title: str) -> Path:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self.grid()
        cell, dpi = self.cell_size, 100
        width, height = cell * len(self.COLUMNS), cell * len(rows) + self.TITLE_PIXELS
        figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        FigureCanvasAgg(figure)
        figure.text(0.5, 1 - 0.5 * self.TITLE_PIXELS / height, title, ha="center", va="center", fontsize=7, wrap=True)
        for r, row in enumerate(rows):
            for c, image in enumerate(row):
                bottom = (len(rows) - 1 - r) * cell / height
                axes = figure.add_axes([c * cell / width, bottom, cell / width, cell / height])
                image = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
                if image.shape[-1] == 1:
                    axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
                else:
                    axes.imshow(image[..., :3])
                axes.set_axis_off()
                if r == 0:
                    axes.text(2, 10, self.COLUMNS[c], color="white", fontsize=7, backgroundcolor="black")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = files.replace_atomically(self.out_dir / f"{name}.png", lambda partial: figure.savefig(partial, dpi=dpi))
        self._to_tensorboard(rows, name)
        return path

    def _to_tensorboard(self, rows, name):
        if self.tensorboard_dir is None:
            return
        try:
            import tensorboard  # noqa: F401  (optional dependency)
        except ImportError:
            return
        import tensorflow as tf

        strip = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
        with tf.summary.create_file_writer(str(self.tensorboard_dir)).as_default():
            tf.summary.image("snapshots", (strip[None] + 1.0) / 2.0, step=self.step, description=name)

    def _title(self, label, logs):
        losses = ", ".join(f"{k} {v:.3f}" for k, v in sorted((logs or {}).items()) if k.endswith("loss"))
        return f"{label}\n{losses}"

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.every_n_steps and self.step % self.every_n_steps == 0:
            self.save(f"step_{self.step:07d}", self._title(f"epoch {self.epoch + 1}, step {self.step}", logs))

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self.save(f"epoch_{epoch + 1:03d}", self._title(f"epoch {epoch + 1}", logs))


class Evaluation(keras.callbacks.Callback):
    """FID, KID and paired scores of the model's A -> B translations of test images, every N epochs.

    At the end of every `every_n_epochs`-th epoch (and of the last one) the
    test inputs are translated by `model.translate(images, "a2b")`, rounded
    to uint8 as translate.py writes them, and scored by
    `metrics.score_batches`: FID and KID against the real test images of
    domain B when `features` is given, PSNR, SSIM and MAE against the
    ground truth of `truth_fn` when given. The scores go into the epoch logs
    under `KEYS`, so that the CSVLogger and the progress bar record them.
    Every key is present at every epoch end, NaN when that epoch is not
    evaluated or the score is not computable, because the CSVLogger fixes
    its columns at the first epoch end: put this callback before it. With
    `tensorboard_dir`, the scores are also written as TensorBoard scalars
    `eval/<key>` at step `epoch + 1`.

    The best model so far is kept at `best_path` (the whole model, as
    model.keras; atomic writes), with `best.json` beside it recording its
    epoch and scores: the lowest FID when FID is computed, else the highest
    PSNR when there is ground truth, else none is kept. A resumed run goes
    on from the recorded best when it was measured the same way.

    The inputs themselves are scored once, at the start, as the baseline
    (when the model keeps the channel count).

    Args:
        every_n_epochs: int >= 1.
        inputs: callable returning an iterable of float batches in [-1, 1]
            of the model's domain A (e.g. `data.domain_batches`), or None
            when there is no test split: nothing is computed then.
        reals: the same for the real images of domain B (FID/KID), or None.
        features: `fid_inception.InceptionFeatures` (or any uint8 RGB batch
            -> features callable), or None: no FID/KID.
        truth_fn: callable, float input batch -> uint8 ground truth of its
            translation, or None: no PSNR/SSIM/MAE.
        best_path: where to keep the best model, or None.
        final_epoch: int or None. The run's number of epochs: the last one
            is always evaluated.
        tensorboard_dir: folder or None.
        settings: `metrics.EvalSettings` (KID subsets and seed).
    """

    KEYS = ("fid", "kid_mean", "kid_std", "psnr", "ssim", "mae")
    RECORD = "best.json"

    def __init__(
        self,
        every_n_epochs,
        inputs,
        reals=None,
        features=None,
        truth_fn=None,
        best_path=None,
        final_epoch=None,
        tensorboard_dir=None,
        settings=None,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1. Received: {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.inputs = inputs
        self.reals = reals if features is not None else None
        self.features = features if reals is not None else None
        self.truth_fn = truth_fn
        self.best_path = None if best_path is None else Path(best_path)
        self.final_epoch = final_epoch
        self.tensorboard_dir = tensorboard_dir
        self.settings = settings or metrics.EvalSettings(verbose=False)
        self.monitor = None
        if inputs is not None:
            self.monitor = "fid" if self.features is not None else ("psnr" if truth_fn is not None else None)
        self.baseline = None
        self.history = {}
        self._real_features = None
        self._announced = None
        self.best = self._read_record()

    @property
    def computes(self):
        """Whether any score can be computed."""
        return self.monitor is not None

    def due(self, epoch):
        """Whether epoch `epoch` (from 0) is evaluated."""
        return (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == self.final_epoch

    def _basis(self):
        """What makes two values of the monitored score comparable."""
        if self.monitor != "fid":
            return {"metric": self.monitor}
        settings = self.features.settings() if hasattr(self.features, "settings") else {}
        keep = ("resize_mode", "input_size", "inception_weights_sha256")
        return {"metric": "fid", **{k: settings.get(k) for k in keep}}

    def _record_path(self):
        return self.best_path.with_name(self.RECORD)

    def _read_record(self):
        if self.best_path is None or self.monitor is None:
            return None
        path = self._record_path()
        if not (path.exists() and self.best_path.exists()):
            return None
        record = json.loads(path.read_text())
        if record.get("basis") != self._basis():
            print(
                f"{self.best_path} was chosen by another measure ({record.get('basis')}); "
                f"the next evaluation replaces it"
            )
            return None
        return record

    def score(self, translate):
        """The scores of `translate` (float batch -> float batch in [-1, 1]) on the test inputs."""

        def batches():
            for images in self.inputs():
                truth = self.truth_fn(images) if self.truth_fn is not None else None
                yield metrics.to_uint8(translate(images)), truth

        return metrics.score_batches(batches(), self.features, self._reals(), self.settings)

    def _reals(self):
        if self.features is None:
            return None
        if self._real_features is None:
            rgb = (metrics.to_rgb(metrics.to_uint8(batch)) for batch in self.reals())
            self._real_features = np.concatenate([np.asarray(self.features(b), np.float32) for b in rgb])
        return self._real_features

    def on_train_begin(self, logs=None):
        if not self.computes or self.baseline is not None:
            return
        generator = self.model.generator("a2b")
        if generator.input_shape[-1] == generator.output_shape[-1]:
            self.baseline = self.score(lambda images: images)
            print(f"Evaluation baseline, the test inputs themselves: {_format_scores(self.baseline)}")
        else:
            self.baseline = {}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        for key in self.KEYS:
            logs[key] = math.nan
        if not self.computes or not self.due(epoch):
            return
        scores = self.score(lambda images: self.model.translate(images, "a2b"))
        for key in self.KEYS:
            if key in scores:
                logs[key] = float(scores[key])
        self.history[epoch + 1] = scores
        self._to_tensorboard(scores, epoch + 1)
        self._keep_if_best(epoch + 1, scores)

    def _to_tensorboard(self, scores, step):
        if self.tensorboard_dir is None:
            return
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        # What tf.summary.scalar writes, without needing the tensorboard package.
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        writer = tf.summary.create_file_writer(str(self.tensorboard_dir))
        with writer.as_default():
            for key in self.KEYS:
                if key in scores:
                    tf.summary.write(f"eval/{key}", tf.constant(scores[key], tf.float32), step, metadata=metadata)
        writer.close()

    def _keep_if_best(self, epoch, scores):
        if self.best_path is None or self.monitor is None:
            return
        value = float(scores.get(self.monitor, math.nan))
        if math.isnan(value):
            return
        if self.best is not None:
            best = float(self.best["value"])
            if not (value < best if self.monitor == "fid" else value > best):
                return
        self.best_path.parent.mkdir(parents=True, exist_ok=True)
        files.replace_atomically(self.best_path, self.model.save, size=_size_or_none(self.best_path))
        record = {
            "epoch": epoch,
            "metric": self.monitor,
            "value": value,
            "scores": scores,
            "baseline": self.baseline,
            "basis": self._basis(),
        }
        files.write_text(self._record_path(), json.dumps(metrics.finite_or_str(record), indent=2) + "\n")
        self.best = metrics.finite_or_str(record)

    def on_train_end(self, logs=None):
        if self.best is not None and self._announced != self.best["epoch"]:
            self._announced = self.best["epoch"]
            print(
                f"Best model by {self.best['metric']}: epoch {self.best['epoch']} "
                f"({_format_scores(self.best['scores'])}), kept as {self.best_path}"
            )


def _format_scores(scores):
    shown = [f"{k} {float(scores[k]):.4g}" for k in Evaluation.KEYS if k in scores]
    return ", ".join(shown) or "nothing computable"


def plot_losses(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> str | os.PathLike | None:
    """Draws every `*loss` column of a CSVLogger file against the epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        return None
    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    generator_axes, discriminator_axes = figure.subplots(1, 2)
    for name in rows[0]:
        if not name.endswith("loss") or name.startswith("val_"):
            continue
        axes = discriminator_axes if name.startswith("disc") else generator_axes
        axes.plot(epochs, [float(row[name]) for row in rows], marker=".", label=name)
    for axes, title in ((generator_axes, "generators"), (discriminator_axes, "discriminators")):
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.legend(fontsize=7)
    figure.tight_layout()
    files.replace_atomically(png_path, figure.savefig)
    return png_path


class LossCurve(keras.callbacks.Callback):
    """Plots the CSV log's losses to a PNG when training ends (see `plot_losses`)."""

    def __init__(self, csv_path: str | os.PathLike, png_path: str | os.PathLike):
        super().__init__()
        self.csv_path = csv_path
        self.png_path = png_path

    def on_train_end(self, logs=None):
        if Path(self.csv_path).exists():
            plot_losses(self.csv_path, self.png_path)


class Checkpoint(keras.callbacks.Callback):
    """Crash-proof checkpoints for resuming exactly where training stopped.

    Saves the whole model (`.keras`: weights, both optimizers' state, the
    image pools, the compile settings) every `every_n_steps` steps and at
    each epoch end, with `{"epoch", "step", "file"}` in `checkpoint.json`:
    `step` steps of `epoch` are done. Writes are atomic: the model goes to a
    new file, then `checkpoint.json` is replaced in one `os.replace`, and
    only then is the previous file deleted, so a kill at any moment leaves a
    complete checkpoint. A step whose losses are not finite is never saved.

    Args:
        directory: folder for the checkpoints.
        steps_per_epoch: int. Steps in one epoch.
        every_n_steps: int or None. Defaults to `None` (epoch ends only).
    """

    STATE = "checkpoint.json"

    def __init__(self, directory: str | os.PathLike, steps_per_epoch: int, every_n_steps: int | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.steps_per_epoch = steps_per_epoch
        self.every_n_steps = every_n_steps
        self.epoch = 0
        # Steps done before this fit() began, when it finishes a resumed epoch.
        self.step_offset = 0

    @classmethod
    def latest(cls, directory: str | os.PathLike) -> tuple[Path, int, int] | None:
        """`(model_path, epoch, step)` of the last complete checkpoint, or None."""
        state_path = Path(directory) / cls.STATE
        if not state_path.exists():
            return None
        state = json.loads(state_path.read_text())
        return Path(directory) / state["file"], state["epoch"], state["step"]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not _finite(logs) or self.model.stop_training:
            return
        step = self.step_offset + batch + 1
        if self.every_n_steps and step % self.every_n_steps == 0 and step < self.steps_per_epoch:
            self.save(self.epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        if _finite(logs) and not self.model.stop_training:
            self.save(epoch + 1, 0)

    def save(self, epoch: int, step: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self.latest(self.directory)
        name = f"ckpt-epoch{epoch:04d}-step{step:07d}.keras"
        # The previous checkpoint's size is what this one needs (named if the disk is full).
        size = _size_or_none(previous[0]) if previous else None
        files.replace_atomically(self.directory / name, self.model.save, size=size)
        files.write_text(self.directory / self.STATE, json.dumps({"epoch": epoch, "step": step, "file": name}))
        if previous is not None and previous[0].name != name and previous[0].exists():
            previous[0].unlink()


def _size_or_none(path):
    return Path(path).stat().st_size if Path(path).is_file() else None


def _finite(logs):
    # The losses only: `Evaluation` logs NaN for epochs it does not evaluate.
    return all(math.isfinite(float(v)) for k, v in (logs or {}).items() if k.endswith("loss"))
