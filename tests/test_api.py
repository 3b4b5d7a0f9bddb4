"""The public Python API re-exported from cnnlab/__init__.py."""

import subprocess
import sys

import cnnlab


def test_every_exported_name_resolves():
    for name in cnnlab.__all__:
        assert getattr(cnnlab, name) is not None, name
    assert cnnlab.fit.__module__ == "cnnlab.commands.train"
    assert "simple_cnn" in cnnlab.list_models()


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, cnnlab.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
