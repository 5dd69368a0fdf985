import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import export as export_cli
from cyclegan_keras import convert
from cyclegan_keras.convert import ConversionError, UnsafePickleError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "torch_reference_outputs.npz")


@pytest.mark.parametrize("name", ["resnet_tiny", "unet_tiny"])
@pytest.mark.parametrize("suffix", ["", "_legacy"])
def test_converted_generator_equals_pytorch(reference, name, suffix):
    generator = convert.load_torch_generator(FIXTURES / f"{name}{suffix}.pth")
    error = float(np.max(np.abs(np.asarray(generator(reference["input"])) - reference[name])))
    assert error < 1e-4, error


def test_architecture_is_inferred_from_the_keys():
    state = convert.read_state_dict(FIXTURES / "resnet_tiny.pth")
    assert convert.infer_architecture(state) == (
        "resnet",
        dict(n_blocks=2, filters=4, input_channels=3, output_channels=3, dropout=False),
    )
    assert state["model.1.weight"].shape == (4, 3, 7, 7) and state["model.1.weight"].dtype == np.float32
    unet = convert.read_state_dict(FIXTURES / "unet_tiny_legacy.pth")
    assert convert.infer_architecture(unet) == (
        "unet",
        dict(num_downs=5, filters=4, input_channels=3, output_channels=3),
    )


def test_dropout_layout_is_recognised(reference):
    # A generator trained with dropout has the second conv of each block at
    # conv_block.6; at inference it computes the same as without dropout.
    state = convert.read_state_dict(FIXTURES / "resnet_tiny.pth")
    shifted = {k.replace("conv_block.5.", "conv_block.6."): v for k, v in state.items()}
    generator = convert.state_dict_to_generator(shifted)
    assert generator.get_layer("res0_dropout") is not None
    np.testing.assert_allclose(np.asarray(generator(reference["input"])), reference["resnet_tiny"], atol=1e-4)


def test_old_instance_norm_running_stats_are_ignored(reference):
    # Files saved before PyTorch 0.4 carry running stats for InstanceNorm
    # layers; the reference deletes them on load, so do we.
    state = convert.read_state_dict(FIXTURES / "resnet_tiny.pth")
    state["model.2.running_mean"] = np.zeros(4, "float32")
    state["model.2.running_var"] = np.ones(4, "float32")
    generator = convert.state_dict_to_generator(state)
    np.testing.assert_allclose(np.asarray(generator(reference["input"])), reference["resnet_tiny"], atol=1e-4)


def test_other_state_dicts_are_named():
    state = convert.read_state_dict(FIXTURES / "resnet_tiny.pth")
    batch_norm = dict(state, **{"model.2.weight": np.ones(4), "model.2.running_mean": np.zeros(4)})
    with pytest.raises(ConversionError, match="batch-norm generator.*model.2.weight"):
        convert.infer_architecture(batch_norm)
    discriminator = {"model.0.weight": np.zeros((64, 3, 4, 4)), "model.0.bias": np.zeros(64)}
    with pytest.raises(ConversionError, match="discriminator's state dict.*latest_net_G.pth"):
        convert.infer_architecture(discriminator)
    with pytest.raises(ConversionError, match="Not a reference generator.*found 1 keys such as fc.weight"):
        convert.infer_architecture({"fc.weight": np.zeros((2, 2))})
    extra = dict(state, **{"model.99.weight": np.zeros(3)})
    with pytest.raises(ConversionError, match="no place for: model.99.weight"):
        convert.state_dict_to_generator(extra)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_files_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model.1.weight": Exploit(marker)}, protocol=2)
    zipped = tmp_path / "zip.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + payload)
    plain = tmp_path / "plain.pth"
    plain.write_bytes(payload)
    for path in (zipped, legacy, plain):
        with pytest.raises(UnsafePickleError, match="refusing to load (posix|os|nt).system.*Nothing was executed"):
            convert.read_state_dict(path)
    assert not marker.exists()


def test_not_a_pytorch_file(tmp_path):
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ConversionError, match="not a PyTorch file|neither a zip nor a legacy"):
        convert.read_state_dict(tmp_path / "text.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert.read_state_dict(tmp_path / "missing.pth")


def test_export_from_torch_in_one_command(tmp_path, capsys):
    out = tmp_path / "out"
    code = export_cli.main(
        ["--from-torch", str(FIXTURES / "resnet_tiny_legacy.pth"), "--out", str(out), "--sample-size", "32"]
    )
    output = capsys.readouterr().out
    assert code == 0, output
    assert (out / "generator.keras").exists() and (out / "saved_model" / "1" / "saved_model.pb").exists()
    report = json.loads((out / "export_report.json").read_text())
    assert {a["path"] for a in report["artifacts"]} == {"saved_model/1", "generator_float32.tflite"}
    assert all(a["max_abs_error"] < 1e-4 for a in report["artifacts"])


def test_full_size_parity_with_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    import torch_reference

    net = torch_reference.init_weights(torch_reference.ResnetGenerator(3, 3, ngf=64, n_blocks=9), seed=3)
    images = np.random.default_rng(1).uniform(-1, 1, (1, 256, 256, 3)).astype("float32")
    expected = torch_reference.reference_output(net, images)
    for legacy in (False, True):
        path = tmp_path / f"full_{legacy}.pth"
        torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
        generator = convert.load_torch_generator(path)
        assert generator.count_params() == 11_378_179
        error = float(np.max(np.abs(np.asarray(generator(images)) - expected)))
        print(f"full-size resnet_9blocks, {'legacy' if legacy else 'zip'} format: max abs error {error:.2e}")
        assert error < 1e-4
