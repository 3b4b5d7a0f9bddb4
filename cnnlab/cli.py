"""Command-line interface: a table from command name to the library function it runs, and one builder that makes
each command's flags from that function's signature (and, for commands that take training options, from
TrainConfig's fields). A flag's default is the function's, its help the parameter's `Help` (cnnlab.config), a
shared help by name (SHARED_HELP) or the TrainConfig field's docstring: nothing is typed twice, and the CLI cannot
drift from the Python API (tests/test_cli.py checks every command).

What a command prints and its exit code come from the command module's `show` function. Library modules are
imported when a command runs, so `cnnlab --help` does not import torch.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from cnnlab import __version__
from cnnlab import config as config_module
from cnnlab.config import SHARED_HELP, Help, TrainConfig, default, field_docs
from cnnlab.errors import CnnlabError
from cnnlab.signals import Terminated, TrainingInterrupted, end_children, raise_on_sigterm, terminated


@dataclass(frozen=True)
class Cmd:
    """One command: the library function it runs and how its result is shown."""

    name: str
    function: str
    """module:function of the library function (imported when the command runs)."""
    show: str | None = None
    """module:function(result, **cli_only) -> exit code (None: 0), printing the result; None prints nothing."""
    arguments: tuple[str, ...] = ()
    """Parameters given by position (RUN_DIR IMAGE...), in order."""
    config: bool = False
    """Whether the command takes every training option (TrainConfig's fields) as flags."""
    cli_only: tuple[str, ...] = ()
    """Parameters of `show` that are flags too (e.g. --json), not the function's."""
    group: str | None = None


C = "cnnlab.commands."
COMMANDS = [
    # name               library function                          how it is shown                      by position
    Cmd("synth",         "cnnlab.data.synth:synthesize",           C + "data:show_synth",               ("out_dir",), group="data"),
    Cmd("check",         "cnnlab.data.check:check_dataset",        C + "data:show_check",               ("root",), group="data"),
    Cmd("list",          "cnnlab.data.cache:list_stores",          C + "data:show_stores",              group="cache"),
    Cmd("clear",         "cnnlab.data.cache:clear_stores",         C + "data:show_cleared",             ("names",), group="cache"),
    Cmd("train",         C + "train:train_command",                C + "train:show",                    config=True),
    Cmd("plan",          C + "plan:plan",                          C + "plan:show",                     config=True),
    Cmd("eval",          C + "evaluate:evaluate",                  C + "evaluate:show",                 ("run_dir",)),
    Cmd("predict",       C + "predict:predict",                    C + "predict:show",                  ("run_dir", "inputs"),
        cli_only=("as_json", "max_bad")),
    Cmd("export",        C + "export:export",                      C + "export:show",                   ("run_dir",)),
    Cmd("serve",         C + "serve:serve",                        None,                                ("run_dir",)),
    Cmd("demo",          C + "demo:demo",                          C + "demo:show"),
    Cmd("models",        "cnnlab.models.registry:list_models",              C + "data:show_lines"),
    Cmd("lr-find",       C + "lr_find:find_lr",                    C + "lr_find:show",                  config=True),
    Cmd("augment-preview", C + "augment_preview:augment_preview",  C + "augment_preview:show",          config=True),
    Cmd("compare",       C + "compare:compare",                    C + "compare:show",                  config=True),
    Cmd("sweep",         C + "sweep:sweep",                        C + "sweep:show",                    config=True),
    Cmd("report",        "cnnlab.runs.report:write_report",        C + "data:show_written",             ("run_dir",)),
    Cmd("summary",       "cnnlab.models.summary:summarize_model",  C + "filters:show_summary",          cli_only=("as_json",)),
    Cmd("filter",        C + "filters:filter_image",               C + "filters:show",                  ("image_path",)),
    Cmd("explain",       C + "explain:explain",                    C + "explain:show",                  ("run_dir", "images")),
    Cmd("inspect",       C + "inspect:inspect_run",                C + "inspect:show",                  ("run_dir", "image")),
]
GROUPS = {"data": "Make or check image datasets.", "cache": "See or clear the decoded-image cache."}
# parameters no command shows as a flag: the API's own (progress output, a config object)
NOT_FLAGS = ("verbose", "config", "log_level", "per_model_options")


# --------------------------------------------------------------------------------------------
# help that reads like the command line
# --------------------------------------------------------------------------------------------

class _ReadableHelp:
    """Help that reads like the command line: flags without a `<bool>` type, arguments as NAME."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""  # a flag takes no value: `--json`, not `--json <bool>`
            elif isinstance(param, TyperArgument):
                param.metavar = param.name.upper()  # RUN_DIR, INPUTS..., not <list[str]>
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = ["[OPTIONS]"] if any(isinstance(p, TyperOption) for p in self.get_params(ctx)) else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        if isinstance(self, TyperGroup):
            pieces.append(self.subcommand_metavar)
        return pieces


class Command(_ReadableHelp, TyperCommand):
    """A command whose help and usage read like the command line."""


class Group(_ReadableHelp, TyperGroup):
    """A command group whose help reads like the command line."""


# --------------------------------------------------------------------------------------------
# flags from a signature, read from the source (so that `cnnlab --help` imports no torch)
# --------------------------------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent


def resolve(target: str) -> Callable:
    """'module:function' -> the function (imports its module: done when the command runs)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _source_file(module: str) -> Path:
    """The .py file of a cnnlab module, found without importing it (or its package)."""
    parts = module.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@functools.cache
def _module_tree(module: str) -> ast.Module:
    return ast.parse(_source_file(module).read_text(encoding="utf-8"))


def _constant(module: str, name: str, seen: frozenset = frozenset()) -> Any:
    """The literal value of NAME in a cnnlab module (a default like DEFAULT_PORT), following `from cnnlab.x import
    NAME` to where it is assigned; inspect.Parameter.empty when it is not a literal."""
    if (module, name) in seen or not _source_file(module).is_file():
        return inspect.Parameter.empty
    tree = _module_tree(module)
    found = _constants(tree)
    if name in found:
        return found[name]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnnlab.") and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _constant(node.module, alias.name, seen | {(module, name)})
    return inspect.Parameter.empty


def _constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level NAME = <literal> assignments."""
    found = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        for target in targets:
            if isinstance(target, ast.Name) and node.value is not None:
                try:
                    found[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return found


@dataclass(frozen=True)
class Spec:
    """One parameter as the source declares it: the type typer parses, its default, its Help."""

    name: str
    type: Any
    default: Any
    help: Help | None


def _help_in(node: ast.AST) -> Help | None:
    """Help("text", flag=...) inside an Annotated[...] annotation, or a Help constant of cnnlab.config named there."""
    if not (isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Annotated"):
        return None
    for item in node.slice.elts[1:]:
        if isinstance(item, ast.Call) and getattr(item.func, "id", None) == "Help":
            args = [ast.literal_eval(a) for a in item.args]
            keywords = {k.arg: ast.literal_eval(k.value) for k in item.keywords}
            return Help(*args, **keywords)
        if isinstance(item, ast.Name) and isinstance(getattr(config_module, item.id, None), Help):
            return getattr(config_module, item.id)
    return None


def cli_type(node: ast.AST | None) -> Any:
    """The type typer parses a parameter as, from its annotation: paths and 'number or text' as text, sequences as
    repeated text (typer needs plain types; the library converts)."""
    if node is None:
        return str
    if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Annotated":
        return cli_type(node.slice.elts[0])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | Y | None
        parts, stack = [], [node]
        while stack:
            item = stack.pop()
            if isinstance(item, ast.BinOp) and isinstance(item.op, ast.BitOr):
                stack += [item.right, item.left]
            else:
                parts.append(item)
        optional = any(isinstance(p, ast.Constant) and p.value is None for p in parts)
        parts = [p for p in parts if not (isinstance(p, ast.Constant) and p.value is None)]
        kinds = [cli_type(p) for p in parts]
        if list[str] in kinds and str not in kinds:
            inner = list[str]
        else:
            inner = kinds[0] if len(kinds) == 1 else str
        return Optional[inner] if optional else inner
    if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) in ("list", "tuple", "dict"):
        return list[str]
    return {"bool": bool, "int": int, "float": float, "str": str, "list": list[str], "tuple": list[str],
            "dict": list[str]}.get(getattr(node, "id", None), str)  # bare dict: repeated NAME=VALUE


@functools.cache
def source_signature(target: str) -> tuple[Spec, ...]:
    """The keyword parameters of 'module:function' as its source declares them (nothing imported)."""
    module, name = target.split(":")
    tree = _module_tree(module)
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    specs = []
    for arg, node in [*zip(positional, defaults), *zip(args.kwonlyargs, args.kw_defaults)]:
        if node is None:
            value = inspect.Parameter.empty
        elif isinstance(node, ast.Name):
            value = _constant(module, node.id)
        else:
            value = ast.literal_eval(node)
        specs.append(Spec(arg.arg, cli_type(arg.annotation), value, _help_in(arg.annotation)
                          if arg.annotation is not None else None))
    return tuple(specs)


def _help_of(spec: Spec) -> Help | None:
    """A parameter's Help: its annotation's, else the shared one of its name, else its TrainConfig field's."""
    if spec.help is not None:
        return spec.help
    if spec.name in SHARED_HELP:
        return SHARED_HELP[spec.name]
    docs = field_docs(TrainConfig)
    return Help(docs[spec.name]) if spec.name in docs else None


def flag_of(spec: Spec) -> str:
    """--name, or the flag its Help names."""
    help_ = _help_of(spec)
    return help_.flag if help_ is not None and help_.flag else "--" + spec.name.replace("_", "-")


def _parameter(spec: Spec, argument: bool) -> inspect.Parameter:
    """One typer parameter for a function parameter."""
    help_ = _help_of(spec)
    text = help_.text if help_ is not None else ""
    value = ... if spec.default is inspect.Parameter.empty else spec.default
    if argument:
        option = typer.Argument(value, help=text, show_default=False)
    else:
        flag = flag_of(spec)
        if spec.type is bool or spec.type == Optional[bool]:  # on (or decided) by default: --no-ema as well
            flag = flag if spec.default is False else f"{flag}/--no-{flag[2:]}"
        option = typer.Option(value, flag, help=text)
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=spec.type)


