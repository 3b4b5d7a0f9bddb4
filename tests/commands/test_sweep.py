"""`cnnlab sweep`: the recommendation rule on constructed numbers, a real sweep on tiny data with budgets of
seconds, its page (every section, self-contained, in a real browser), and one clear line for what cannot work."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import pytest
import yaml

from cnnlab.commands.sweep import RULE, parse_resolutions, recommend, sweep
from cnnlab.errors import CnnlabError
from cnnlab.runs.sweep_page import SECTION_IDS, write_sweep_page

# sweep trains a run per size (~20 s of set-up): the whole module is in the slow tier
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

TINY = {"model": "simple_cnn", "model_options": {"widths": [8, 16]}, "batch_size": 8, "workers": 0, "cache": "off"}


# --- the rule ----------------------------------------------------------------------------------------------------------
def test_the_smallest_size_within_the_best_ones_interval_is_recommended():
    sizes = [64, 96, 128, 192]
    # 128 is best; 96's interval reaches into 128's (0.74 >= 0.72); 64's does not (0.70 < 0.72)
    accuracies = [0.60, 0.66, 0.80, 0.78]
    intervals = [(0.50, 0.70), (0.57, 0.74), (0.72, 0.87), (0.70, 0.85)]
    assert recommend(sizes, accuracies, intervals) == (2, 1)
    # 64's interval touches the best one's at its lower end: that is an overlap
    assert recommend(sizes, accuracies, [(0.50, 0.72)] + intervals[1:]) == (2, 0)
    # no other interval reaches the best one's: the best is recommended
    assert recommend(sizes, [0.3, 0.4, 0.9, 0.5], [(0.2, 0.4), (0.3, 0.5), (0.85, 0.95), (0.4, 0.6)]) == (2, 2)
    # a tie in accuracy goes to the smaller size; the order of the lists does not matter
    assert recommend([128, 64], [0.8, 0.8], [(0.7, 0.9), (0.7, 0.9)]) == (1, 1)
    assert recommend([192, 64, 128], [0.78, 0.60, 0.80], [(0.70, 0.85), (0.50, 0.70), (0.72, 0.87)]) == (2, 2)


def test_sizes_are_parsed_sorted_and_checked():
    assert parse_resolutions("128, 64,96,64", int, "--img-size") == [64, 96, 128]
    assert parse_resolutions("0.5,0.25", float, "--scale") == [0.25, 0.5]
    with pytest.raises(CnnlabError, match="--img-size '64,big' is not a comma-separated list of sizes"):
        parse_resolutions("64,big", int, "--img-size")
    with pytest.raises(CnnlabError, match="a sweep needs two or more different values"):
        parse_resolutions("64", int, "--img-size")


# --- a real sweep ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(tiny_data, tmp_path_factory):
    """simple_cnn at 32 and 48 px, 10 seconds each (6 s was too short on a loaded machine, where setting up and
    validating take ~3 s each)."""
    return sweep(str(tiny_data), "32,48", time="10s", out=tmp_path_factory.mktemp("sweep") / "out", verbose=False,
                 **TINY)


def test_every_size_trains_for_the_same_budget_into_its_own_run(tiny_sweep):
    out = tiny_sweep.out_dir
    assert [row.resolution for row in tiny_sweep.rows] == [32, 48]
    for row in tiny_sweep.rows:
        run = out / f"size-{row.resolution}"
        assert row.run_dir == str(run) and (run / "report.html").is_file() and (run / "best.safetensors").is_file()
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["img_size"] == row.resolution and config["time"] == "10s" and config["model"] == "simple_cnn"
        diagnosis = json.loads((run / "diagnosis.json").read_text())
        assert tuple(diagnosis["val_acc_interval"]) == pytest.approx(row.interval)  # the run's own interval
        assert diagnosis["verdict"] == row.verdict
        metrics = (run / "metrics.csv").read_text().splitlines()
        assert row.epochs == len(metrics) - 1 == len(row.curve)
        assert row.curve[-1][0] == pytest.approx(row.train_seconds, abs=0.02)
    best, recommended = recommend([32, 48], [r.best_val_acc for r in tiny_sweep.rows],
                                  [r.interval for r in tiny_sweep.rows])
    assert (tiny_sweep.best, tiny_sweep.recommended) == (best, recommended)


def test_the_sweep_writes_json_markdown_plots_and_the_page(tiny_sweep):
    out = tiny_sweep.out_dir
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["rule"] == RULE and saved["recommended"] == tiny_sweep.recommended
    assert [row["resolution"] for row in saved["rows"]] == [32, 48] and saved["settings"]["time"] == "10s"
    markdown = (out / "sweep.md").read_text()
    assert "| size | best val accuracy | 95% interval | epochs | training time | verdict |" in markdown
    assert f"Rule: {RULE}." in markdown
    for name in ("sweep_size.png", "sweep_time.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    text = (out / "sweep.html").read_text()
    ids = re.findall(r'<section id="([^"]+)">\s*<h2>[^<]+</h2>', text)
    assert ids == list(SECTION_IDS)
    chosen = tiny_sweep.rows[tiny_sweep.recommended]
    assert f"Recommended: {chosen.resolution} px</p>" in text and "The recommendation is the smallest size whose 95%" \
        in text
    # self-contained: the two plots as data: URIs, no script, nothing loaded from elsewhere
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1]) == (out / "sweep_size.png").read_bytes()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "Content-Security-Policy" in text


def test_the_page_is_built_from_sweep_json_only(tiny_sweep, tmp_path):
    import shutil

    out = shutil.copytree(tiny_sweep.out_dir, tmp_path / "copy <b>")
    saved = json.loads((out / "sweep.json").read_text())
    saved["rows"][0]["headline"] = "<script>alert(1)</script> a headline only the file has"
    (out / "sweep.json").write_text(json.dumps(saved))
    (out / "sweep_time.png").unlink()
    text = write_sweep_page(out).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a headline only the file has" in text and "<script>" not in text
    assert "copy &lt;b&gt;" in text
    assert "sweep_time.png is missing from the sweep folder" in text
    with pytest.raises(CnnlabError, match="holds no sweep.json"):
        write_sweep_page(tmp_path)


def test_the_sweep_page_renders_in_headless_chromium(tiny_sweep, chromium):
    result = chromium.check(tiny_sweep.out_dir / "sweep.html")
    assert result["problems"] == [] and result["console"] == [], (result["problems"], result["console"])
    assert [s["id"] for s in result["sections"]] == list(SECTION_IDS)
    assert all(s["heading"] and s["height"] > 0 for s in result["sections"]), result["sections"]
    assert len(result["images"]) == 2
    for image in result["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
        assert 0 < image["shown"] <= 1100, image
    assert not result["overflow"], "the page is wider than the window"
    print(f"sweep page screenshot: {chromium.screenshot(tiny_sweep.out_dir / 'sweep.html', 2800)}")


# --- tiled: pixel scales at one tile size -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiled_sweep_compares_scales(tmp_path):
    from cnnlab.data.synth import synthesize

    root = tmp_path / "objects"
    synthesize(root, classes=2, per_class=4, size=512, seed=0, val_fraction=0.5, kind="objects")
    result = sweep(str(root), tile=48, scales="0.125,0.25", time="6s", out=tmp_path / "out", verbose=False,
                   **TINY | {"model_options": {"widths": [8, 16, 32]}})
    assert [row.resolution for row in result.rows] == [0.125, 0.25] and all(r.img_size == 48 for r in result.rows)
    assert (tmp_path / "out" / "scale-0.125" / "report.html").is_file()
    config = yaml.safe_load((tmp_path / "out" / "scale-0.25" / "config.yaml").read_text())
    assert config["tile"] == 48 and config["scale"] == 0.25
    assert "| scale 0.125" in result.describe() and "pixel scale" in (tmp_path / "out" / "sweep.html").read_text()
    # a scale at which the images do not hold a tile fails before any training
    with pytest.raises(CnnlabError, match="tile"):
        sweep(str(root), tile=48, scales="0.05,0.25", time="6s", out=tmp_path / "small", verbose=False, **TINY)
    assert not (tmp_path / "small").exists()


# --- one clear line ----------------------------------------------------------------------------------------------------------
def test_what_cannot_work_fails_before_any_training(tiny_data, tmp_path):
    with pytest.raises(CnnlabError, match=r"^--img-size 16 is below the 32 px that model 'resnet9' needs \(it halves "
                                          r"the image 5 times\); sweep sizes of 32 px or more$"):
        sweep(str(tiny_data), "16,64", time="10s", out=tmp_path / "a", verbose=False)
    with pytest.raises(CnnlabError, match="--tile sweeps pixel scales: give them with --scale"):
        sweep(str(tiny_data), tile=32, time="10s", out=tmp_path / "b", verbose=False)
    with pytest.raises(CnnlabError, match="sweep sets img_size itself"):
        sweep(str(tiny_data), "32,48", img_size=64, out=tmp_path / "c", verbose=False)
    with pytest.raises(CnnlabError, match="--time"):
        sweep(str(tiny_data), "32,48", time="soon", out=tmp_path / "d", verbose=False)
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing trained


def test_the_cli_error_is_one_line(tiny_data, tmp_path):
    result = subprocess.run([sys.executable, "-m", "cnnlab", "sweep", "--data", str(tiny_data), "--img-size", "16,64",
                             "--out", str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: --img-size 16 is below the 32 px that model 'resnet9' needs (it halves the image 5 times); "
                     "sweep sizes of 32 px or more"]
