import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cyclegan_keras import CycleGAN, networks  # noqa: E402


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


@pytest.fixture
def rng():
    return np.random.default_rng(0)
