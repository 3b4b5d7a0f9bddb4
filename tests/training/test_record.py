"""The run folder's schema at work: a folder that holds a run is never overwritten by accident (the user's own
files survive --overwrite), and a tiled run records its tiles and validates whole images."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from cnnlab.commands.train import fit
from cnnlab.errors import CnnlabError
from cnnlab.runs.reader import read_metrics
from conftest import TINY, cnnlab


@pytest.mark.slow
def test_a_run_folder_is_not_overwritten_by_accident(tiny_run, tiny_data, tmp_path):
    run = tmp_path / "run1"
    shutil.copytree(tiny_run.run_dir, run)
    (run / "eval_test.json").write_text("{}")  # an old evaluation the new run must not sit next to
    (run / "notes.txt").write_text("mine")  # the user's own file
    before = (run / "best.safetensors").read_bytes()
    with pytest.raises(CnnlabError, match=r"already holds a run; continue it with `cnnlab train --resume .*run1`, "
                                          r"replace it with --overwrite"):
        fit(data=str(tiny_data), epochs=1, out=str(run), **TINY)
    assert (run / "best.safetensors").read_bytes() == before and (run / "eval_test.json").exists()
    result = cnnlab("train", "--data", tiny_data, "--out", run, "--epochs", "1")
    assert result.returncode == 2 and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    fit(data=str(tiny_data), epochs=1, out=str(run), overwrite=True, **TINY)
    assert not (run / "eval_test.json").exists()  # every file of the old run is gone
    assert (run / "notes.txt").read_text() == "mine"  # what is not a run file is left alone
    assert [row["epoch"] for row in read_metrics(run)] == [1]


def test_the_run_records_tiles_and_validates_whole_images(tiled_run):
    run = tiled_run.run_dir
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocessing"]["tile"] == 48 and meta["preprocessing"]["scale"] == 0.5
    assert meta["img_size"] == 48
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["tile"] == 48 and config["img_size"] == 48
    evaluation = json.loads((run / "eval_val.json").read_text())
    assert evaluation["images"] == 4  # 2 val images per class, scored per image, not per tile
    assert "top_losses_gradcam" in evaluation["files"] and (run / evaluation["files"]["top_losses_gradcam"]).is_file()