def config_specs() -> list[Spec]:
    """A Spec per TrainConfig field (model_options as the repeatable --model-option NAME=VALUE)."""
    tree = ast.parse(inspect.getsource(TrainConfig))
    docs = field_docs(TrainConfig)
    specs = []
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            if name == "model_options":
                specs.append(Spec("model_option", list[str], [], Help(docs[name])))
                continue
            value = None if name == "data" else default(TrainConfig, name)  # data: not needed with --resume
            specs.append(Spec(name, cli_type(node.annotation), value, Help(docs[name])))
    return specs


def specs_of(cmd: Cmd) -> tuple[list[Spec], list[Spec], list[Spec]]:
    """(the function's parameters shown as flags or arguments, the show function's CLI-only ones, the training
    options whose flags the function does not declare itself)."""
    own = [spec for spec in source_signature(cmd.function) if spec.name not in NOT_FLAGS
           and spec.name not in ("options", "train_options")]
    extra = [spec for spec in source_signature(cmd.show) if spec.name in cmd.cli_only] if cmd.cli_only else []
    fields = []
    if cmd.config:  # every training option, except those the command declares or sets itself (SETS_ITSELF)
        taken = {flag_of(spec) for spec in own + extra}
        declared = _constant(cmd.function.split(":")[0], "SETS_ITSELF")
        sets_itself = {"model_option" if name == "model_options" else name
                       for name in (declared if isinstance(declared, tuple) else ())}
        fields = [spec for spec in config_specs() if flag_of(spec) not in taken and spec.name not in sets_itself]
    return own, extra, fields


