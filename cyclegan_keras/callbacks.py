"""Callbacks for training a `CycleGAN` with `fit()`: the reference's schedules, step timing,
image snapshots, a loss curve, non-finite loss detection and crash-proof
checkpoints. Each takes its inputs as arguments and works with any fit()."""

import csv
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

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


class CSVLog(keras.callbacks.CSVLogger):
    """Keras's `CSVLogger` without the empty `val_*` columns it adds when there is no validation.

    The columns are the first epoch's log keys plus `extra_columns` (for
    values logged only at some epochs).
    """

    def __init__(self, filename, separator=",", append=False, extra_columns=()):
        super().__init__(filename, separator=separator, append=append)
        self.extra_columns = tuple(extra_columns)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            self.keys = sorted({*(logs or {}), *self.extra_columns})
        super().on_epoch_end(epoch, logs)


def _optimizers(model):
    return getattr(model, "optimizers", None) or [model.optimizer]


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
        self, images_a, images_b, out_dir, every_n_steps=None, cell_size=128, tensorboard_dir=None, every_n_epochs=1
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

    def grid(self):
        """The rows of translated images, as a list of 6-tuples of arrays."""
        model = self.model
        fake_b = model.translate(self.images_a, "a2b")
        cycled_a = model.translate(fake_b, "b2a")
        fake_a = model.translate(self.images_b, "b2a")
        cycled_b = model.translate(fake_a, "a2b")
        return list(zip(self.images_a, fake_b, cycled_a, self.images_b, fake_a, cycled_b))

    def save(self, name, title):
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
        path = self.out_dir / f"{name}.png"
        figure.savefig(path, dpi=dpi)
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


def plot_losses(csv_path, png_path):
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
    figure.savefig(png_path)
    return png_path


class LossCurve(keras.callbacks.Callback):
    """Plots the CSV log's losses to a PNG when training ends (see `plot_losses`)."""

    def __init__(self, csv_path, png_path):
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

    def __init__(self, directory, steps_per_epoch, every_n_steps=None):
        super().__init__()
        self.directory = Path(directory)
        self.steps_per_epoch = steps_per_epoch
        self.every_n_steps = every_n_steps
        self.epoch = 0
        # Steps done before this fit() began, when it finishes a resumed epoch.
        self.step_offset = 0

    @classmethod
    def latest(cls, directory):
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

    def save(self, epoch, step):
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self.latest(self.directory)
        name = f"ckpt-epoch{epoch:04d}-step{step:07d}.keras"
        replace_atomically(self.directory / name, self.model.save)
        state = json.dumps({"epoch": epoch, "step": step, "file": name})
        replace_atomically(self.directory / self.STATE, lambda path: path.write_text(state))
        if previous is not None and previous[0].name != name and previous[0].exists():
            previous[0].unlink()


def replace_atomically(path, write):
    """Writes `path` by `write(temporary_path)` and then one `os.replace`.

    A kill at any moment leaves either the old file or the new one, never a
    part of one. The temporary name keeps the suffix (`.keras` files must
    end in `.keras`).
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    write(partial)
    os.replace(partial, path)
    return path


def _finite(logs):
    return all(math.isfinite(float(v)) for v in (logs or {}).values())
