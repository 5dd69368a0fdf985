"""Callbacks for training a `CycleGAN` with `fit()`: the paper's schedule,
image snapshots, a loss curve, non-finite loss detection and crash-proof
checkpoints. Each takes its inputs as arguments and works with any fit()."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np


def linear_decay_factor(epoch, n_epochs, n_epochs_decay, epoch_count=1):
    """The reference's `linear` policy: 1 for n_epochs, then linear decay.

    `1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1)`, with
    `epoch` counted from 0. The last epoch trains at `1 / (n_epochs_decay + 1)`
    of the base rate.
    """
    return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)


class LinearDecaySchedule(keras.callbacks.Callback):
    """Sets every optimizer of the model to `base_lr * linear_decay_factor(epoch)`.

    Applied at the start of each epoch from the epoch number alone, so a
    resumed run (`fit(initial_epoch=e)`) continues the schedule. The rate is
    added to the epoch logs as `lr`.

    Args:
        base_lr: float. The rate of the first n_epochs.
        n_epochs: int. Epochs at the base rate.
        n_epochs_decay: int. Epochs of linear decay.
    """

    def __init__(self, base_lr, n_epochs, n_epochs_decay):
        super().__init__()
        self.base_lr = base_lr
        self.n_epochs = n_epochs
        self.n_epochs_decay = n_epochs_decay

    def rate(self, epoch):
        return self.base_lr * linear_decay_factor(epoch, self.n_epochs, self.n_epochs_decay)

    def on_epoch_begin(self, epoch, logs=None):
        for optimizer in _optimizers(self.model):
            optimizer.learning_rate.assign(self.rate(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(_optimizers(self.model)[0].learning_rate.numpy())


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
        self.save(f"epoch_{epoch + 1:03d}", self._title(f"epoch {epoch + 1}", logs))


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
    figure.savefig(png_path)
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
        replace_atomically(self.directory / name, self.model.save)
        state = json.dumps({"epoch": epoch, "step": step, "file": name})
        replace_atomically(self.directory / self.STATE, lambda path: path.write_text(state))
        if previous is not None and previous[0].name != name and previous[0].exists():
            previous[0].unlink()


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
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