def build(cmd: Cmd, parent: typer.Typer) -> None:
    """Register `cmd` on `parent`, its flags made from its function's source (and TrainConfig's fields)."""
    own, extra, fields = specs_of(cmd)

    def run(ctx: typer.Context, **values: Any) -> None:
        kwargs = {spec.name: values[spec.name] for spec in own}
        if "model_options" in kwargs:  # a function's own repeatable NAME=VALUE flag (summary)
            kwargs["model_options"] = parse_model_options(kwargs["model_options"])
        for spec in fields:  # training options: only those typed (the function's own defaults apply)
            if ctx.get_parameter_source(spec.name).name != "DEFAULT":
                value = values[spec.name]
                if spec.name == "model_option":
                    kwargs["model_options"] = parse_model_options(value)
                else:
                    kwargs[spec.name] = value
        result = resolve(cmd.function)(**kwargs)
        if cmd.show:  # the result, and the flags the show function names (its own, or the function's)
            wanted = {spec.name for spec in source_signature(cmd.show)}
            code = resolve(cmd.show)(result, **{spec.name: values[spec.name] for spec in own + extra
                                                 if spec.name in wanted})
            if code:
                raise typer.Exit(code)

    params = [_parameter(spec, spec.name in cmd.arguments) for spec in own + extra + fields]
    params.sort(key=lambda p: cmd.arguments.index(p.name) if p.name in cmd.arguments else len(cmd.arguments))
    run.__signature__ = inspect.Signature([inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                             annotation=typer.Context), *params])
    parent.command(cmd.name, cls=Command, help=_docstring(cmd.function))(run)


