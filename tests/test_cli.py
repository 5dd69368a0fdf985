"""Every flag of translate.py and export.py refuses bad values with one line, exit 2, before any work.

The table is built from the parsers themselves: each flag's type (or
choices) says which bad values to try, and a flag whose type is unknown here
fails `test_every_flag_has_a_check`, so a new flag cannot arrive unchecked.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_cyclegan
from PIL import Image

from cyclegan_keras import data, model, networks
from cyclegan_keras.cli import args as cli_args
from cyclegan_keras.cli import evaluate as evaluate_cli
from cyclegan_keras.cli import export as export_cli
from cyclegan_keras.cli import translate

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
COMMANDS = {"translate": translate, "export": export_cli, "evaluate": evaluate_cli}

# Bad values by argument type; "@name" is a path made by the `world` fixture.
PATH_CASES = {
    cli_args.keras_model: ["@missing", "@garbage.keras", "@empty_dir", "@dir_with_garbage_model", "@pth_as.keras"],
    cli_args.output_folder: ["@text_file", "@under_a_file"],
    cli_args.torch_file: ["@missing", "@empty_dir", "@cut_legacy.pth", "@cut_zip.pth", "@text_file", "@malicious.pth"],
    cli_args.image_folder: ["@missing", "@text_file", "@empty_dir", "@no_images_dir", "@unreadable_images_dir"],
    cli_args.fid_image_folder: ["@missing", "@text_file", "@empty_dir", "@no_images_dir", "@one_image_dir"],
    cli_args.model_source: ["@missing", "@empty_dir", "@garbage.keras", "@dir_with_garbage_model", "@pth_as.keras"],
    cli_args.existing_file: ["@missing", "@empty_dir"],
    cli_args.inception_weights_file: ["@missing", "@empty_dir"],
    cli_args.labels_source: ["@missing", "@empty_dir", "citiscapes"],
    cli_args.output_file: ["@empty_dir", "@under_a_file"],
    cli_args.image_source: [
        "@missing",
        "@text_file",
        "@empty_dir",
        "@no_images_dir",
        "@unreadable_images_dir",
        "@glob_matching_nothing",
    ],
}


def bad_values(action):
    """The bad values to try for one argparse action, from its type or choices."""
    if isinstance(action.type, cli_args.Range):
        values = [str(action.type.minimum - 1), "-1", "1.5", "x"]
        return values + ([str(action.type.maximum + 1)] if action.type.maximum is not None else [])
    if action.type is cli_args.direction:
        return ["foo", "CtoD", ""]
    if action.type is cli_args.byte_size:
        return ["0", "-1G", "512K", "4X", "G", "nan"]
    if action.choices:
        return ["foo"]
    if action.type in PATH_CASES:
        return PATH_CASES[action.type]
    if isinstance(action, cli_args.PretrainedName):
        return ["horse2zebr", ""]
    if action.nargs == 0:  # --help and switches: no value to get wrong
        return []
    raise LookupError(f"{action.option_strings[0]} has no checking type or choices: add one to cli_args")


def flag_cases():
    for command, module in COMMANDS.items():
        for action in module.parser()._actions:
            try:
                values = bad_values(action)
            except LookupError:
                values = ["<unchecked>"]  # reported by test_every_flag_has_a_check
            for value in values:
                yield pytest.param(command, action.option_strings[0], value, id=f"{command} {action.dest}={value}")


def test_every_flag_has_a_check():
    for module in COMMANDS.values():
        for action in module.parser()._actions:
            bad_values(action)  # raises for a flag without a check
    unchecked = translate.parser()
    unchecked.add_argument("--new-flag")
    with pytest.raises(LookupError, match="--new-flag has no checking type"):
        [bad_values(action) for action in unchecked._actions]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cyclegan = tiny_cyclegan()
    cyclegan.compile()
    cyclegan.build((None, 32, 32, 3))
    cyclegan.save(root / "model.keras")
    networks.resnet_generator(n_blocks=1, filters=8).save(root / "generator.keras")
    (root / "images").mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 80 * i, np.uint8)).save(root / "images" / f"{i}.png")
    (root / "one_image_dir").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "one_image_dir" / "0.png")
    (root / "text_file").write_text("hello")
    (root / "garbage.keras").write_text("not a model")
    (root / "empty_dir").mkdir()
    (root / "dir_with_garbage_model").mkdir()
    (root / "dir_with_garbage_model" / "model.keras").write_bytes(b"PK\x03\x04 cut")
    (root / "pth_as.keras").write_bytes((FIXTURES / "resnet_tiny.pth").read_bytes())  # a zip, not Keras
    (root / "no_images_dir").mkdir()
    (root / "no_images_dir" / "notes.txt").write_text("no images here")
    (root / "unreadable_images_dir").mkdir()
    for name in ("a.png", "b.jpg"):
        (root / "unreadable_images_dir" / name).write_bytes(b"not an image at all")
    (root / "cut_legacy.pth").write_bytes((FIXTURES / "resnet_tiny_legacy.pth").read_bytes()[:-8])
    (root / "cut_zip.pth").write_bytes((FIXTURES / "resnet_tiny.pth").read_bytes()[:-100])
    (root / "malicious.pth").write_bytes(pickle.dumps({"model.1.weight": Exploit(root / "pwned")}, protocol=2))
    return root


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def resolve(value, world):
    if not value.startswith("@"):
        return value
    special = {
        "@missing": world / "missing" / "nothing.here",
        "@under_a_file": world / "text_file" / "out",
        "@glob_matching_nothing": world / "images" / "*.tiff",
    }
    return str(special.get(value, world / value[1:]))


def base_argv(command, world, out):
    if command == "evaluate":
        return ["--fake", str(world / "images"), "--truth", str(world / "images"), "--json", str(out)]
    if command == "translate":
        return ["--model", str(world / "model.keras"), "--input", str(world / "images"), "--out", str(out)]
    return ["--model", str(world / "model.keras"), "--out", str(out), "--sample-size", "16"]


def with_flag(argv, flag, value):
    """`argv` with `flag` set to `value`; --from-torch takes --model's place."""
    argv = list(argv)
    if flag in ("--from-torch", "--pretrained") and "--model" in argv:
        index = argv.index("--model")
        del argv[index : index + 2]
    if flag in ("--model", "--pretrained") and "--fake" in argv:  # evaluate: one source or the other
        index = argv.index("--fake")
        del argv[index : index + 2]
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def run(command, argv, capsys):
    """(exit code, stdout + stderr) of the command's main(argv), as the shell sees them."""
    try:
        code = COMMANDS[command].main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_refused(code, output, flag, out):
    errors = [line for line in output.splitlines() if "error:" in line]
    assert code == 2, output[-2000:]
    assert len(errors) == 1 and flag in errors[0], output[-2000:]
    assert "Traceback" not in output
    assert not Path(out).exists()  # nothing written


