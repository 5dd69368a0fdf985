"""Mixed precision: float32 islands, loss scaling, save/load, overflow steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_cut, tiny_cyclegan

from cyclegan_keras import callbacks, distribute


def _batches(rng, count=4):
    images = rng.uniform(-1, 1, (count, 32, 32, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, images[::-1])).batch(2).repeat()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_float32_where_it_matters(precision, rng):
    with distribute.precision_policy(precision):
        model = tiny_cyclegan(pool_size=2)
        model.compile(run_eagerly=True)  # dtypes and loss scaling, not tracing: no graph needed
    assert keras.config.dtype_policy().name == "float32"  # restored after the block
    compute = precision.removeprefix("mixed_")
    conv = model.generator_ab.get_layer("stem_conv")
    assert conv.compute_dtype == compute and conv.kernel.dtype == "float32"
    history = model.fit(_batches(rng), steps_per_epoch=2, epochs=1, verbose=0).history
    assert all(np.isfinite(values[-1]) for values in history.values())
    images = rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    assert model.generator_ab(images).dtype == "float32"
    assert model.discriminator_a(images).dtype == "float32"
    assert model.pool_a.images.dtype == "float32"
    norm = model.generator_ab.get_layer("stem_norm")
    assert norm(tf.cast(tf.ones((1, 4, 4, 8)), compute)).dtype == compute  # statistics in float32 inside
    # Loss scaling for float16 only: bfloat16 has float32's exponent range.
    scaled = isinstance(model.generator_optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")
    assert isinstance(model.discriminator_optimizer, keras.optimizers.LossScaleOptimizer) == scaled


def test_cut_keeps_its_head_and_patch_nce_in_float32(rng):
    with distribute.precision_policy("mixed_float16"):
        scaled = tiny_cut()
        scaled.compile()
    assert isinstance(scaled.generator_optimizer, keras.optimizers.LossScaleOptimizer)
    with distribute.precision_policy("mixed_bfloat16"):  # no loss scale skipping the first steps
        model = tiny_cut()
        model.compile(num_patches=16, flip_equivariance=True, run_eagerly=True)
    assert model.generator_ab.get_layer("down0_blur").compute_dtype == "bfloat16"
    assert all(layer.compute_dtype == "float32" for layer in model.patch_sampler.layers)
    before = [np.array(v) for v in model.patch_sampler.weights]
    history = model.fit(_batches(rng), steps_per_epoch=1, epochs=1, verbose=0).history
    assert all(np.isfinite(values[-1]) for values in history.values())
    assert all(not np.array_equal(np.array(v), b) for v, b in zip(model.patch_sampler.weights, before))
    features = [tf.zeros((2, 4, 4, channels), "bfloat16") for channels in model.patch_sampler.channels]
    ids = [tf.range(3)] * len(features)
    assert all(output.dtype == "float32" for output in model.patch_sampler(features, sample_ids=ids))


def test_mixed_float16_survives_save_and_load(rng, tmp_path):
    with distribute.precision_policy("mixed_float16"):
        model = tiny_cyclegan(pool_size=2)
        model.compile(run_eagerly=True)
    model.fit(_batches(rng), steps_per_epoch=2, epochs=1, verbose=0)
    model.save(tmp_path / "half.keras")
    loaded = keras.models.load_model(tmp_path / "half.keras")
    assert isinstance(loaded.generator_optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(loaded.generator_optimizer.inner_optimizer, keras.optimizers.LossScaleOptimizer)
    assert loaded.generator_ab.get_layer("stem_conv").compute_dtype == "float16"
    np.testing.assert_allclose(
        float(loaded.generator_optimizer.dynamic_scale), float(model.generator_optimizer.dynamic_scale)
    )
    images = rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.translate(images), model.translate(images), atol=1e-6)
    # And it trains on from there.
    loaded.run_eagerly = True
    history = loaded.fit(_batches(rng), steps_per_epoch=1, epochs=1, verbose=0).history
    assert np.isfinite(history["cycle_loss"][-1])


def test_overflow_steps_are_skipped_not_taken_for_nan(rng):
    # A loss scale of 2**100 overflows float16 gradients: the optimizer skips
    # those steps and halves the scale. The logged losses stay finite, so the
    # NaN stop must not fire and the weights must not move.
    with distribute.precision_policy("mixed_float16"):
        model = tiny_cyclegan(pool_size=0)

        def overflowing():
            return keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(2e-4), initial_scale=2.0**100)

        model.compile(generator_optimizer=overflowing(), discriminator_optimizer=overflowing(), run_eagerly=True)
        model.build((None, 32, 32, 3))
    before = [w.copy() for w in model.get_weights()]
    stop = callbacks.StopOnNonFinite()
    model.fit(_batches(rng), steps_per_epoch=3, epochs=1, verbose=0, callbacks=[stop])
    assert stop.error is None and not model.stop_training
    assert float(model.generator_optimizer.dynamic_scale) == 2.0**97
    trainable = {id(v) for v in model.generator_variables + model.discriminator_variables}
    for variable, value in zip(model.weights, before):
        if id(variable) in trainable:
            np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


def test_precision_choices_are_checked():
    with pytest.raises(distribute.DistributeError, match="--precision must be one of"):
        distribute.check_precision("float8")
    assert distribute.check_precision("float32") is None
    if not tf.config.list_physical_devices("GPU"):
        assert "mixed_float16 on a CPU" in distribute.check_precision("mixed_float16")


def test_strategy_choices_are_checked(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributeError, match="--strategy multi_worker needs TF_CONFIG"):
        distribute.resolve("multi_worker")
    with pytest.raises(distribute.DistributeError, match="--strategy must be one of"):
        distribute.resolve("horovod")
    assert distribute.resolve("auto") in ("one_device", "mirrored")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
    assert distribute.resolve("auto") == "multi_worker"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.DistributeError, match="TF_CONFIG is not a JSON object"):
        distribute.resolve("auto")


def test_exports_are_float32_whatever_the_training_precision(rng, tmp_path):
    from cyclegan_keras import export, networks

    with distribute.precision_policy("mixed_bfloat16"):
        generator = networks.resnet_generator(n_blocks=1, filters=8)
    samples = list(rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32"))
    # A SavedModel only: TFLite converts that same float32 graph (tests/test_export.py checks it).
    report = export.export(generator, tmp_path / "out", ("saved_model",), samples=samples)
    (artifact,) = report["artifacts"]
    # Checked against the float32 copy within export's 1e-4: no bfloat16 left inside.
    assert artifact["path"] == "saved_model/1" and artifact["variant"] == "float32"
    assert artifact["max_abs_error"] <= 1e-4
    float32 = networks.with_precision(generator, "float32")
    assert float32.get_layer("stem_conv").compute_dtype == "float32"
    assert networks.with_precision(float32, "float32") is float32

    report = export.export(float32, tmp_path / "bf16", ("saved_model",), samples=samples, precision="bfloat16")
    (artifact,) = report["artifacts"]
    # bfloat16 keeps 8 bits of mantissa: close to float32, but not equal.
    assert artifact["variant"] == "mixed_bfloat16" and 1e-4 < artifact["max_abs_error"] < 0.1
    assert 30 < artifact["psnr_db"] < 100
    loaded = tf.saved_model.load(str(tmp_path / "bf16" / "saved_model" / "1"))
    output = loaded.signatures["serving_default"](tf.constant(samples[0][None]))
    assert all(value.dtype == tf.float32 for value in output.values())
