"""Callbacks for `fit()` of a model with `generator(direction)` (such as `model.CycleGAN`):
learning-rate policies, timing, CSV log and loss curve, snapshots, NaN stop, checkpoints, evaluation."""

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
    """The reference's `linear` policy for 0-based `epoch`: 1 for n_epochs, then linear decay."""
    return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)


class PlateauState:
    """PyTorch's `ReduceLROnPlateau(mode="min")` with the reference's factor, threshold and patience."""

    def __init__(self, factor=0.2, threshold=0.01, patience=5):
        self.factor, self.threshold, self.patience = factor, threshold, patience
        self.best, self.bad_epochs, self.scale = math.inf, 0, 1.0

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
    """Sets every optimizer's rate at each epoch start by a policy of the reference's `get_scheduler`.

    The rate of 0-based epoch `e` is the PyTorch scheduler's after `e` steps, so
    `fit(initial_epoch=e)` continues the schedule; it is logged as `lr`. (The reference steps
    `plateau` on a metric its CycleGAN never sets; here it watches `monitor`.)

    Args:
        policy: one of `config.LR_POLICIES`.
        n_epochs: epochs at the base rate (linear), or the cosine's half period.
        lr_decay_iters: epochs between the x0.1 steps of `step`.
        history_csv: the run's `CSVLog` file, read to resume `plateau`.
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
        self.base_lr, self.policy, self.monitor, self.history_csv = base_lr, policy, monitor, history_csv
        self.n_epochs, self.n_epochs_decay, self.epoch_count = n_epochs, n_epochs_decay, epoch_count
        self.lr_decay_iters = lr_decay_iters
        self.monitored = {}  # epoch (from 1) -> the epoch mean of `monitor`

    def factor(self, epoch):
        """The rate of 0-based `epoch` relative to `base_lr` (plateau: from the epochs seen so far)."""
        if self.policy == "linear":
            return linear_decay_factor(epoch, self.n_epochs, self.n_epochs_decay, self.epoch_count)
        if self.policy == "step":
            return 0.1 ** (epoch // self.lr_decay_iters)
        if self.policy == "cosine":
            return (1.0 + math.cos(math.pi * epoch / max(self.n_epochs, 1))) / 2.0
        before = range(1, epoch + 1)  # the epochs before 0-based `epoch`, counted from 1
        if any(e not in self.monitored for e in before):  # resumed: the log has them
            logged = {
                row["epoch"]: float(row[self.monitor]) for row in read_log(self.history_csv) if row.get(self.monitor)
            }
            self.monitored = {**logged, **self.monitored}
            missing = [e for e in before if e not in self.monitored]
            if missing:
                raise ValueError(
                    f"lr policy 'plateau' resumes from {self.history_csv}, which lacks {self.monitor} "
                    f"of epoch(s) {', '.join(map(str, missing))}"
                )
        state = PlateauState()
        for e in before:
            state.step(self.monitored[e], self.base_lr)
        return state.scale

    def _optimizers(self):
        return getattr(self.model.optimizer, "optimizers", None) or [self.model.optimizer]

    def on_epoch_begin(self, epoch, logs=None):
        for optimizer in self._optimizers():
            optimizer.learning_rate.assign(self.base_lr * self.factor(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            # The float32's shortest form (0.0002), not its float64 digits (0.00019999999494757503).
            logs["lr"] = float(str(np.float32(self._optimizers()[0].learning_rate.numpy())))
        if logs and self.monitor in logs:
            self.monitored[epoch + 1] = float(logs[self.monitor])


class StepTimer(keras.callbacks.Callback):
    """Adds `seconds_per_step` to the epoch logs: the mean time from batch begin to batch end."""

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
    """Keras's `CSVLogger` without empty `val_*` columns, epochs from 1, each row appended whole or not at all.

    Args:
        append: append to an existing file (renumbered if an earlier version counted from 0).
    """

    def __init__(self, filename, append=False):
        super().__init__()
        self.filename = Path(filename)
        self.append = append
        self.keys = None

    def on_train_begin(self, logs=None):
        self.keys = None
        if not self.append:
            self.filename.unlink(missing_ok=True)
        elif rows := read_log(self.filename):  # rewritten as read: counted from 1, if an earlier version wrote it
            files.write_text(self.filename, _csv_text([list(rows[0]), *(row.values() for row in rows)]))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not completed(self.model, logs):  # stopped midway: the resumed run writes this epoch's row
            return
        if self.keys is None:
            self.keys = sorted(logs)
        rows = [] if self.filename.exists() and self.filename.stat().st_size else [["epoch", *self.keys]]
        rows.append([epoch + 1, *(logs.get(key, "NA") for key in self.keys)])
        files.append_text(self.filename, _csv_text(rows))


def read_log(csv_path):
    """The rows of a `CSVLog` file as dicts, `epoch` an int from 1 (also in earlier versions' logs)."""
    if csv_path is None or not Path(csv_path).exists():
        return []
    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    shift = 1 if rows and rows[0]["epoch"] == "0" else 0
    return [{**row, "epoch": int(row["epoch"]) + shift} for row in rows]


def _csv_text(rows):
    text = io.StringIO()
    csv.writer(text).writerows(rows)  # csv.excel, as Keras's CSVLogger: "\r\n" line ends
    return text.getvalue()


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at a NaN or infinite loss, named in `self.error`. Put it before `Checkpoint`."""

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
    """Saves `out_dir/epoch_XXX.png` (and TensorBoard images): a row per fixed image pair.

    The columns are what the model's `snapshot_columns(real_a, real_b)` returns, titled by name.

    Args:
        images_a, images_b: float arrays `(n, h, w, c)` in [-1, 1], the same n.
        every_n_steps: also snapshot every this many steps (`step_XXXXXXX.png`).
        cell_size: pixels per image cell.
        every_n_epochs: 0: never at epoch ends.
        tensorboard_dir: also write each snapshot there: `snapshots` at the epoch (from 1) at epoch ends,
            `snapshots_by_step` at the step for `every_n_steps`.
        initial_step: steps done before this callback's first (a resumed run's), so step numbers go on.
    """

    TITLE_PIXELS = 40

    def __init__(
        self,
        images_a,
        images_b,
        out_dir,
        every_n_steps=None,
        cell_size=128,
        tensorboard_dir=None,
        every_n_epochs=1,
        initial_step=0,
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
        self.epoch, self.step = 0, initial_step

    def grid(self) -> tuple[list[str], list[tuple[np.ndarray, ...]]]:
        """The column names, and a row of images per fixed pair."""
        columns = self.model.snapshot_columns(self.images_a, self.images_b)
        return list(columns), list(zip(*columns.values()))

    def save(self, name: str, title: str, tag: str = "snapshots", step: int | None = None) -> Path:
        """Writes `out_dir/name.png`, and the same grid to TensorBoard as `tag` at `step` (default: the step)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names, rows = self.grid()
        cell, dpi = self.cell_size, 100
        width, height = cell * len(names), cell * len(rows) + self.TITLE_PIXELS
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
                    axes.text(2, 10, names[c], color="white", fontsize=7, backgroundcolor="black")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = files.replace_atomically(self.out_dir / f"{name}.png", lambda partial: figure.savefig(partial, dpi=dpi))
        self._to_tensorboard(rows, name, tag, self.step if step is None else step)
        return path

    def _to_tensorboard(self, rows, name, tag, step):
        if self.tensorboard_dir is None:
            return
        try:
            import tensorboard  # noqa: F401  (optional dependency)
        except ImportError:
            return
        import tensorflow as tf

        def rgb(image):  # as the PNG shows it: grayscale as gray, RGB of more channels
            return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]

        strip = np.concatenate([np.concatenate([rgb(image) for image in row], axis=1) for row in rows], axis=0)
        with tf.summary.create_file_writer(str(self.tensorboard_dir)).as_default():
            tf.summary.image(tag, (strip[None] + 1.0) / 2.0, step=step, description=name)

    def _title(self, label, logs):
        losses = ", ".join(f"{k} {v:.3f}" for k, v in sorted((logs or {}).items()) if k.endswith("loss"))
        return f"{label}\n{losses}"

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.every_n_steps and self.step % self.every_n_steps == 0:
            title = self._title(f"epoch {self.epoch + 1}, step {self.step}", logs)
            self.save(f"step_{self.step:07d}", title, tag="snapshots_by_step")

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0 and completed(self.model, logs):
            self.save(f"epoch_{epoch + 1:03d}", self._title(f"epoch {epoch + 1}", logs), step=epoch + 1)


