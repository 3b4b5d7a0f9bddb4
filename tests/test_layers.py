"""The architecture, checked: imports go one way through the layers, and no module imports itself back.

    base (errors, config, files, html, plots, signals) -> scratch -> data -> models -> training -> runs -> serve -> commands
    -> cli

and commands are leaves: a command module imports no other command, except those that run a training (compare,
sweep and demo call `train`'s fit).

Every `import` and `from ... import` in cnnlab is read from the source with ast, including those inside
functions (a lazy import is still a dependency). TYPE_CHECKING-only imports would count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cnnlab

PACKAGE = Path(cnnlab.__file__).parent
LAYERS = ["base", "scratch", "data", "models", "training", "runs", "serve", "commands", "cli"]
# the commands that run a training, and so may call `cnnlab.commands.train.fit`
TRAINING_COMMANDS = {"cnnlab.commands.compare", "cnnlab.commands.sweep", "cnnlab.commands.demo"}
BASE = {"cnnlab", "cnnlab.errors", "cnnlab.config", "cnnlab.files", "cnnlab.html", "cnnlab.plots", "cnnlab.signals"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer a cnnlab module belongs to."""
    if module in BASE:
        return "base"
    if module in ("cnnlab.cli", "cnnlab.__main__"):
        return "cli"
    return module.split(".")[1]


def imports_of(path: Path, package: str | None = None) -> set[str]:
    """The cnnlab modules `path` imports (a `from pkg import name` of a submodule counts as that submodule);
    `package`: the package relative imports start from (default: the file's own)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cnnlab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("cnnlab"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                    (PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py").exists()
                found.add(candidate if is_module else base)
    return found


def graph() -> dict[str, set[str]]:
    """module -> the cnnlab modules it imports (imports of a package's own __init__ left out: every submodule
    import runs it, and the __init__s only name their submodules)."""
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        edges[name] = {m for m in imports_of(path) if m != name and not (PACKAGE.parent / Path(*m.split("."))
                                                                         / "__init__.py").exists()}
    return edges


def test_imports_go_one_way_through_the_layers():
    order = {layer: i for i, layer in enumerate(LAYERS)}
    upward = sorted(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
                    for module, targets in graph().items() for target in targets
                    if order[layer_of(target)] > order[layer_of(module)])
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_scratch_is_pure_numpy():
    for path in (PACKAGE / "scratch").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import torch" not in text and "from torch" not in text, path


def test_commands_are_leaves():
    """No command imports another's internals: engines live below cnnlab.commands (runs, serve, training)."""
    crossing = sorted(f"{module} imports {target}" for module, targets in graph().items()
                      if layer_of(module) == "commands" for target in targets
                      if layer_of(target) == "commands" and target != module
                      and not (module in TRAINING_COMMANDS and target == "cnnlab.commands.train"))
    assert not crossing, "commands importing other commands:\n" + "\n".join(crossing)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from cnnlab.commands.train import fit\n    import cnnlab.runs.report\n"
                      "from ..runs import reader\n")
    assert imports_of(source, "cnnlab.training") == {"cnnlab.commands.train", "cnnlab.runs.report",
                                                    "cnnlab.runs.reader"}
    assert layer_of("cnnlab.training.loop") == "training" and layer_of("cnnlab.files") == "base"
    # a module named in a `from package import module` counts as that module
    assert imports_of(PACKAGE / "models" / "__init__.py") >= {"cnnlab.models.registry", "cnnlab.models.mlp"}