def _docstring(target: str) -> str:
    """A command's help: its function's docstring (read from the source) up to the paragraphs for Python callers,
    those that start with "Returns" or name a parameter in `backticks`; each paragraph on one line (the terminal
    wraps it)."""
    module, name = target.split(":")
    function = next(node for node in _module_tree(module).body if isinstance(node, ast.FunctionDef)
                    and node.name == name)
    parameters = {arg.arg for arg in function.args.args + function.args.kwonlyargs}
    shown = []
    for paragraph in inspect.cleandoc(ast.get_docstring(function) or "").split("\n\n"):
        if shown and (paragraph.startswith("Returns") or any(f"`{p}`" in paragraph for p in parameters)):
            break
        shown.append(" ".join(paragraph.split()))
    return "\n\n".join(shown)


def parse_model_options(items: list[str]) -> dict:
    """['widths=[16,32]', 'hidden=256'] -> {'widths': [16, 32], 'hidden': 256} (YAML values, never eval)."""
    import yaml

    options = {}
    for item in items or ():  # None: the flag was not given
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CnnlabError(f"--model-option {item!r} must look like NAME=VALUE, e.g. widths=[16,32,64]")
        options[key.strip()] = yaml.safe_load(value)
    return options


app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="cnnlab: train, understand and trust CNNs on your own images.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnnlab {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print cnnlab's version and exit.")) -> None:
    """cnnlab: train, understand and trust CNNs on your own images."""


_groups = {name: typer.Typer(cls=Group, no_args_is_help=True, help=text) for name, text in GROUPS.items()}
for _name, _group in _groups.items():
    app.add_typer(_group, name=_name)
for _cmd in COMMANDS:
    build(_cmd, _groups[_cmd.group] if _cmd.group else app)


# --------------------------------------------------------------------------------------------
# the entry point: errors and signals
# --------------------------------------------------------------------------------------------

def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback; SIGTERM and
    Ctrl-C end a command after its cleanup, with one line and exit 143 or 130."""
    raise_on_sigterm()
    try:
        try:
            app()
        except SystemExit as done:
            if _from_ctrl_c(done):  # typer turns KeyboardInterrupt into a silent exit 130: say what happened
                raise KeyboardInterrupt from None
            if done.code not in (0, None) or not terminated():
                raise
        except Exception as error:
            # an error raised after SIGTERM came is its consequence, whatever it says: a DataLoader worker that the
            # group's signal reached before it could ignore it (torch's worker start-up installs its own SIGTERM
            # handler first: "worker killed by signal: Terminated"), or Terminated re-wrapped by a library that
            # catches what happens inside it (load_state_dict: "weights ... do not fit", exit 2 instead of 143)
            if not terminated() or isinstance(error, (TrainingInterrupted, Terminated)):
                raise
            raise Terminated("SIGTERM: stopped") from None
        if terminated():  # SIGTERM came but its exception was lost (see signals.terminated): still a stop
            raise Terminated("SIGTERM: stopped")
    except CnnlabError as error:
        if os.environ.get("RANK", "0") == "0":  # of several training processes, rank 0 speaks for all
            typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except TrainingInterrupted as error:  # checkpoint saved; the message says how to resume
        if os.environ.get("RANK", "0") == "0":
            typer.echo(str(error), err=True)
        end_children()
        sys.exit(error.exit_code)  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    except Terminated as error:
        if os.environ.get("RANK", "0") == "0":
            typer.echo(str(error), err=True)
        end_children()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            typer.echo("SIGINT: stopped (Ctrl-C)", err=True)
        end_children()
        sys.exit(130)


def _from_ctrl_c(done: SystemExit) -> bool:
    """Whether this exit is typer's conversion of a KeyboardInterrupt (Exit(130) raised from it)."""
    cause = done.__context__
    return done.code == 130 and cause is not None and isinstance(cause.__cause__, KeyboardInterrupt)


if __name__ == "__main__":
    main()
