import io
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cyclegan_keras import convert, fid_inception, pth
from cyclegan_keras.convert import ConversionError, UnsafePickleError

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
sys.path.insert(0, str(TESTS))
import fid_reference  # noqa: E402  (numpy only at import; torch only in its main)


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "fid_inception_random.npz")


@pytest.fixture(scope="module")
def random_state(reference):
    shapes = [tuple(s[:r]) for s, r in zip(reference["shapes"], reference["ranks"])]
    return fid_reference.random_state_dict(list(reference["keys"]), shapes, int(reference["seed"]))


@pytest.fixture(scope="module")
def model(random_state):
    network = fid_inception.fid_inception_v3()
    fid_inception.set_state_dict(network, random_state)
    return network


def test_features_equal_the_pytorch_fid_transcription(reference, model):
    # 45x38 uint8 images: pytorch-fid's ToTensor, bilinear resize to 299,
    # 2x - 1, then the FID blocks (avg pools without padding, max pool in
    # Mixed_7c), against the PyTorch transcription with the same weights.
    features = fid_inception.InceptionFeatures(model, "pytorch-fid")(reference["images"])
    assert features.shape == (2, 2048)
    np.testing.assert_allclose(features, reference["features"], atol=1e-4, rtol=0)
    assert np.abs(reference["features"]).max() > 1.0  # the check is not on near-zero features


def test_clean_mode_equals_clean_fid(reference, model):
    # clean-fid: PIL bicubic on float channels, clip, (x - 128) / 128.
    features = fid_inception.InceptionFeatures(model, "clean")(reference["images"][:1])
    np.testing.assert_allclose(features, reference["clean_features"], atol=1e-4, rtol=0)
    assert np.abs(features - reference["features"][:1]).max() > 1e-2  # the two modes do differ


def test_pytorch_fid_resize_keeps_a_299_image_and_scales_to_minus_one_one():
    images = np.random.default_rng(0).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
    np.testing.assert_allclose(fid_inception.preprocess(images), images / 127.5 - 1.0, atol=1e-6)
    clean = fid_inception.preprocess(images, "clean")
    np.testing.assert_allclose(clean, (images.astype(np.float32) - 128) / 128, atol=1e-5)


def test_every_weight_is_placed_and_the_classifier_ignored(random_state):
    network = fid_inception.fid_inception_v3()
    assert len(fid_inception.basic_conv_names(network)) == 94
    extra = dict(random_state, **{"fc.weight": np.zeros((1008, 2048)), "fc.bias": np.zeros(1008)})
    fid_inception.set_state_dict(network, extra)
    np.testing.assert_array_equal(
        network.get_layer("Mixed_7c.branch_pool.conv").get_weights()[0],
        random_state["Mixed_7c.branch_pool.conv.weight"].transpose(2, 3, 1, 0),
    )
    missing = {k: v for k, v in random_state.items() if not k.startswith("Mixed_6e.branch7x7_2.")}
    with pytest.raises(ConversionError, match="Mixed_6e.branch7x7_2.conv.weight"):
        fid_inception.set_state_dict(network, missing)
    wrong = dict(random_state, **{"Mixed_5b.branch1x1.conv.weight": np.zeros((64, 192, 3, 3), "float32")})
    with pytest.raises(ConversionError, match="Mixed_5b.branch1x1: found shapes"):
        fid_inception.set_state_dict(network, wrong)
    with pytest.raises(ConversionError, match="no place for: AuxLogits.conv0.conv.weight"):
        fid_inception.set_state_dict(network, dict(random_state, **{"AuxLogits.conv0.conv.weight": np.zeros(3)}))


