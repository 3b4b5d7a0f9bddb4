"""The CLI: --help for every command, and one clear line (no traceback, non-zero exit) per user error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from cnnlab.cli import app


def _all_commands(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _all_commands(command, prefix + (name,))
        else:
            yield prefix + (name,)


COMMANDS = list(_all_commands(get_command(app)))


def test_expected_commands_exist():
    names = {" ".join(c) for c in COMMANDS}
    assert {"train", "eval", "predict", "demo", "models", "data synth"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def cnnlab(*args, cwd=None):
    """Run the real CLI in a subprocess (exit codes and stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "cnnlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _assert_clear_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_data_folder(tmp_path):
    _assert_clear_error(cnnlab("train", "--data", tmp_path / "nope", "--out", tmp_path / "r"), "does not exist")


def test_folder_with_one_class(tmp_path):
    (tmp_path / "d" / "only").mkdir(parents=True)
    _assert_clear_error(cnnlab("train", "--data", tmp_path / "d"), "at least two")


def test_unknown_model_suggests(tiny_data, tmp_path):
    _assert_clear_error(cnnlab("train", "--data", tiny_data, "--model", "simple_cn", "--out", tmp_path / "r"),
                        "unknown model", "did you mean 'simple_cnn'")


def test_bad_option_value_names_the_field(tiny_data):
    _assert_clear_error(cnnlab("train", "--data", tiny_data, "--augment", "defualt"), "augment", "default")


def test_image_size_too_small(tiny_data, tmp_path):
    _assert_clear_error(cnnlab("train", "--data", tiny_data, "--img-size", "8", "--out", tmp_path / "r"),
                        "too small")


def test_run_folder_without_weights(tmp_path, tiny_data):
    (tmp_path / "run").mkdir()
    _assert_clear_error(cnnlab("eval", tmp_path / "run", "--data", tiny_data), "model.json is missing")
    _assert_clear_error(cnnlab("predict", tmp_path / "nothing-here", tiny_data), "does not exist")


def test_predict_json_lines(tiny_run, tiny_data):
    import json

    result = cnnlab("predict", tiny_run.run_dir, tiny_data / "val" / "ring" if (tiny_data / "val" / "ring").exists()
                    else tiny_data / "val" / "circle", "--json", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 4 and all(len(r["top"]) == 2 for r in rows)
