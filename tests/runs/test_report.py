"""The run report: written by train and eval, self-contained (embedded PNGs, no external URLs), escaped,
degrading gracefully, and rendered by a real headless Chromium without errors."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.runs.diagnosis import Diagnosis, diagnose
from cnnlab.data.images import read_pil
from cnnlab.runs.report import SECTION_IDS, build_report, evaluation_table, write_report
from cnnlab.runs.reader import diagnose_run

EVAL_FILES = ("eval_val.json", "confusion_matrix_val.png", "top_losses_val.png", "reliability_val.png")


class _Page(HTMLParser):
    """Tags, attributes and text of a page, for checks without a browser."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


def _copy_run(run_dir: Path, target: Path, evaluated: bool = True) -> Path:
    """A copy of a run folder to change freely (without the evaluation files unless `evaluated`)."""
    shutil.copytree(run_dir, target)
    if not evaluated:
        for name in EVAL_FILES:
            (target / name).unlink(missing_ok=True)
    return target


# --- written by train and eval --------------------------------------------------------------------------------
def test_train_writes_the_verdict_and_the_report(tiny_run):
    run = tiny_run.run_dir
    classes = json.loads((run / "classes.json").read_text())
    # what diagnose needs: the 12 validation images per class, and what the run had on (conftest's tiny_run)
    inputs = {"val_size": 12, "num_classes": 3, "val_counts": dict.fromkeys(classes, 4), "time_budget": None,
              "augment": "default", "dropout": 0.2, "pretrained": False, "weights": None, "img_size": 32,
              "patience": None}
    expected = diagnose(tiny_run.history, **inputs)
    assert isinstance(tiny_run.diagnosis, Diagnosis) and tiny_run.diagnosis == expected
    written = json.loads((run / "diagnosis.json").read_text())
    assert written == json.loads(json.dumps(expected.to_dict())) | {"inputs": inputs}
    assert (run / "report.html").is_file()
    # every file's header, not a sample: 48 images of 64x64 px, all JPEG
    sizes = json.loads((run / "dataset.json").read_text())["image_sizes"]
    assert sizes["files"] == 48 and sizes["unreadable"] == 0 and sizes["formats"] == {"JPEG": 48}
    assert sizes["width"]["p0"] == sizes["width"]["p100"] == sizes["height"]["p50"] == 64
    assert sum(sizes["megapixel_histogram"]["counts"]) == 48


def test_report_before_eval_asks_for_it(tiny_run, tmp_path):
    run = _copy_run(tiny_run.run_dir, tmp_path / "run", evaluated=False)
    text = write_report(run).read_text(encoding="utf-8")
    assert text.count("Not evaluated yet") == 4  # confusion, per class, top losses, calibration
    assert f"cnnlab eval {run}" in text
    headline = json.loads((run / "diagnosis.json").read_text())["headline"]
    assert html.escape(headline) in text


def test_eval_fills_the_report(tiny_eval):
    text = (tiny_eval.run_dir / "report.html").read_text(encoding="utf-8")
    assert "Not evaluated yet" not in text
    assert 'alt="top losses, val"' in text and 'alt="reliability diagram, val"' in text
    assert f"<b>{tiny_eval.calibration['ece']:.3f}</b>" in text
    for row in tiny_eval.per_class:
        assert f"<td>{row['class']}</td>" in text


# --- in a notebook: the objects render as the report does -----------------------------------------------------------
def test_a_run_in_a_notebook_is_its_report_in_a_frame(tiny_run, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "2026-01-02 03:04")  # the footer's date, the same twice
    frame = tiny_run._repr_html_()
    assert frame.startswith("<iframe ") and frame.endswith("></iframe>") and frame.count("<") == 2  # all escaped
    iframes = _Page(frame).all("iframe")
    assert len(iframes) == 1 and "height: 720px" in iframes[0]["style"]
    # the attribute, unescaped, is the report's own page, byte for byte
    assert iframes[0]["srcdoc"] == build_report(tiny_run.run_dir)
    assert "<title>cnnlab report: tiny</title>" in iframes[0]["srcdoc"]


def test_an_evaluation_in_a_notebook_is_the_reports_per_class_table(tiny_eval):
    page = tiny_eval._repr_html_()
    written = json.loads((tiny_eval.run_dir / "eval_val.json").read_text())
    assert page == evaluation_table(written)  # the report's renderer, on what eval wrote
    assert page in build_report(tiny_eval.run_dir)
    assert f"<h3>val split: {len(tiny_eval.labels)} images, best weights</h3>" in page
    assert f"Accuracy <b>{100 * tiny_eval.accuracy:.1f}%</b>" in page
    rows = re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">([0-9.]+)</td><td class=\"num\">([0-9.]+)</td>"
                      r"<td class=\"num\">([0-9.]+)</td><td class=\"num\">([0-9]+)</td></tr>", page)
    assert rows == [(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                     str(row["support"])) for row in tiny_eval.per_class]