def test_torchscript_archive_is_read_as_data():
    # A real torch.jit.save archive with NVIDIA's module names: classes
    # __torch__.*, int lists for paddings, tensors in data/.
    path = FIXTURES / "fid_torchscript_tiny.pt"
    with pytest.raises(UnsafePickleError, match="__torch__"):
        convert.read_state_dict(path)  # the generator reader stays tensors-and-dicts only
    params = convert.read_state_dict(path, torchscript=True)
    assert sorted(params) == sorted(
        f"layers.{m}.{t}" for m in ("conv", "mixed_10.tower_mixed_conv") for t in ("weight", "beta", "mean", "var")
    )
    np.testing.assert_array_equal(
        params["layers.conv.weight"], np.arange(81, dtype="float32").reshape(3, 3, 3, 3) / 100
    )
    np.testing.assert_allclose(params["layers.mixed_10.tower_mixed_conv.var"], [1.0, 2.0])
    state = fid_inception.torchscript_to_pytorch_fid(params)
    assert state["Mixed_7c.branch3x3_2a.conv.weight"].shape == (2, 3, 1, 3)
    np.testing.assert_array_equal(state["Conv2d_1a_3x3.bn.bias"], params["layers.conv.beta"])
    np.testing.assert_array_equal(state["Conv2d_1a_3x3.bn.running_var"], params["layers.conv.var"])
    np.testing.assert_array_equal(state["Conv2d_1a_3x3.bn.weight"], np.ones(3, "float32"))


def test_torchscript_mode_still_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load (posix|os).system"):
        convert.read_state_dict(path, torchscript=True)


def test_script_objects_cannot_be_called_into_running_anything():
    # A __torch__ class is an inert record: REDUCE with arguments fails, it does not run.
    payload = b"\x80\x02c__torch__.evil\nThing\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03."
    unpickler = pth._RestrictedUnpickler(io.BytesIO(payload), {}, "x.pt", torchscript=True)
    with pytest.raises(TypeError):
        unpickler.load()


def test_a_generator_file_is_not_taken_for_inception_weights():
    with pytest.raises(ConversionError, match="Not FID Inception weights: 'model.1.weight'"):
        fid_inception.read_weights(FIXTURES / "resnet_tiny.pth")


def test_weights_are_found_by_flag_environment_and_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(fid_inception.WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.delenv("CYCLEGAN_KERAS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert fid_inception.find_weights() is None
    cached = tmp_path / "cache" / "cyclegan_keras" / "default_1.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert fid_inception.find_weights() == cached
    monkeypatch.setenv("CYCLEGAN_KERAS_CACHE", str(tmp_path / "elsewhere"))  # the pretrained models' cache
    assert fid_inception.find_weights() is None
    monkeypatch.setenv("CYCLEGAN_KERAS_CACHE", str(cached.parent))
    assert fid_inception.find_weights() == cached
    from_env = tmp_path / "env.pth"
    from_env.write_bytes(b"x")
    monkeypatch.setenv(fid_inception.WEIGHTS_ENV_VAR, str(from_env))
    assert fid_inception.find_weights() == from_env
    assert fid_inception.find_weights(str(cached)) == cached  # the flag wins
    with pytest.raises(fid_inception.WeightsNotFound, match="--inception-weights.*pt_inception-2015-12-05-6726825d"):
        fid_inception.find_weights(str(tmp_path / "nowhere.pth"))
    monkeypatch.setenv(fid_inception.WEIGHTS_ENV_VAR, str(tmp_path / "gone.pth"))
    with pytest.raises(fid_inception.WeightsNotFound, match="CYCLEGAN_INCEPTION_WEIGHTS.*gone.pth.*releases/download"):
        fid_inception.find_weights()


def test_bad_settings_are_refused(model):
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        fid_inception.InceptionFeatures(model, "bicubic")
    with pytest.raises(ValueError, match="size must be at least 75"):
        fid_inception.InceptionFeatures(model, size=64)
    with pytest.raises(ValueError, match=r"\(n, height, width, 3\)"):
        fid_inception.preprocess(np.zeros((2, 8, 8, 1), np.uint8))


@pytest.mark.slow
def test_real_weights_equal_pytorch():
    """The real FID weights (pt_inception .pth or TorchScript .pt) against PyTorch's features.

    Skipped unless a weights file is found (--inception-weights' environment
    variable CYCLEGAN_INCEPTION_WEIGHTS or the cache folder). The expected
    features were computed by `python tests/fid_reference.py --real-weights
    default_1.pt`, TorchScript running its own code.
    """
    path = fid_inception.find_weights()
    if path is None:
        pytest.skip(f"no FID Inception weights: set {fid_inception.WEIGHTS_ENV_VAR}")
    reference = np.load(FIXTURES / "fid_real_features.npz")
    for mode, key in (("pytorch-fid", "features"), ("clean", "clean_features")):
        features = fid_inception.load_inception(path, mode)(reference["images"])
        np.testing.assert_allclose(features, reference[key], atol=1e-4, rtol=0)
