"""The model learns: on synthetic domains with a known true mapping, training
brings G(a) measurably closer to it."""

import keras
import numpy as np
import tensorflow as tf
from conftest import tiny_cyclegan

from cyclegan_keras.data import synthetic_images, synthetic_mapping


def to_float(images):
    return images.astype("float32") / 127.5 - 1.0


def test_learns_the_true_mapping():
    keras.utils.set_random_seed(1)
    size = 32
    real_a = to_float(synthetic_images("A", 64, size, seed=1))
    real_b = to_float(synthetic_images("B", 64, size, seed=2))
    test_a = to_float(synthetic_images("A", 16, size, seed=3))
    truth_b = synthetic_mapping(test_a, "a2b")

    model = tiny_cyclegan(pool_size=10)
    model.compile()

    def error():
        return float(np.mean(np.abs(model.translate(test_a) - truth_b)))

    initial = error()
    identity = float(np.mean(np.abs(test_a - truth_b)))
    data = tf.data.Dataset.from_tensor_slices((real_a, real_b)).shuffle(64, seed=0).batch(4)
    model.fit(data.repeat(), steps_per_epoch=100, epochs=1, verbose=0)
    trained = error()
    print(f"mean |G(a) - T(a)|: initial {initial:.3f}, identity {identity:.3f}, trained {trained:.3f}")
    assert trained < 0.5 * initial
    assert trained < 0.5 * identity