# --- self-contained --------------------------------------------------------------------------------------------
def test_report_is_self_contained_with_every_section(tiny_eval, tmp_path):
    text = (tiny_eval.run_dir / "report.html").read_text(encoding="utf-8")
    page = _Page(text)
    ids = [attrs["id"] for attrs in page.all("section")]
    assert ids == list(SECTION_IDS)
    for section in SECTION_IDS:  # every section has a heading right after its opening tag
        assert re.search(rf'<section id="{section}">\s*<h2>[^<]+</h2>', text), section
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    for attrs in [a for _, a in page.tags]:
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:image/png;base64,", "#")), (key, value[:80])
    assert "http://" not in text and "https://" not in text
    images = page.all("img")
    assert len(images) >= 4  # learning curves, confusion matrix, top losses, reliability diagram
    for k, attrs in enumerate(images):
        data = base64.b64decode(attrs["src"].removeprefix("data:image/png;base64,"), validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        (tmp_path / f"{k}.png").write_bytes(data)
        with read_pil(tmp_path / f"{k}.png") as image:
            assert image.width > 100 and image.height > 100
        assert attrs.get("alt")


def test_class_names_and_paths_are_escaped(tiny_eval, tmp_path):
    run = _copy_run(tiny_eval.run_dir, tmp_path / "run <i>x</i>")
    evil = "<b>x</b>"
    script = "<script>alert(1)</script>"
    classes = [evil, script, "triangle"]
    for name in ("classes.json", "model.json", "dataset.json", "eval_val.json"):
        data = json.loads((run / name).read_text())
        text = json.dumps(data)
        for old, new in zip(["circle", "square"], classes):
            text = text.replace(json.dumps(old), json.dumps(new))
        (run / name).write_text(text)
    assert json.loads((run / "classes.json").read_text()) == classes
    text = write_report(run).read_text(encoding="utf-8")
    assert evil not in text and script not in text and "<i>x</i>" not in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "run &lt;i&gt;x&lt;/i&gt;" in text
    page = _Page(text)
    assert not page.all("script") and not page.all("i")
    assert evil in "".join(page.text)  # shown as text


# --- degrading gracefully ------------------------------------------------------------------------------------------
def test_the_report_renders_the_verdict_training_wrote_and_computes_none(tiny_run, tmp_path):
    run = _copy_run(tiny_run.run_dir, tmp_path / "run", evaluated=False)
    written = json.loads((run / "diagnosis.json").read_text())
    written["headline"] = "a headline only the file has"
    (run / "diagnosis.json").write_text(json.dumps(written))
    assert "a headline only the file has" in write_report(run).read_text(encoding="utf-8")
    (run / "diagnosis.json").unlink()
    assert "No verdict yet: diagnosis.json is written when a run finishes" in write_report(run).read_text(encoding="utf-8")
    # the verdict of a run, from its files, is the call finish() made
    assert diagnose_run(tiny_run.run_dir) == tiny_run.diagnosis


def test_image_sizes_come_from_dataset_json_only(tiny_run, tmp_path):
    run = _copy_run(tiny_run.run_dir, tmp_path / "run", evaluated=False)
    text = write_report(run).read_text(encoding="utf-8")
    assert "Sizes of all 48 files, from their headers; formats: JPEG 48" in text
    assert 'alt="image sizes"' in text
    dataset = json.loads((run / "dataset.json").read_text())
    del dataset["image_sizes"]
    (run / "dataset.json").write_text(json.dumps(dataset))
    text = write_report(run).read_text(encoding="utf-8")
    assert "Image sizes are recorded when a run finishes" in text
    (run / "learning_curves.png").unlink()
    assert "learning_curves.png is missing" in write_report(run).read_text(encoding="utf-8")


def test_augmentation_preview_is_embedded_when_present(tiny_run, tmp_path):
    run = _copy_run(tiny_run.run_dir, tmp_path / "run", evaluated=False)
    # train writes a preview itself; without one the report says how to make it
    (run / "augment_preview.png").unlink(missing_ok=True)
    assert "No augmentation preview in this run folder yet" in write_report(run).read_text(encoding="utf-8")
    shutil.copy(run / "learning_curves.png", run / "augment_preview.png")
    text = write_report(run).read_text(encoding="utf-8")
    assert 'alt="augmentation preview"' in text and "No augmentation preview" not in text


def test_cli_report_rebuilds_it(tiny_run, tmp_path):
    from cnnlab.cli import app

    run = _copy_run(tiny_run.run_dir, tmp_path / "run", evaluated=False)
    (run / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and (run / "report.html").is_file()


def test_report_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match="not a cnnlab run folder"):
        write_report(tmp_path)


# --- in a real browser -------------------------------------------------------------------------------------------
def test_report_renders_in_headless_chromium(tiny_eval, chromium):
    report = tiny_eval.run_dir / "report.html"
    result = chromium.check(report)
    assert result["problems"] == [] and result["console"] == [], (result["problems"], result["console"])
    assert [s["id"] for s in result["sections"]] == list(SECTION_IDS)
    assert all(s["heading"] and s["height"] > 0 for s in result["sections"]), result["sections"]
    assert len(result["images"]) >= 4
    for image in result["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
        assert 0 < image["shown"] <= 1100, image  # scaled into the page column
    assert not result["overflow"], "the page is wider than the window"

    # a full-page screenshot of the real page (no injected script) for a person to look at
    height = min(int(result["height"]) + 20, 16000)
    screenshot = chromium.screenshot(report, height)
    with read_pil(screenshot) as image:
        assert image.size == (1280, height)
        assert image.convert("L").getextrema()[0] < 100  # not a blank page: dark text is there
    print(f"report screenshot: {screenshot}")