@pytest.mark.parametrize("command, flag, value", list(flag_cases()))
def test_bad_flag_values_are_refused_before_any_work(command, flag, value, world, tmp_path, capsys):
    if value == "<unchecked>":
        pytest.fail(f"{command}.py {flag} has no checking type or choices")
    out = tmp_path / "out"
    argv = base_argv(command, world, out)
    if flag == "--out":
        out = Path(resolve(value, world))
        if out.exists():
            out = tmp_path / "out"  # what must not appear is the real output
    code, output = run(command, with_flag(argv, flag, resolve(value, world)), capsys)
    assert_refused(code, output, flag, out)
    assert not (world / "pwned").exists()


@pytest.mark.parametrize(
    "command, extra, flag",
    [
        ("translate", ["--load-size", "64"], "--load-size"),  # ignored without --preprocess resize
        ("translate", ["--model", "@generator.keras", "--direction", "BtoA"], "--direction"),  # a lone generator
        ("export", ["--format", "saved_model", "--tflite-quantization", "int8"], "--tflite-quantization"),
        ("export", ["--from-torch", str(FIXTURES / "resnet_tiny.pth"), "--direction", "b2a"], "--direction"),
        ("export", ["--model", "@generator.keras", "--direction", "b2a"], "--direction"),
        ("export", ["--max-pixels", "100"], "--max-pixels"),  # the 16-pixel parity samples would be refused
    ],
)
def test_flags_that_would_be_ignored_are_refused(command, extra, flag, world, tmp_path, capsys):
    argv = base_argv(command, world, tmp_path / "out")
    for name, value in zip(extra[::2], extra[1::2]):
        argv = with_flag(argv, name, resolve(value, world))
    code, output = run(command, argv, capsys)
    assert_refused(code, output, flag, tmp_path / "out")


