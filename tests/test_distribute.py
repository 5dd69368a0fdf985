"""CycleGAN under tf.distribute with two replicas (two logical CPUs, see conftest)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_cut, tiny_cyclegan


def _batches(rng, steps, global_batch):
    a = rng.uniform(-1, 1, (steps * global_batch, 32, 32, 3)).astype("float32")
    b = rng.uniform(-1, 1, (steps * global_batch, 32, 32, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((a, b)).batch(global_batch, drop_remainder=True)


def _trained(strategy, weights, data, steps, pool_size=0, **compile_kwargs):
    with strategy.scope():
        model = tiny_cyclegan(pool_size=pool_size)
        model.compile(**compile_kwargs)
        model.build((None, 32, 32, 3))
    model.set_weights(weights)
    history = model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False).history
    return model, history


def test_two_replicas_take_the_step_of_one_device_with_the_global_batch(rng, mirrored):
    # Each replica's mean loss is scaled by 1/replicas, since the optimizer
    # sums the replicas' gradients. SGD, whose step is proportional to the
    # gradient, shows a factor 2 that Adam's normalized step would hide.
    # Two steps from fixed weights: over more steps a tiny network's GAN
    # dynamics amplify float rounding (1e-7 after one step) past 1e-5.
    keras.utils.set_random_seed(0)
    reference = tiny_cyclegan(pool_size=0)
    reference.build((None, 32, 32, 3))
    weights = reference.get_weights()
    data = _batches(rng, steps=2, global_batch=2)
    sgd = dict(generator_optimizer=keras.optimizers.SGD(0.01), discriminator_optimizer=keras.optimizers.SGD(0.01))
    one, one_history = _trained(tf.distribute.OneDeviceStrategy("/cpu:0"), weights, data, 2, **sgd)
    sgd = {key: keras.optimizers.SGD(0.01) for key in sgd}
    two, two_history = _trained(mirrored, weights, data, 2, **sgd)
    assert two.distribute_strategy.num_replicas_in_sync == 2
    moved = max(np.abs(w1 - w0).max() for w1, w0 in zip(one.get_weights(), weights))
    assert moved > 1e-2  # the comparison below compares trained weights
    for w1, w2, variable in zip(one.get_weights(), two.get_weights(), one.weights):
        np.testing.assert_allclose(w2, w1, atol=1e-5, err_msg=variable.path)
    # The logged losses are means over the global batch on both.
    for name in one_history:
        np.testing.assert_allclose(two_history[name], one_history[name], rtol=1e-4, err_msg=name)


# Tracing CUT's step on two replicas and one device: 43 s on 2 cores. (Eagerly, MirroredStrategy's
# replica threads would share the draws' state and draw apart; the traced step is what fit() runs.)
@pytest.mark.slow
def test_cut_on_two_replicas_takes_the_step_of_one_device(rng, mirrored):
    # As above, for CUT with every random draw on (the flip, each layer's locations, the identity
    # term's): drawn once per step, the same on every replica, as one device draws them for its batch.
    keras.utils.set_random_seed(0)
    weights = tiny_cut().get_weights()
    data = _batches(rng, steps=2, global_batch=2)
    models = []
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), mirrored):
        with strategy.scope():
            model = tiny_cut()
            sgd = dict(
                generator_optimizer=keras.optimizers.SGD(0.01), discriminator_optimizer=keras.optimizers.SGD(0.01)
            )
            model.compile(**sgd, lambda_nce=10.0, flip_equivariance=True, num_patches=16)
        model.set_weights(weights)
        model.fit(data, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
        models.append(model)
    one, two = models
    assert two.distribute_strategy.num_replicas_in_sync == 2
    trained = zip(one.get_weights(), weights, one.weights)
    assert max(np.abs(w1 - w0).max() for w1, w0, variable in trained if variable.trainable) > 1e-2
    for w1, w2, variable in zip(one.get_weights(), two.get_weights(), one.weights):
        np.testing.assert_allclose(w2, w1, atol=1e-5, err_msg=variable.path)


def test_each_replica_keeps_its_own_pool_and_the_model_saves_and_loads(rng, tmp_path, mirrored):
    strategy = mirrored
    reference = tiny_cyclegan(pool_size=2)
    reference.build((None, 32, 32, 3))
    model, _ = _trained(strategy, reference.get_weights(), _batches(rng, 4, 2), 4, pool_size=2)
    for pool in (model.pool_a, model.pool_b):
        first, second = (np.asarray(v) for v in pool.images.value.values)
        assert pool.count.value.values[0].numpy() == pool.count.value.values[1].numpy() == 2
        assert np.abs(first - second).max() > 0.01, pool.name
        assert np.abs(first).max() > 0  # filled, not the initial zeros

    model.save(tmp_path / "distributed.keras")
    loaded = keras.models.load_model(tmp_path / "distributed.keras")
    images = rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.translate(images), model.translate(images), atol=1e-6)
    assert int(loaded.generator_optimizer.iterations) == 4


def test_replicas_draw_different_pool_numbers(mirrored):
    # Identical images on both replicas: only the random draws can make the
    # pools' outputs differ.
    strategy = mirrored
    from cyclegan_keras import ImagePool

    with strategy.scope():
        pool = ImagePool(pool_size=1, seed=3)
        pool.build((None, 1, 1, 1))
    outputs = []

    @tf.function
    def query(images):
        return strategy.run(pool, args=(images,))

    for step in range(16):
        images = tf.fill((1, 1, 1, 1), float(step))
        outputs.append([float(v.numpy().ravel()[0]) for v in query(images).values])
    assert any(first != second for first, second in outputs)


def test_sharded_pipelines_make_the_global_batches_of_one_pipeline():
    # Two workers' pipelines (shard 0 and 1, batch 1 each) see, step by step,
    # exactly the pairs of the one-pipeline global batch of 2: no pair twice.
    from cyclegan_keras import data

    pre = data.Preprocessing(load_size=36, crop_size=32, channels=3)
    domain_a, domain_b = data.synthetic_domains(8, 36, "train", pre, seed=0)

    def batches(batch_size, steps, shard=None):
        stream = data.unpaired_dataset(
            domain_a, domain_b, pre, batch_size=batch_size, steps_per_epoch=steps, shard=shard, epochs=2
        )
        return [(a.numpy(), b.numpy()) for a, b in stream]

    whole = batches(2, 4)
    shards = [batches(1, 4, shard=(2, index)) for index in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 8
    for step, (a, b) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([shards[0][step][0], shards[1][step][0]]), a)
        np.testing.assert_array_equal(np.concatenate([shards[0][step][1], shards[1][step][1]]), b)


# train() end to end under two replicas; the fast tier keeps the step, pool and save checks above.
@pytest.mark.slow
def test_train_under_mirrored_strategy(tmp_path, mirrored):
    from cyclegan_keras import training

    config = training.make_config(
        ngf=8, ndf=8, generator="resnet_6blocks", load_size=36, crop_size=32, synthetic_count=8,
        n_epochs=1, n_epochs_decay=1, snapshot_count=1, pool_size=2, checkpoint_every=2,
    )  # fmt: skip
    strategy = mirrored
    model = training.train(config, tmp_path, verbose=0, strategy=strategy)
    assert model.distribute_strategy is strategy
    assert model.generator_optimizer.iterations.numpy() == 2 * 4  # 8 pairs / global batch 2, two epochs
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and "lr" in rows[0]
    for name in ("model.keras", "loss_curve.png", "snapshots/epoch_002.png"):
        assert (tmp_path / name).exists(), name
    assert not (tmp_path / "checkpoints").exists()  # model.keras holds the same
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert int(loaded.generator_optimizer.iterations) == 8
