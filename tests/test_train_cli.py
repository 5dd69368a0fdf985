"""Every flag of train.py refuses bad values with one line naming it, exit 2, before any work.

As tests/test_cli.py does for translate.py and export.py, the table is built
from the parser: each flag's type or choices says which bad values to try,
and a flag without a check fails `test_every_flag_has_a_check` (the parser
itself refuses to build a flag for a `TrainConfig` field without a check).
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from cyclegan_keras import config as config_module
from cyclegan_keras.cli import args as cli_args
from cyclegan_keras.cli import train

ROOT = Path(__file__).resolve().parent.parent
PATH_CASES = {
    cli_args.dataroot: ["@missing", "@text_file", "@empty_dir"],
    cli_args.inception_weights_file: ["@missing", "@empty_dir"],
    cli_args.image_folder: ["@missing", "@text_file", "@empty_dir", "@no_images_dir"],
    cli_args.output_folder: ["@text_file", "@under_a_file"],
}


def bad_values(action):
    """The bad values to try for one argparse action, from its type or choices."""
    if action.choices:
        if action.type is int:
            gaps = [v for v in range(min(action.choices) - 1, max(action.choices) + 2) if v not in action.choices]
            return [str(v) for v in gaps] + ["x"]
        return ["foo", str(action.choices[0]).upper() + "X", ""]
    if isinstance(action.type, cli_args.Range) and action.type.integer:
        values = [str(action.type.minimum - 1), "1.5", "x", ""]
        return values + ([str(action.type.maximum + 1)] if action.type.maximum is not None else [])
    if isinstance(action.type, cli_args.Range):
        t = action.type
        values = ["nan", "inf", "-inf", "x"]
        values += [str(t.minimum - 1e-3)] if t.minimum is not None else []
        values += [str(t.above), str(t.above - 1)] if t.above is not None else []
        values += [str(t.maximum + 1e-3)] if t.maximum is not None else []
        values += [str(t.below), str(t.below + 1)] if t.below is not None else []
        return values
    if action.type is cli_args.direction:
        return ["foo", "CtoD", "AtoA", ""]
    if action.type is cli_args.layer_indices:
        return ["x", "4,0", "0,0", "-1", "0,,4", ""]
    if action.type in PATH_CASES:
        return PATH_CASES[action.type]
    if action.nargs == 0:  # --help and switches: no value to get wrong
        return []
    raise LookupError(f"{action.option_strings[0]} has no checking type or choices")


def flag_cases():
    for action in train.parser()._actions:
        try:
            values = bad_values(action)
        except LookupError:
            values = ["<unchecked>"]
        for value in values:
            yield pytest.param(action.option_strings[0], value, id=f"{action.dest}={value}")


def test_every_flag_has_a_check():
    for action in train.parser()._actions:
        bad_values(action)
    unchecked = train.parser()
    unchecked.add_argument("--new-flag")
    with pytest.raises(LookupError, match="--new-flag has no checking type"):
        [bad_values(action) for action in unchecked._actions]


def test_a_setting_without_help_or_check_cannot_become_a_flag():
    with_help = dataclasses.make_dataclass("C", [("x", int, config_module.setting(1, "some help"))])
    with pytest.raises(TypeError, match="C.x has no check|TrainConfig.x has no check"):
        train.argument(dataclasses.fields(with_help)[0])
    bare = dataclasses.make_dataclass("C", [("y", int, dataclasses.field(default=1))])
    with pytest.raises(TypeError, match="has no help"):
        train.argument(dataclasses.fields(bare)[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    (root / "text_file").write_text("hello")
    (root / "empty_dir").mkdir()
    (root / "no_images_dir").mkdir()
    (root / "no_images_dir" / "notes.txt").write_text("no images here")
    return root


def resolve(value, world):
    if not value.startswith("@"):
        return value
    special = {"@missing": world / "missing" / "nothing.here", "@under_a_file": world / "text_file" / "out"}
    return str(special.get(value, world / value[1:]))


def run(argv, capsys):
    try:
        code = train.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_refused(code, output, flag):
    errors = [line for line in output.splitlines() if "error:" in line]
    assert code == 2, output[-2000:]
    assert len(errors) == 1 and flag in errors[0], output[-2000:]
    assert "Traceback" not in output


@pytest.mark.parametrize("flag, value", list(flag_cases()))
def test_bad_flag_values_are_refused_while_parsing(flag, value, world, tmp_path, capsys):
    if value == "<unchecked>":
        pytest.fail(f"train.py {flag} has no checking type or choices")
    workdir = tmp_path / "run"
    argv = ["--workdir", str(workdir)] if flag != "--workdir" else []
    code, output = run([*argv, flag, resolve(value, world)], capsys)
    assert_refused(code, output, flag)
    assert not workdir.exists()


def test_input_nc_2_names_the_flag_and_the_allowed_values(tmp_path, capsys):
    code, output = run(["--input-nc", "2", "--workdir", str(tmp_path / "run")], capsys)
    assert_refused(code, output, "--input-nc")
    assert "invalid choice: 2 (choose from 1, 3, 4)" in output


def test_lr_message_says_the_range(tmp_path, capsys):
    code, output = run(["--lr", "0", "--workdir", str(tmp_path / "run")], capsys)
    assert_refused(code, output, "--lr")
    assert "argument --lr: must be a finite number > 0.0. Received: '0'" in output


def test_direction_aliases_parse_to_one_vocabulary():
    parser = train.parser()
    for text, expected in (("AtoB", "a2b"), ("BtoA", "b2a"), ("b2a", "b2a"), ("a2b", "a2b")):
        assert parser.parse_args(["--direction", text]).direction == expected


def test_vocabularies_match_the_library():
    from cyclegan_keras import data, distribute, model, networks

    assert config_module.GENERATORS == tuple(networks.GENERATORS)
    assert config_module.DISCRIMINATORS == tuple(networks.DISCRIMINATORS)
    assert config_module.NORMS == networks.NORMS
    assert config_module.GAN_MODES == model.GAN_MODES
    assert config_module.DIRECTIONS == model.DIRECTIONS == cli_args.DIRECTIONS
    assert config_module.PREPROCESS_MODES == data.PREPROCESS_MODES
    assert config_module.TFDS_CONFIGS == data.TFDS_CONFIGS
    # --dataset offers what tensorflow-datasets' cycle_gan builds (its cityscapes was dropped: license)
    import tensorflow_datasets as tfds

    assert config_module.TFDS_CONFIGS == tuple(c.name for c in tfds.builder_cls("cycle_gan").BUILDER_CONFIGS)
    assert distribute.STRATEGIES is config_module.STRATEGIES and distribute.PRECISIONS is config_module.PRECISIONS


def test_config_module_imports_no_tensorflow():
    code = "import sys, cyclegan_keras.config, cyclegan_keras.cli.train; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    "given, message",
    [
        (dict(lr=float("nan")), "--lr must be a finite number > 0.0. Received: nan"),
        (dict(beta1=1.0), "--beta1 must be a finite number >= 0.0 and < 1.0. Received: 1.0"),
        (dict(lambda_a=-1.0), "--lambda-a must be a finite number >= 0.0"),
        (dict(norm="foo"), "--norm must be one of instance, batch, none. Received: 'foo'"),
        (dict(direction="AtoB"), "--direction must be one of a2b, b2a"),
        (dict(epoch_count=9, n_epochs=4, n_epochs_decay=4), "--epoch-count 9 is past the last epoch"),
        (dict(xla=True, input_nc=2), "--input-nc must be one of 1, 3, 4. Received: 2"),
    ],
)
def test_library_config_applies_the_same_checks(given, message):
    with pytest.raises(config_module.ConfigError) as error:
        config_module.TrainConfig(**given)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--strategy", "multi_worker"], {}, "error: --strategy multi_worker needs TF_CONFIG"),
        (["--strategy", "tpu"], {}, "error: --strategy tpu: no TPU found"),
        (["--precision", "foo"], {}, "argument --precision: invalid choice: 'foo'"),
        (["--load-size", "64", "--crop-size", "72"], {}, "crop_size (72) cannot be larger than load_size (64)"),
        (["--crop-size", "66", "--load-size", "70"], {}, "--crop-size 66 must be a multiple of 4"),
        (["--input-nc", "1"], {}, "--lambda-identity 0"),
        (["--train-a", "@images"], {}, "--train-a and --train-b go together"),
    ],
)
def test_settings_checked_after_parsing_are_one_line_too(argv, env, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    argv = [str(images) if a == "@images" else a for a in argv]
    code, output = run([*argv, "--workdir", str(tmp_path / "run")], capsys)
    errors = [line for line in output.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0], output[-2000:]
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "config.json").exists()


def test_help_shows_the_direction_choices_and_the_program_run(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/cyclegan-train"])
    shown = train.parser().format_help()
    assert "--direction {a2b,b2a}" in shown
    assert "cyclegan-train --dataroot datasets/horse2zebra" in shown and "python train.py" not in shown
    monkeypatch.setattr(sys, "argv", ["train.py"])
    assert "python train.py --dataroot" in train.parser().format_help()


def test_a_dataroot_without_the_layout_is_refused_while_parsing(tmp_path, capsys, monkeypatch):
    (tmp_path / "data" / "trainA").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # parsing must not need it
    code, output = run(["--dataroot", str(tmp_path / "data"), "--workdir", str(tmp_path / "run")], capsys)
    assert_refused(code, output, "--dataroot")
    assert "Missing: trainB" in output and not (tmp_path / "run").exists()


def test_settings_are_checked_before_tensorflow_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    code, output = run(["--crop-size", "66", "--load-size", "70", "--workdir", str(tmp_path / "run")], capsys)
    assert code == 2 and "error: --crop-size 66 must be a multiple of 4" in output
    assert not (tmp_path / "run").exists()


def test_old_setting_names_are_accepted():
    assert config_module.make_config(jit_compile=True).xla is True
    old = config_module.upgrade_settings({"jit_compile": True, "direction": "BtoA"})
    assert old["xla"] is True and old["direction"] == "b2a" and "jit_compile" not in old
    assert old["lr"] == config_module.TrainConfig.lr
