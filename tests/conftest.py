import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs, so tf.distribute tests run real cross-replica code (one
# replica hides the bugs of gradients summed over replicas). Must happen
# before TensorFlow initializes its devices; tests that use no strategy run
# on the first one as before.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

from cyclegan_keras import CUT, CycleGAN, networks  # noqa: E402

TWO_CPUS = ["/cpu:0", "/cpu:1"]


@pytest.fixture(scope="session")
def mirrored():
    """The one MirroredStrategy over both logical CPUs, shared by every test of the process.

    TensorFlow caches collective instances by key per process, and a second
    MirroredStrategy over the same devices restarts its keys, so its
    all-reduces can meet another's cached shapes ("Shape mismatch in the
    collective instance"): a test that makes its own breaks the ones after it.
    """
    return tf.distribute.MirroredStrategy(TWO_CPUS)


# train.py flags of the fast tier's runs: 4 filters, 32x32 crops, pool 3.
TINY_TRAIN_FLAGS = [
    *("--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4"),
    *("--load-size", "36", "--crop-size", "32", "--pool-size", "3", "--snapshot-count", "2"),
]
# The same for --model cut (which has no pool), 16 PatchNCE locations per layer.
TINY_CUT_FLAGS = ["--model", "cut", *TINY_TRAIN_FLAGS[:10], "--snapshot-count", "2", "--num-patches", "16"]


def tiny_cyclegan(pool_size=50, channels=3, **kwargs):
    """The fast tier's CycleGAN: 8 filters, one residual block."""
    return CycleGAN(
        networks.resnet_generator(n_blocks=1, filters=8, input_channels=channels, output_channels=channels),
        networks.resnet_generator(n_blocks=1, filters=8, input_channels=channels, output_channels=channels),
        networks.patchgan_discriminator(filters=8, input_channels=channels),
        networks.patchgan_discriminator(filters=8, input_channels=channels),
        pool_size=pool_size,
        **kwargs,
    )


def tiny_pix2pix(dropout=False, input_channels=3, output_channels=3, seed=0):
    """The fast tier's pix2pix: a 5-level U-Net and a PatchGAN of 8 filters, batch norm as the reference."""
    from cyclegan_keras.pix2pix import Pix2Pix

    return Pix2Pix(
        networks.unet_generator(5, 8, input_channels, output_channels, norm="batch", dropout=dropout),
        networks.patchgan_discriminator(filters=8, input_channels=input_channels + output_channels, norm="batch"),
        seed=seed,
    )


def tiny_cut(channels=3, **kwargs):
    """The fast tier's CUT: 8 filters, one residual block, anti-aliased as the reference's."""
    return CUT(
        networks.resnet_generator(
            n_blocks=1, filters=8, input_channels=channels, output_channels=channels, antialias=True, antialias_up=True
        ),
        networks.patchgan_discriminator(filters=8, input_channels=channels, antialias=True),
        **kwargs,
    )


def run_cli(main, argv, capsys):
    """A CLI's `main(argv)` as the shell runs it: (exit code, stdout + stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's refusals
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def read_tensorboard(folder):
    """`{tag: [(step, value), ...]}` of a TensorBoard folder as TensorBoard's own loader reads it.

    Scalars are floats; images are the (width, height) of the PNG they hold.
    """
    import io

    from PIL import Image
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    events = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    found = {}
    for tag in events.Tags()[event_accumulator.TENSORS]:
        images = events.SummaryMetadata(tag).plugin_data.plugin_name == "images"
        found[tag] = []
        for event in events.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            found[tag].append((event.step, Image.open(io.BytesIO(value[2])).size if images else float(value)))
    return found


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    """A saved tiny CycleGAN (`model.keras`), shared by the tests that only read it."""
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model = tiny_cyclegan()
    model.compile()
    model.build((None, 32, 32, 3))
    model.save(path)
    return path


@pytest.fixture
def eager_steps(monkeypatch):
    """Every model compiled in the test (train.py's included) runs its steps eagerly.

    For tests of what happens around the step (stops, resume, files,
    evaluation): tracing a new training step costs 20-40 s on 2 cores, and
    the step's graph is what test_model.py, test_distribute.py and
    test_training.py's end-to-end run check.
    """
    run_steps_eagerly(monkeypatch)


@pytest.fixture
def one_residual_block(monkeypatch):
    """train.py's `--generator resnet_6blocks` (TINY_TRAIN_FLAGS) builds one residual block, in this process.

    The fast tier's size (8 filters, 1 block) for the runs of the CLIs, whose
    generator names are the reference's: a step of one block traces and runs
    in about half the time. A run in a subprocess builds all six.
    """
    import functools

    from cyclegan_keras import networks

    monkeypatch.setitem(networks.GENERATORS, "resnet_6blocks", functools.partial(networks.resnet_generator, n_blocks=1))


def run_steps_eagerly(monkeypatch):
    """What `eager_steps` does, for a test that has undone its monkeypatches."""
    from cyclegan_keras.model import GANModel

    compile_ = GANModel.compile

    def compile(self, *args, **kwargs):
        return compile_(self, *args, **{**kwargs, "run_eagerly": True})

    monkeypatch.setattr(GANModel, "compile", compile)


@pytest.fixture(scope="session")
def inception():
    """The FID Inception architecture with random (Keras-initialised) weights, built once."""
    from cyclegan_keras import fid_inception

    return fid_inception.fid_inception_v3()


@pytest.fixture
def no_inception_weights(monkeypatch, tmp_path):
    """No Inception weights anywhere: not in the environment, not in the cache."""
    from cyclegan_keras import fid_inception

    monkeypatch.delenv(fid_inception.WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty_cache"))


@pytest.fixture
def small_inception(inception, monkeypatch, tmp_path, no_inception_weights):
    """`--inception-weights PATH` gives the FID architecture at 75x75 with random weights.

    Only the reading of the weights file is replaced (tested on its own in
    test_fid_inception.py); the CLIs' wiring, the features, FID and KID run
    for real. Returns the path of the stand-in weights file.
    """
    from cyclegan_keras import fid_inception

    def load(path, resize_mode="pytorch-fid"):
        return fid_inception.InceptionFeatures(inception, resize_mode, size=75, weights_path=path)

    monkeypatch.setattr(fid_inception, "load_inception", load)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in weights")
    return weights


@pytest.fixture
def rng():
    return np.random.default_rng(0)
