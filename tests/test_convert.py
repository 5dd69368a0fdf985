import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cyclegan_keras import convert, networks, pth
from cyclegan_keras.cli import export as export_cli
from cyclegan_keras.convert import ConversionError, CorruptCheckpointError, UnsafePickleError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = FIXTURES.parent.parent
CORRUPT_LINE = re.compile(r"^cut\.pth is truncated or corrupt: [^\n]+; download it again$")


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
        dict(
            n_blocks=2,
            filters=4,
            input_channels=3,
            output_channels=3,
            dropout=False,
            antialias=False,
            antialias_up=False,
        ),
    )
    assert state["model.1.weight"].shape == (4, 3, 7, 7) and state["model.1.weight"].dtype == np.float32
    unet = convert.read_state_dict(FIXTURES / "unet_tiny_legacy.pth")
    assert convert.infer_architecture(unet) == (
        "unet",
        dict(num_downs=5, filters=4, input_channels=3, output_channels=3, norm="instance", dropout=False),
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


@pytest.mark.slow
def test_full_size_pix2pix_parity_with_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    import torch_reference

    net = torch_reference.UnetGenerator(3, 3, 8, 64, norm_layer=torch.nn.BatchNorm2d, use_dropout=True)
    net = torch_reference.randomize_batch_norms(torch_reference.init_weights(net, seed=6), seed=7)
    images = np.random.default_rng(2).uniform(-1, 1, (1, 256, 256, 3)).astype("float32")
    expected = torch_reference.reference_output(net, images)
    expected_per_image = torch_reference.image_statistics_output(net, images)
    torch.save(net.state_dict(), tmp_path / "unet_256.pth")
    generator = convert.load_torch_generator(tmp_path / "unet_256.pth")
    for name, keras_generator, torch_output in (
        ("running statistics", generator, expected),
        ("each image's statistics", networks.with_image_statistics(generator), expected_per_image),
    ):
        error = float(np.max(np.abs(np.asarray(keras_generator(images)) - torch_output)))
        print(f"full-size unet_256, batch norm, {name}: max abs error {error:.2e}")
        assert error < 1e-5


# -- Truncated and damaged files ------------------------------------------------------


def _outcome(content, uncut):
    """'exact' (equal keys and arrays), 'corrupt' (one-line CorruptCheckpointError) or what else happened."""
    try:
        state = pth.parse_state_dict(content, "cut.pth")
    except CorruptCheckpointError as error:
        assert CORRUPT_LINE.match(str(error)), str(error)
        return "corrupt"
    if list(state) == list(uncut) and all(np.array_equal(state[k], uncut[k]) for k in uncut):
        return "exact"
    return state


def _cut_offsets(size):
    """Every offset in the first 4 KB (legacy headers and pickle) and the last 2 KB, every 7th between."""
    return sorted({*range(min(size, 4096)), *range(max(0, size - 2048), size), *range(4096, size, 7)})


@pytest.mark.parametrize("name", ["resnet_tiny.pth", "resnet_tiny_legacy.pth"])
def test_every_cut_is_refused_as_corrupt(name):
    content = (FIXTURES / name).read_bytes()
    uncut = pth.parse_state_dict(content)
    offsets = _cut_offsets(len(content))
    assert len(offsets) > 9000
    others = {n: _outcome(content[:n], uncut) for n in offsets}
    others = {n: outcome for n, outcome in others.items() if outcome != "corrupt"}
    assert others == {}, list(others)[:5]  # a cut file never loads, not even exactly
    assert _outcome(content, uncut) == "exact"


def test_cut_messages_name_the_tensor_and_the_byte_counts():
    legacy = (FIXTURES / "resnet_tiny_legacy.pth").read_bytes()
    # The case: the last 8 bytes cut used to load, off by up to 1.57.
    with pytest.raises(CorruptCheckpointError) as caught:
        pth.parse_state_dict(legacy[:-8], "cut.pth")
    assert str(caught.value) == (
        "cut.pth is truncated or corrupt: expected 12 bytes for tensor model.19.bias, found 4; download it again"
    )
    # Storage 1 (model.1.bias) starts at byte 6083 with its int64 element count.
    with pytest.raises(CorruptCheckpointError, match="expected 8 \\+ 16 bytes for tensor model.1.bias .*found 3;"):
        pth.parse_state_dict(legacy[: 6083 + 3], "cut.pth")
    with pytest.raises(CorruptCheckpointError, match="state dict pickle cannot be read"):
        pth.parse_state_dict(legacy[:1000], "cut.pth")
    zipped = (FIXTURES / "resnet_tiny.pth").read_bytes()
    with pytest.raises(CorruptCheckpointError, match="the zip directory at its end is missing or damaged"):
        pth.parse_state_dict(zipped[:-1], "cut.pth")
    with pytest.raises(CorruptCheckpointError, match="the file is empty"):
        pth.parse_state_dict(b"", "cut.pth")


def _rezip(content, replace=(), drop=()):
    """The zip fixture rewritten with records changed or left out (valid CRCs: only our checks can object)."""
    source, target = zipfile.ZipFile(io.BytesIO(content)), io.BytesIO()
    with zipfile.ZipFile(target, "w") as archive:
        for info in source.infolist():
            if info.filename not in drop:
                raw = source.read(info)
                archive.writestr(info.filename, dict(replace).get(info.filename, lambda raw: raw)(raw))
    return target.getvalue()


def test_zip_storage_sizes_and_views_are_checked():
    content = (FIXTURES / "resnet_tiny.pth").read_bytes()
    uncut = pth.parse_state_dict(content)
    assert _outcome(_rezip(content), uncut) == "exact"
    short = _rezip(content, {"resnet_tiny/data/1": lambda raw: raw[:12]})
    with pytest.raises(CorruptCheckpointError, match="expected 16 bytes for tensor model.1.bias, found 12"):
        pth.parse_state_dict(short, "cut.pth")
    missing = _rezip(content, drop={"resnet_tiny/data/1"})
    with pytest.raises(CorruptCheckpointError, match="record resnet_tiny/data/1 is missing"):
        pth.parse_state_dict(missing, "cut.pth")
    # The stride 147 -> 148 makes model.1.weight (4, 3, 7, 7) read past its storage.
    stride = _rezip(content, {"resnet_tiny/data.pkl": lambda raw: raw.replace(b"(K\x93K1K", b"(K\x94K1K")})
    with pytest.raises(
        CorruptCheckpointError, match="tensor model.1.weight .* reaches element 590 of a storage of 588"
    ):
        pth.parse_state_dict(stride, "cut.pth")


LEGACY_DATA_START = 3723  # the legacy fixture's first storage, after its pickles


def _changed_values(state, reference):
    return sum(
        int(np.any(a.view(np.uint8).reshape(a.size, -1) != b.view(np.uint8).reshape(b.size, -1), axis=1).sum())
        for a, b in ((state[k], reference[k]) for k in reference)
    )


def test_random_byte_flips_give_the_exact_weights_or_one_clear_error():
    rng = np.random.default_rng(12)
    # The zip format has a CRC-32 per record: every flip is found or harmless.
    content = (FIXTURES / "resnet_tiny.pth").read_bytes()
    uncut = pth.parse_state_dict(content)
    outcomes = []
    for offset in rng.integers(0, len(content), 300):
        flipped = bytearray(content)
        flipped[offset] ^= 1 << int(rng.integers(8))
        outcomes.append(_outcome(bytes(flipped), uncut))
    assert set(outcomes) == {"exact", "corrupt"}, [o for o in outcomes if isinstance(o, dict)][:1]
    # The legacy format has no checksum: a flip in a tensor's bytes changes that one
    # value and no reader can tell. Any other flip is found here or by the conversion.
    content = (FIXTURES / "resnet_tiny_legacy.pth").read_bytes()
    uncut = pth.parse_state_dict(content)
    seen = set()
    for offset in rng.integers(0, len(content), 300):
        flipped = bytearray(content)
        flipped[offset] ^= 1 << int(rng.integers(8))
        try:
            outcome = _outcome(bytes(flipped), uncut)
        except UnsafePickleError as error:  # a flipped class name: refused, and said it may be corrupt
            assert "or be corrupt" in str(error)
            outcome = "refused"
        if isinstance(outcome, dict):
            if list(outcome) == list(uncut) and all(outcome[k].shape == uncut[k].shape for k in uncut):
                assert _changed_values(outcome, uncut) == 1 and offset >= LEGACY_DATA_START, offset
                outcome = "one value"
            else:  # a changed key or shape
                with pytest.raises(ConversionError):
                    convert.state_dict_to_generator(outcome)
                outcome = "conversion error"
        seen.add(outcome)
    assert {"one value", "corrupt"} <= seen


def test_export_from_a_cut_file_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    cases = {
        "resnet_tiny_legacy.pth": (8, "expected 12 bytes for tensor model.19.bias, found 4"),
        "resnet_tiny.pth": (100, "the zip directory at its end is missing or damaged (File is not a zip file)"),
    }
    for name, (cut, detail) in cases.items():
        path = tmp_path / name
        path.write_bytes((FIXTURES / name).read_bytes()[:-cut])
        out = tmp_path / "out" / "nested"
        with pytest.raises(SystemExit) as exit_:
            export_cli.main(["--from-torch", str(path), "--out", str(out), "--sample-size", "32"])
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert exit_.value.code == 2
        assert len(errors) == 1 and errors[0].endswith(
            f"error: argument --from-torch: {path} is truncated or corrupt: {detail}; download it again"
        )
        assert not (tmp_path / "out").exists()


def test_export_from_a_cut_file_in_a_fresh_process(tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes((FIXTURES / "resnet_tiny_legacy.pth").read_bytes()[:-8])
    run = subprocess.run(
        [sys.executable, "export.py", "--from-torch", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert _own_lines(run.stderr)[-1] == (
        f"error: argument --from-torch: {path} is truncated or corrupt: expected 12 bytes for tensor "
        "model.19.bias, found 4; download it again"
    )
    assert not (tmp_path / "out").exists()


def _own_lines(stderr):
    """stderr without TensorFlow's C++ start-up log lines (I0000 ..., 'WARNING: All log messages ...')."""
    tf_log = re.compile(r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|To enable the following)")
    return [line for line in stderr.splitlines() if line.strip() and not tf_log.match(line)]


# -- pix2pix: the authors' batch-norm U-Nets -------------------------------------------


@pytest.fixture(scope="module")
def batchnorm_reference():
    return np.load(FIXTURES / "torch_reference_batchnorm.npz")


@pytest.mark.parametrize("suffix", ["", "_legacy"])
def test_batch_norm_unet_equals_pytorch_in_eval_mode(batchnorm_reference, suffix):
    # The running statistics (PyTorch's eval(), the reference's test.py --eval) are the moving ones.
    state = convert.read_state_dict(FIXTURES / f"unet_batchnorm_tiny{suffix}.pth")
    assert "model.model.1.model.2.num_batches_tracked" in state
    generator = convert.state_dict_to_generator(state)
    assert convert.infer_architecture(state)[1] == dict(
        num_downs=6, filters=4, input_channels=3, output_channels=3, norm="batch", dropout=True
    )
    assert not generator.get_layer("down0_conv").use_bias and generator.get_layer("up0_conv").use_bias
    trainable = sum(v.numpy().size for v in generator.trainable_weights)
    assert trainable == sum(v.size for k, v in state.items() if not re.search(r"running|num_batches", k))
    error = float(
        np.max(np.abs(np.asarray(generator(batchnorm_reference["input"])) - batchnorm_reference["running_statistics"]))
    )
    print(f"batch-norm U-Net, eval mode ({suffix or 'zip'}): max abs error {error:.2e}")
    assert error < 1e-5


def test_image_statistics_equal_pytorch_in_train_mode(batchnorm_reference):
    # The reference's default test.py (no --eval) at batch size 1: each image's own statistics.
    generator = convert.load_torch_generator(FIXTURES / "unet_batchnorm_tiny.pth")
    per_image = networks.with_image_statistics(generator)
    images = batchnorm_reference["input"]
    error = float(np.max(np.abs(np.asarray(per_image(images)) - batchnorm_reference["image_statistics"])))
    print(f"batch-norm U-Net, each image's statistics: max abs error {error:.2e}")
    assert error < 1e-5
    # The two modes differ (the test can fail), and the copy left the original as it was.
    assert np.max(np.abs(batchnorm_reference["image_statistics"] - batchnorm_reference["running_statistics"])) > 0.05
    np.testing.assert_allclose(np.asarray(generator(images)), batchnorm_reference["running_statistics"], atol=1e-5)
    with pytest.raises(ValueError, match="has no batch norm"):
        networks.with_image_statistics(convert.load_torch_generator(FIXTURES / "unet_tiny.pth"))