@pytest.mark.parametrize("command", ["translate", "export"])
def test_missing_required_flags_are_named(command, world, tmp_path, capsys):
    argv = base_argv(command, world, tmp_path / "out")
    for flag in ("--model", "--out"):
        index = argv.index(flag)
        code, output = run(command, argv[:index] + argv[index + 2 :], capsys)
        assert_refused(code, output, flag, tmp_path / "out")


def test_translate_with_no_readable_image_exits_2_and_writes_nothing(world, tmp_path, capsys):
    argv = with_flag(base_argv("translate", world, tmp_path / "out"), "--input", str(world / "unreadable_images_dir"))
    code, output = run("translate", argv, capsys)
    assert_refused(code, output, "--input", tmp_path / "out")
    assert "None of the 2 image file(s)" in output and "a.png: cannot decode" in output


def test_vocabularies_match_the_library():
    assert cli_args.DIRECTIONS == model.DIRECTIONS
    assert cli_args.IMAGE_EXTENSIONS == data.IMAGE_EXTENSIONS
    assert translate.DEFAULT_LOAD_SIZE == __import__("cyclegan_keras.translation").translation.DEFAULT_LOAD_SIZE
    spellings = {"a2b": "a2b", "AtoB": "a2b", "atob": "a2b", "B2A": "b2a", "BtoA": "b2a", " b2a ": "b2a"}
    assert {text: cli_args.parse_direction(text) for text in spellings} == spellings
    with pytest.raises(ValueError, match="must be a2b or b2a .*AtoB, BtoA.*Received: 'AtoC'"):
        cli_args.parse_direction("AtoC")


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from cyclegan_keras.cli import export, translate\n"
        "translate.parser(); export.parser()\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    for script in ("translate.py", "export.py"):
        shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert shown.returncode == 0 and "--direction {a2b,b2a}" in shown.stdout and shown.stderr == ""
    assert "(default: none" in subprocess.run(
        [sys.executable, "translate.py", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    ).stdout.replace("\n", " ").replace("  ", " ")


def test_a_bad_model_in_a_fresh_process_is_one_line(world):
    result = subprocess.run(
        [sys.executable, "translate.py", "--model", str(world / "garbage.keras"), "--input", str(world / "images")]
        + ["--out", str(world / "never")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: argument --model: {world / 'garbage.keras'} is not a readable Keras model "
        "(a .keras file is a zip archive with config.json)"
    )
    assert not (world / "never").exists()


def test_the_weights_hint_is_the_library_s():
    from cyclegan_keras import fid_inception

    assert cli_args.FID_WEIGHTS_URL == fid_inception.FID_WEIGHTS_URL


def test_out_inside_the_input_folder_is_refused_before_tensorflow_starts(world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # the check must not need it
    out = world / "images" / "translated"
    code, output = run("translate", base_argv("translate", world, out), capsys)
    assert_refused(code, output, "--out", out)
    assert "is inside the input folder" in output
