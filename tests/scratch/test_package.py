"""cnnlab.scratch as a package: its public names, and that it stays pure NumPy (no torch)."""

import ast
import pathlib
import subprocess
import sys

import cnnlab.scratch

SCRATCH_DIR = pathlib.Path(cnnlab.scratch.__file__).parent


def test_public_api():
    assert sorted(cnnlab.scratch.__all__) == [
        "OutputSize", "as_pair", "avg_pool2d", "conv2d", "conv2d_backward", "conv2d_loop",
        "convolve2d", "max_pool2d", "output_size", "output_size_2d", "output_size_info",
    ]
    for name in cnnlab.scratch.__all__:
        assert getattr(cnnlab.scratch, name).__doc__, f"{name} has no docstring"


def test_no_module_imports_torch():
    for path in sorted(SCRATCH_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "torch" for n in names), f"{path.name} imports torch"


def test_importing_scratch_does_not_load_torch():
    # A fresh interpreter: in this one the tests themselves have already imported torch.
    code = "import sys, cnnlab.scratch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
