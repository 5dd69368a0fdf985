import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_cyclegan

from cyclegan_keras import CycleGAN, networks
from cyclegan_keras.losses import gan_loss

LOSSES = ["cycle_loss", "disc_a_loss", "disc_b_loss", "gen_ab_loss", "gen_ba_loss", "identity_loss"]


def unpaired_batches(rng, n=4, size=32, channels=3, batch_size=2):
    a = rng.uniform(-1, 1, (n, size, size, channels)).astype("float32")
    b = rng.uniform(-1, 1, (n, size, size, channels)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((a, b)).batch(batch_size), a, b


def weights_of(model):
    return [np.array(v) for v in model.weights]


def test_one_fit_step_updates_all_four_networks(rng):
    model = tiny_cyclegan()
    model.compile(run_eagerly=True)
    data, _, _ = unpaired_batches(rng, n=2)
    networks_ = [model.generator_ab, model.generator_ba, model.discriminator_a, model.discriminator_b]
    before = [weights_of(net) for net in networks_]
    history = model.fit(data, epochs=1, verbose=0)
    for net, old in zip(networks_, before):
        changed = [not np.array_equal(w, o) for w, o in zip(weights_of(net), old)]
        assert all(changed), f"{net.name}: {changed.count(False)} weights unchanged"
    assert sorted(history.history) == LOSSES
    assert int(model.generator_optimizer.iterations) == 1
    assert int(model.discriminator_optimizer.iterations) == 1


def test_losses_follow_the_objective(rng):
    model = tiny_cyclegan()
    model.compile(lambda_a=10.0, lambda_b=5.0, lambda_identity=0.5, run_eagerly=True)
    _, a, b = unpaired_batches(rng, n=2)
    results = model.evaluate(a, b, batch_size=2, verbose=0, return_dict=True)
    g, f = model.generator_ab, model.generator_ba
    d_a, d_b = model.discriminator_a, model.discriminator_b
    l1 = lambda x, y: np.mean(np.abs(np.asarray(x) - np.asarray(y)))  # noqa: E731
    mse = lambda x, t: np.mean((np.asarray(x) - t) ** 2)  # noqa: E731
    fake_b, fake_a = g(a), f(b)
    expected = {
        "cycle_loss": 10.0 * l1(f(fake_b), a) + 5.0 * l1(g(fake_a), b),
        "identity_loss": 0.5 * (5.0 * l1(g(b), b) + 10.0 * l1(f(a), a)),
        "gen_ab_loss": mse(d_b(fake_b), 1.0),
        "gen_ba_loss": mse(d_a(fake_a), 1.0),
        "disc_a_loss": 0.5 * (mse(d_a(a), 1.0) + mse(d_a(fake_a), 0.0)),
        "disc_b_loss": 0.5 * (mse(d_b(b), 1.0) + mse(d_b(fake_b), 0.0)),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(results[name], value, rtol=1e-4, err_msg=name)


def test_gan_loss_modes():
    logits = np.array([[-1.0, 0.0, 2.0]], "float32")
    np.testing.assert_allclose(gan_loss(logits, True, "lsgan"), np.mean((logits - 1) ** 2), rtol=1e-6)
    np.testing.assert_allclose(gan_loss(logits, False, "lsgan"), np.mean(logits**2), rtol=1e-6)
    bce_real = np.mean(np.log1p(np.exp(-logits)))
    np.testing.assert_allclose(gan_loss(logits, True, "vanilla"), bce_real, rtol=1e-5)
    np.testing.assert_allclose(gan_loss(logits, True, "wgangp"), -np.mean(logits), rtol=1e-6)
    np.testing.assert_allclose(gan_loss(logits, False, "wgangp"), np.mean(logits), rtol=1e-6)


@pytest.mark.parametrize(
    "settings, zero_losses",
    [
        (dict(lambda_gan=0.0), []),  # cycle alone
        (dict(lambda_a=0.0, lambda_b=0.0, lambda_identity=0.0), ["cycle_loss", "identity_loss"]),  # GAN alone
        (dict(lambda_b=0.0, lambda_identity=0.0), ["identity_loss"]),  # GAN + forward cycle
        (dict(lambda_a=0.0, lambda_identity=0.0), ["identity_loss"]),  # GAN + backward cycle
        (dict(lambda_a=0.0, lambda_b=0.0, lambda_identity=0.0, lambda_pixel=10.0), ["cycle_loss", "identity_loss"]),
        (dict(gan_mode="vanilla"), []),
        (dict(gan_mode="wgangp"), []),
        pytest.param(dict(jit_compile=True), [], marks=pytest.mark.slow),  # 30 s of XLA compile
    ],
)
def test_configurations_train(rng, settings, zero_losses):
    model = tiny_cyclegan(pool_size=2)
    model.compile(**settings, run_eagerly=True)
    data, _, _ = unpaired_batches(rng)
    history = model.fit(data, epochs=1, verbose=0).history
    for name, values in history.items():
        assert np.isfinite(values[-1]), name
        assert (values[-1] == 0.0) == (name in zero_losses), name
    if "lambda_pixel" in settings:
        assert history["pixel_loss"][-1] > 0


def test_cycle_alone_ignores_the_discriminators(rng):
    # With lambda_gan=0 the generators' update must not depend on D.
    data, _, _ = unpaired_batches(rng, n=2)
    updated = []
    for seed in (0, 1):
        keras.utils.set_random_seed(0)
        g_ab = networks.resnet_generator(n_blocks=1, filters=8)
        g_ba = networks.resnet_generator(n_blocks=1, filters=8)
        keras.utils.set_random_seed(seed)
        d_a, d_b = (networks.patchgan_discriminator(filters=8) for _ in range(2))
        model = CycleGAN(g_ab, g_ba, d_a, d_b)
        model.compile(lambda_gan=0.0, run_eagerly=True)
        model.fit(data, epochs=1, verbose=0)
        updated.append(weights_of(g_ab))
    for first, second in zip(*updated):
        np.testing.assert_allclose(first, second, atol=1e-6)


def test_feature_loss_baseline(rng):
    extractor = networks.vgg16_features(weights=None, layer="block1_conv2")
    model = tiny_cyclegan(pool_size=2, feature_extractor=extractor)
    model.compile(lambda_a=0.0, lambda_b=0.0, lambda_identity=0.0, lambda_feature=1.0, run_eagerly=True)
    data, _, _ = unpaired_batches(rng, n=2)
    history = model.fit(data, epochs=1, verbose=0).history
    assert history["feature_loss"][-1] > 0
    assert not any("vgg" in v.path for v in model.generator_variables)


def test_validation_data_does_not_touch_pools(rng):
    model = tiny_cyclegan(pool_size=4)
    model.compile(run_eagerly=True)
    data, a, b = unpaired_batches(rng)
    model.fit(data, epochs=1, verbose=0)
    pool_state = np.array(model.pool_a.images), int(model.pool_a.draws.numpy())
    history = model.evaluate(data, verbose=0, return_dict=True)
    assert set(history) == set(LOSSES)
    np.testing.assert_array_equal(model.pool_a.images, pool_state[0])
    assert int(model.pool_a.draws.numpy()) == pool_state[1]
    history = model.fit(data, validation_data=data, epochs=1, verbose=0).history
    assert "val_cycle_loss" in history


def test_invalid_settings_are_named():
    model = tiny_cyclegan()
    with pytest.raises(ValueError, match="gan_mode"):
        model.compile(gan_mode="hinge")
    with pytest.raises(ValueError, match="lambda_a"):
        model.compile(lambda_a=-1.0)
    with pytest.raises(ValueError, match="feature_extractor"):
        model.compile(lambda_feature=1.0)
    gray_to_rgb = CycleGAN(
        networks.resnet_generator(n_blocks=1, filters=8, input_channels=1, output_channels=3),
        networks.resnet_generator(n_blocks=1, filters=8, input_channels=3, output_channels=1),
        networks.patchgan_discriminator(filters=8, input_channels=1),
        networks.patchgan_discriminator(filters=8, input_channels=3),
    )
    with pytest.raises(ValueError, match="lambda_identity=0"):
        gray_to_rgb.compile()
    gray_to_rgb.compile(lambda_identity=0.0)
    with pytest.raises(ValueError, match=r"\(real_a, real_b\)"):
        gray_to_rgb.train_step(np.zeros((1, 8, 8, 1), "float32"))


def test_grayscale_to_rgb_trains(rng):
    model = CycleGAN(
        networks.resnet_generator(n_blocks=1, filters=8, input_channels=1, output_channels=3),
        networks.resnet_generator(n_blocks=1, filters=8, input_channels=3, output_channels=1),
        networks.patchgan_discriminator(filters=8, input_channels=1),
        networks.patchgan_discriminator(filters=8, input_channels=3),
        pool_size=2,
    )
    model.compile(lambda_identity=0.0, run_eagerly=True)
    a = rng.uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    b = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    history = model.fit(a, b, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(history["cycle_loss"][-1])
    assert model.translate(a, "a2b").shape == (2, 32, 32, 3)
    assert model.translate(b, "b2a").shape == (2, 32, 32, 1)


@pytest.fixture(scope="module")
def untrained():
    return tiny_cyclegan()


@pytest.mark.parametrize("size", [(32, 32), (30, 27), (5, 7), (1, 1), (33, 64)])
def test_translate_any_size(rng, size, untrained):
    model = untrained
    images = rng.uniform(-1, 1, (3, *size, 3)).astype("float32")
    outputs = model.translate(images, "b2a", batch_size=2)
    assert outputs.shape == images.shape and outputs.dtype == np.float32
    assert model.translate(images[0]).shape == images[0].shape
    if size == (32, 32):  # no padding needed: exactly the generator's output
        np.testing.assert_allclose(outputs, model.generator_ba(images), atol=1e-5)


def test_too_small_training_images_are_named(rng):
    model = tiny_cyclegan()
    model.compile()
    with pytest.raises(ValueError, match="multiples of 4"):
        model.build((None, 30, 32, 3))
    with pytest.raises(ValueError, match="16x16 are too small for discriminator"):
        model.build((None, 16, 16, 3))


def test_translate_errors_name_the_problem(untrained):
    model = untrained
    with pytest.raises(ValueError, match="direction"):
        model.translate(np.zeros((1, 8, 8, 3)), "a2c")
    with pytest.raises(
        ValueError, match=r"expects images of shape \(n, height, width, 3\).*images.shape=\(1, 8, 8, 4\)"
    ):
        model.translate(np.zeros((1, 8, 8, 4)))


def test_save_load_round_trip_and_resume(rng, tmp_path):
    model = tiny_cyclegan(pool_size=3)
    model.compile(lambda_a=7.0, run_eagerly=True)
    data, a, b = unpaired_batches(rng)
    model.fit(data, epochs=2, verbose=0)
    path = tmp_path / "cyclegan.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert type(loaded) is CycleGAN
    assert loaded.loss_weights["lambda_a"] == 7.0 and loaded.gan_mode == "lsgan"
    for direction in ("a2b", "b2a"):
        np.testing.assert_array_equal(loaded.translate(a, direction), model.translate(a, direction))
    for optimizer in ("generator_optimizer", "discriminator_optimizer"):
        original, restored = getattr(model, optimizer), getattr(loaded, optimizer)
        assert int(restored.iterations) == 4
        for v1, v2 in zip(original.variables, restored.variables):
            np.testing.assert_array_equal(v1, v2, err_msg=v1.path)
    for pool in ("pool_a", "pool_b"):
        for v1, v2 in zip(getattr(model, pool).weights, getattr(loaded, pool).weights):
            np.testing.assert_array_equal(v1, v2)

    # Training continues from the restored state exactly as the original.
    loaded.run_eagerly = True
    model.fit(data, epochs=1, verbose=0)
    loaded.fit(data, epochs=1, verbose=0)
    assert int(loaded.generator_optimizer.iterations) == 6
    for v1, v2 in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(v1, v2, atol=1e-5, err_msg=v1.path)


@pytest.mark.slow
def test_full_size_training_step(rng):
    model = CycleGAN(
        networks.build_generator("resnet_9blocks"),
        networks.build_generator("resnet_9blocks"),
        networks.build_discriminator("basic"),
        networks.build_discriminator("basic"),
    )
    model.compile()
    a = rng.uniform(-1, 1, (1, 256, 256, 3)).astype("float32")
    history = model.fit(a, a, batch_size=1, epochs=1, verbose=0).history
    assert all(np.isfinite(values[-1]) for values in history.values())
    assert model.pool_a.images.shape == (50, 256, 256, 3)


# One replica; the fast tier trains, saves and loads on two (test_distribute.py).
@pytest.mark.slow
def test_fit_under_tf_distribute(rng, tmp_path):
    # The optimizers are built in compile() and the pools are per-replica
    # (on-read) variables, so the model trains inside a strategy's scope.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = tiny_cyclegan(pool_size=2)
        model.compile()
    data, _, _ = unpaired_batches(rng)
    history = model.fit(data, epochs=2, verbose=0).history
    assert np.isfinite(history["cycle_loss"][-1])
    assert model.generator_optimizer.iterations.numpy() == 4
    assert model.pool_a.draws.numpy() == 8 and model.pool_a.count.numpy() == 2
    model.save(tmp_path / "distributed.keras")
    assert keras.models.load_model(tmp_path / "distributed.keras").pool_a.draws.numpy() == 8


@pytest.mark.parametrize(
    "argument",
    [
        dict(optimizer="adam"),
        dict(loss="mse"),
        dict(metrics=["mae"]),
        dict(loss_weights=[1.0]),
        dict(optimizer=keras.optimizers.SGD(), jit_compile=False),
    ],
)
def test_compile_refuses_what_it_would_ignore(argument):
    model = tiny_cyclegan()
    name = next(key for key in argument if key != "jit_compile")
    with pytest.raises(
        ValueError, match=rf"does not take {name}.*generator_optimizer.*discriminator_optimizer"
    ) as error:
        model.compile(**argument)
    assert "lambda_a" in str(error.value) and f"Received: {name}=" in str(error.value)
    assert not model.compiled


def test_model_optimizer_is_both_optimizers_and_no_stray_one_is_saved(rng, tmp_path):
    model = tiny_cyclegan(pool_size=2)
    model.compile(run_eagerly=True)
    assert model.optimizer.optimizers == [model.generator_optimizer, model.discriminator_optimizer]
    assert not any(isinstance(o, keras.optimizers.RMSprop) for o in model._flatten_layers())
    data, _, _ = unpaired_batches(rng, n=2)
    model.fit(data, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 1
    with pytest.raises(AttributeError, match="generator_optimizer.learning_rate"):
        model.optimizer.learning_rate
    with pytest.raises(AttributeError, match="two optimizers"):
        model.optimizer.learning_rate = 1e-3
    path = tmp_path / "cyclegan.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as file, h5py.File(file) as weights:
        saved = set(weights)
    assert {"generator_optimizer", "discriminator_optimizer"} <= saved and "optimizer" not in saved
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.optimizers == [loaded.generator_optimizer, loaded.discriminator_optimizer]


def test_stock_learning_rate_scheduler_sets_both_optimizers(rng):
    model = tiny_cyclegan(pool_size=2)
    model.compile(run_eagerly=True)
    data, _, _ = unpaired_batches(rng, n=2)
    networks_ = [model.generator_ab, model.generator_ba, model.discriminator_a, model.discriminator_b]
    before = [weights_of(net) for net in networks_]
    # A rate of 0 for both optimizers: two steps run and no network changes.
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.0)
    history = model.fit(data, epochs=2, verbose=0, callbacks=[scheduler]).history
    assert int(model.generator_optimizer.iterations) == 2
    for net, old in zip(networks_, before):
        for new, previous in zip(weights_of(net), old):
            np.testing.assert_array_equal(new, previous, err_msg=net.name)
    assert history["learning_rate_generator_adam"] == [0.0, 0.0]
    assert history["learning_rate_discriminator_adam"] == [0.0, 0.0]


def test_stock_reduce_lr_on_plateau_reduces_both_optimizers(rng):
    model = tiny_cyclegan(pool_size=2)
    model.compile(run_eagerly=True)
    data, _, _ = unpaired_batches(rng, n=2)
    # min_delta so large that the second epoch is never an improvement.
    reduce = keras.callbacks.ReduceLROnPlateau(monitor="cycle_loss", mode="min", min_delta=1e9, patience=1, factor=0.5)
    history = model.fit(data, epochs=2, verbose=0, callbacks=[reduce]).history
    for optimizer in (model.generator_optimizer, model.discriminator_optimizer):
        assert float(optimizer.learning_rate) == pytest.approx(1e-4)
    assert history["learning_rate_generator_adam"] == pytest.approx([2e-4, 2e-4])  # logged before reducing