class Evaluation(keras.callbacks.Callback):
    """Scores the model's A -> B translations of test images every N epochs and keeps the best model.

    Every key of `KEYS` is in every epoch's logs (NaN when not evaluated), as the CSV log fixes
    its columns at the first epoch end: put this callback before it. The best model (lowest FID,
    else highest PSNR) is kept at `best_path` with `best.json` beside it; a resumed run goes on
    from that record when it was measured the same way.

    Args:
        inputs: callable -> float batches in [-1, 1] of domain A, or None: nothing is computed.
        reals: the same for domain B's real images (FID/KID), or None.
        features: uint8 RGB batch -> Inception features (`fid_inception`), or None: no FID/KID.
        truth_fn: float input batch -> uint8 ground truth, or None: no PSNR/SSIM/MAE.
        final_epoch: the run's last epoch, always evaluated.
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
        self._real_features = None
        self._announced = None
        self.best = self._read_record()

    @property
    def computes(self):
        return self.monitor is not None

    def due(self, epoch):
        return (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == self.final_epoch

    def _basis(self):
        """What makes two values of the monitored score comparable."""
        if self.monitor != "fid":
            return {"metric": self.monitor}
        settings = self.features.settings() if hasattr(self.features, "settings") else {}
        keep = ("resize_mode", "input_size", "inception_weights_sha256")
        return {"metric": "fid", **{k: settings.get(k) for k in keep}}

    def _read_record(self):
        if self.best_path is None or self.monitor is None:
            return None
        path = self.best_path.with_name(self.RECORD)
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
        self._to_tensorboard(scores, epoch + 1)
        self._keep_if_best(epoch + 1, scores)

    def _to_tensorboard(self, scores, step):
        if self.tensorboard_dir is None:
            return
        writer = ScalarWriter(self.tensorboard_dir)
        writer.write({f"eval/{key}": scores[key] for key in self.KEYS if key in scores}, step)
        writer.close()

    def _keep_if_best(self, epoch, scores):
        lower = self.monitor == "fid"
        value = float(scores.get(self.monitor, math.nan))
        best = float(self.best["value"]) if self.best is not None else (math.inf if lower else -math.inf)
        if self.best_path is None or not (value < best if lower else value > best):  # NaN is never better
            return
        self.best_path.parent.mkdir(parents=True, exist_ok=True)
        files.replace_atomically(self.best_path, self.model.save, size=_size_or_none(self.best_path))
        record = {"epoch": epoch, "metric": self.monitor, "value": value, "scores": scores}
        self.best = metrics.finite_or_str({**record, "baseline": self.baseline, "basis": self._basis()})
        files.write_text(self.best_path.with_name(self.RECORD), json.dumps(self.best, indent=2) + "\n")

    def on_train_end(self, logs=None):
        if self.best is not None and self._announced != self.best["epoch"]:
            self._announced = self.best["epoch"]
            print(
                f"Best model by {self.best['metric']}: epoch {self.best['epoch']} "
                f"({_format_scores(self.best['scores'])}), kept as {self.best_path}"
            )


class ScalarWriter:
    """Scalars into a TensorBoard log folder, as `tf.summary.scalar` writes them (no tensorboard package needed)."""

    def __init__(self, log_dir):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(log_dir))
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )

    def write(self, values, step):
        """Writes `{tag: number}` at `step` (non-finite values are left out) and flushes."""
        tf = self._tf
        with self._writer.as_default():
            for tag, value in values.items():
                if math.isfinite(float(value)):
                    tf.summary.write(tag, tf.constant(float(value), tf.float32), step, metadata=self._metadata)
        self._writer.flush()

    def close(self):
        self._writer.close()


class EpochScalars(keras.callbacks.Callback):
    """Writes each epoch's log to TensorBoard at the epoch (from 1), as `log.csv` has it.

    Tags: `losses/<name>` for every epoch-mean `*loss`, `learning_rate/generator` and
    `learning_rate/discriminator` (each optimizer's rate: `learning_rate` for a model with one),
    and the other numbers of the log by their names (`seconds_per_step`). `Evaluation`'s
    scores are left to it (`eval/<name>`, at the epochs evaluated). A resumed `fit(initial_epoch=e)`
    goes on at epoch e + 1: put this callback after the CSV log and before `Checkpoint`, so that an
    epoch is in TensorBoard when its row is in the log, and rerun only when its row is.

    Args:
        log_dir: the TensorBoard folder (`WORKDIR/tensorboard`).
    """

    SKIPPED = ("lr", *Evaluation.KEYS)

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = ScalarWriter(self.log_dir)

    def learning_rates(self):
        """`{tag: rate}` of the model's optimizers now."""

        def rate(optimizer):
            return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

        roles = {role: getattr(self.model, f"{role}_optimizer", None) for role in ("generator", "discriminator")}
        if all(roles.values()):
            return {f"learning_rate/{role}": rate(optimizer) for role, optimizer in roles.items()}
        return {"learning_rate": rate(self.model.optimizer)}

    def on_epoch_end(self, epoch, logs=None):
        if not completed(self.model, logs):  # as the CSV log: the resumed run writes this epoch
            return
        values = {}
        for key, value in sorted((logs or {}).items()):
            if key not in self.SKIPPED and np.ndim(value) == 0:
                values[f"losses/{key}" if key.endswith("loss") else key] = value
        self._writer.write({**values, **self.learning_rates()}, epoch + 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _format_scores(scores):
    shown = [f"{k} {float(scores[k]):.4g}" for k in Evaluation.KEYS if k in scores]
    return ", ".join(shown) or "nothing computable"


def plot_losses(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> str | os.PathLike | None:
    """Draws every `*loss` column of a `CSVLog` file against the epoch; returns `png_path` (None: no rows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_log(csv_path)
    if not rows:
        return None
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    generator_axes, discriminator_axes = figure.subplots(1, 2)
    for name in rows[0]:
        if name.endswith("loss") and not name.startswith("val_"):
            axes = discriminator_axes if name.startswith("disc") else generator_axes
            axes.plot([row["epoch"] for row in rows], [float(row[name]) for row in rows], marker=".", label=name)
    for axes, title in ((generator_axes, "generators"), (discriminator_axes, "discriminators")):
        axes.set_title(title)
        axes.set_xlabel("epoch")
        if axes.lines:  # a log without that side's losses: an empty panel, no legend warning
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
        plot_losses(self.csv_path, self.png_path)


class Checkpoint(keras.callbacks.Callback):
    """Saves the whole model every `every_n_steps` steps and at epoch ends, for an exact resume.

    The model goes to a new file, then `checkpoint.json` (`step` steps of 0-based `epoch` done)
    is replaced atomically, then the previous file is deleted: a kill leaves a complete
    checkpoint. Steps with non-finite losses are never saved.
    """

    STATE = "checkpoint.json"

    def __init__(self, directory: str | os.PathLike, steps_per_epoch: int, every_n_steps: int | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.steps_per_epoch = steps_per_epoch
        self.every_n_steps = every_n_steps
        self.epoch = 0
        self.step_offset = 0  # steps done before this fit() began, when it finishes a resumed epoch

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
        if completed(self.model, logs):
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


def completed(model, logs):
    """Whether an epoch that ends with `logs` was trained to its end with finite losses (it is saved)."""
    return _finite(logs) and not getattr(model, "stop_training", False)


def _finite(logs):
    # The losses only: `Evaluation` logs NaN for epochs it does not evaluate.
    return all(math.isfinite(float(v)) for k, v in (logs or {}).items() if k.endswith("loss"))
