"""The notebooks in notebooks/: committed without outputs, and every one runs from top to bottom without an error.

They are executed as a user opens them: a fresh `python3` kernel (ipykernel) runs the cells in order (nbclient);
an exception in any cell fails the test with that cell's traceback. The kernel inherits this process's
environment, with the checkout holding the cnnlab under test first on PYTHONPATH, so that it runs this code
whether cnnlab is installed editable (make test) or not (a worktree).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cnnlab

REPO = Path(cnnlab.__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Per cell: the longest cell trains for about a minute on one loaded core; 10 minutes is a hang, not a slow machine.
CELL_TIMEOUT = 600


def test_the_lecture_has_its_three_notebooks():
    assert [path.name for path in NOTEBOOKS] == ["01_convolution.ipynb", "02_train_and_judge.ipynb",
                                                 "03_large_images.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebooks_carry_no_outputs(path):
    """A committed notebook shows the reader nothing stale: no outputs, no execution counts; and it is valid v4."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    for index, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, \
            f"{path.name}: code cell {index} carries outputs; clear them before committing"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_without_error(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    # One intra-op thread: the suite runs two test processes on two cores; more threads only fight over them.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' temporary folders, removed with the test's
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first error

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    # the cnnlab under test ran in the kernel, and its objects rendered as HTML (a summary, a run's report)
    assert any("text/html" in output.get("data", {}) for output in outputs)
    assert list(tmp_path.glob("cnnlab-notebook-*")) == []  # the last cell deleted what the notebook wrote
