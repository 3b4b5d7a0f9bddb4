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
    assert {"train", "eval", "predict", "demo", "models", "data synth", "export", "serve"} <= names


# The options each command must show in its --help (a command that lost one fails here).
EXPECTED_FLAGS = {
    "train": ["--data", "--model", "--img-size", "--resume", "--overwrite", "--config", "--freeze", "--augment-on",
              "--time", "--tile", "--scale", "--ema", "--no-ema", "--balance", "--mixup", "--cutmix"],
    "plan": ["--data", "--model", "--img-size", "--tile", "--scale", "--batch-size", "--device", "--epochs", "--time",
             "--config"],
    "sweep": ["--data", "--img-size", "--tile", "--scale", "--time", "--model", "--model-option", "--batch-size",
              "--out", "--overwrite"],
    "eval": ["--data", "--split", "--which", "--tta", "--max-bad"],
    "predict": ["--top-k", "--json", "--tta", "--max-bad", "--tiled", "--scale", "--heatmap", "--class"],
    "export": ["--format", "--out", "--which", "--data", "--tolerance", "--int8", "--int8-tolerance"],
    "serve": ["--port", "--host", "--allow-remote", "--max-upload-mb", "--which", "--device", "--threads"],
    "demo": ["--data", "--out", "--epochs"],
    "lr-find": ["--data", "--steps", "--optimizer", "--run", "--out"],
    "augment-preview": ["--data", "--augment", "--augment-on", "--n", "--run", "--out"],
    "compare": ["--data", "--models", "--epochs", "--overwrite"],
    "report": [], "models": [], "summary": ["--model", "--input", "--json"], "filter": ["--kernel", "--stride", "--out"],
    "inspect": ["--out", "--max-maps", "--which"], "explain": ["--class", "--out", "--which"], "data synth": ["--classes", "--per-class", "--size"],
    "data check": ["--fix-report", "--quarantine", "--max-pixels"], "cache list": ["--cache-dir"],
    "cache clear": ["--cache-dir"],
}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_help(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    for flag in EXPECTED_FLAGS[" ".join(command)]:
        assert flag in result.output, flag
    # flags take no value: no "<bool>" after them; arguments show as NAME, not {name}
    assert "<bool>" not in result.output and "{" not in result.output.splitlines()[1]


def test_every_train_option_is_a_config_field_with_its_docstring_as_help():
    import dataclasses

    from cnnlab.config import TrainConfig, field_docs

    params = {p.name: p for p in get_command(app).commands["train"].params}
    docs = field_docs(TrainConfig)
    for item in dataclasses.fields(TrainConfig):
        flag = "model_option" if item.name == "model_options" else item.name
        assert flag in params, f"TrainConfig.{item.name} has no train flag"
        assert docs[item.name] and params[flag].help == docs[item.name], item.name
        if item.name not in ("data", "model_options"):
            api = item.default_factory() if item.default is dataclasses.MISSING else item.default
            assert params[flag].default == api, item.name  # the same default as the API
    assert set(params) - {"model_option", *docs} == {"config_file", "resume", "overwrite", "nproc"}


@pytest.mark.parametrize("cmd", __import__("cnnlab.cli").cli.COMMANDS, ids=lambda c: c.name)
def test_every_flag_has_the_functions_default_and_a_help(cmd):
    """The flags are read from the library function's source; importing it, its real signature must agree: the
    same defaults, every parameter a flag (or an argument), and a help text for each."""
    import inspect as inspect_module

    from cnnlab.cli import NOT_FLAGS, resolve

    group = get_command(app)
    command = group.commands[cmd.group].commands[cmd.name] if cmd.group else group.commands[cmd.name]
    params = {p.name: p for p in command.params}
    function = resolve(cmd.function)
    for name, parameter in inspect_module.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) or name in NOT_FLAGS:
            continue
        assert name in params, f"{cmd.name}: {name} is no flag"
        if parameter.default is not parameter.empty:
            assert params[name].default == parameter.default, (cmd.name, name)
        assert params[name].help or name in cmd.arguments, (cmd.name, name)
    for name in cmd.cli_only:
        shown = inspect_module.signature(resolve(cmd.show)).parameters[name]
        assert params[name].default == shown.default and params[name].help, (cmd.name, name)


def test_usage_and_version():
    runner = CliRunner()
    usage = runner.invoke(app, ["predict", "--help"], terminal_width=200).output
    assert "Usage: root predict [OPTIONS] RUN_DIR INPUTS..." in usage or "predict [OPTIONS] RUN_DIR INPUTS..." in usage
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"cnnlab {__import__('cnnlab').__version__}"


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


@pytest.mark.slow
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
