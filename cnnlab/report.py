"""The run report: one self-contained HTML page, RUN/report.html, showing everything a run folder holds.

Built only from the run folder's files (config.yaml, dataset.json, model.json, metrics.csv, diagnosis.json,
eval_<split>.json and the PNGs next to them), so `cnnlab report RUN` can rebuild it anywhere. The page is
self-contained: images are embedded as base64 data: URIs, the CSS is inline, there is no JavaScript, and a
Content-Security-Policy forbids loading anything else, so it can be mailed or archived as one file. Every
piece of text is html.escape'd (class names and paths come from the user's folders).

`train` writes the report (finish_run), `eval` rewrites it with the evaluation sections filled in.
"""

from __future__ import annotations

import base64
import html
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cnnlab.diagnosis import Diagnosis, diagnose
from cnnlab.errors import CnnlabError
from cnnlab.images import image_size
from cnnlab.runfolder import read_json, read_metrics, write_json, write_text

if TYPE_CHECKING:  # train imports this module, so its types are for annotations only
    from cnnlab.data import DatasetSplits
    from cnnlab.train import TrainResult

# Every section of the page in page order, id -> its link in the navigation bar; each is <section id> with an <h2>.
SECTIONS = {"overview": "Overview", "verdict": "Verdict", "curves": "Learning curves", "confusion": "Confusion",
            "per-class": "Per class", "top-losses": "Top losses", "calibration": "Calibration",
            "augmentation": "Augmentation", "dataset": "Dataset", "model": "Model", "config": "Configuration"}
SECTION_IDS = tuple(SECTIONS)
SIZE_SAMPLE = 200  # image headers read for the size summary: enough for min/median/max, fast on any folder
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VERDICT_NAMES = {"good_fit": "Good fit", "overfitting": "Overfitting", "underfitting": "Underfitting",
                 "plateau": "Plateau", "diverging": "Diverging", "too_few_val": "Too few validation images"}


# --- entry points ---------------------------------------------------------------------------------------------
def finish_run(result: TrainResult, splits: DatasetSplits, verbose: bool = True) -> Diagnosis:
    """End of training: the verdict (diagnosis.json, result.extras), image sizes (dataset.json), report.html."""
    run_dir = Path(result.run_dir)
    diagnosis = diagnose(result.history, val_size=len(splits.splits.get("val", [])), num_classes=len(splits.classes))
    write_json(run_dir / "diagnosis.json", diagnosis.to_dict())
    result.extras["diagnosis"] = diagnosis
    dataset = _load_json(run_dir / "dataset.json") or {}
    dataset["image_sizes"] = image_sizes([sample.path for samples in splits.splits.values() for sample in samples])
    write_json(run_dir / "dataset.json", dataset)
    result.extras["report"] = write_report(run_dir)
    if verbose:
        print(diagnosis.describe(), file=sys.stderr, flush=True)
    return diagnosis


def write_report(run_dir: str | os.PathLike) -> Path:
    """Build RUN/report.html from the run folder's files; returns its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() and not (run_dir / "model.json").is_file():
        raise CnnlabError(f"{run_dir} is not a cnnlab run folder (no config.yaml or model.json); "
                          "give the --out folder of a `cnnlab train` run")
    path = run_dir / "report.html"
    write_text(path, build_report(run_dir))
    return path


def image_sizes(paths: list[str], sample: int = SIZE_SAMPLE) -> dict:
    """Width, height and megapixels (min, median, max) from the headers of up to `sample` evenly spread files."""
    chosen = list(paths)[::max(1, math.ceil(len(paths) / sample))] if paths else []
    widths, heights, unreadable = [], [], 0
    for path in chosen:
        try:
            # header only, nothing decoded: no pixel cap needed, so over-cap images are reported too
            width, height = image_size(path, max_pixels=2**62)
        except CnnlabError:
            unreadable += 1
            continue
        widths.append(width)
        heights.append(height)
    summary: dict[str, Any] = {"sampled": len(chosen), "of": len(paths), "unreadable": unreadable}
    if widths:
        megapixels = [w * h / 1e6 for w, h in zip(widths, heights)]
        summary |= {name: {"min": min(v), "median": float(statistics.median(v)), "max": max(v)}
                    for name, v in (("width", widths), ("height", heights), ("megapixels", megapixels))}
    return summary


def build_report(run_dir: str | os.PathLike) -> str:
    """The report's HTML text."""
    run = _RunFiles.read(Path(run_dir))
    sections = [_overview(run), _verdict(run), _curves(run), _confusion(run), _per_class(run), _top_losses(run),
                _calibration(run), _augmentation(run), _dataset(run), _model(run), _config(run)]
    nav = " ".join(f'<a href="#{id_}">{_e(SECTIONS[id_])}</a>' for id_, _, _ in sections)
    body = "\n".join(f'<section id="{id_}">\n<h2>{_e(title)}</h2>\n{content}\n</section>'
                     for id_, title, content in sections)
    title = f"cnnlab report: {run.run_dir.name}"
    generated = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<p class="kicker">cnnlab run report</p>
<h1>{_e(run.run_dir.name)}</h1>
<p class="muted">{_e(str(run.run_dir))}</p>
<nav>{nav}</nav>
</header>
{body}
<footer>Generated by cnnlab on {_e(generated)}. Rebuild with <code>cnnlab report {_e(str(run.run_dir))}</code>.</footer>
</main>
</body>
</html>
"""


# --- what the run folder holds ----------------------------------------------------------------------------------
@dataclass
class _RunFiles:
    """The run folder's files, read once; anything missing or broken is None or empty."""

    run_dir: Path
    config: dict  # config.yaml
    model: dict  # model.json
    classes: list[str]  # classes.json
    dataset: dict  # dataset.json
    history: list[dict]  # metrics.csv
    diagnosis: dict | None  # diagnosis.json, or judged now from metrics.csv
    evaluations: list[dict]  # eval_<split>.json, val first, then test

    @classmethod
    def read(cls, run_dir: Path) -> _RunFiles:
        config = _load_yaml(run_dir / "config.yaml") or {}
        model = _load_json(run_dir / "model.json") or {}
        classes = _load_json(run_dir / "classes.json") or model.get("classes") or []
        dataset = _load_json(run_dir / "dataset.json") or {}
        try:
            history = read_metrics(run_dir)
        except (OSError, ValueError, KeyError):
            history = []
        diagnosis = _load_json(run_dir / "diagnosis.json")
        if not isinstance(diagnosis, dict) and history:
            # older runs, or one stopped before the end: judge the curves now
            val_size = sum(dataset.get("counts", {}).get("val", {}).values()) or None
            diagnosis = diagnose(history, val_size=val_size, num_classes=len(classes) or None).to_dict()
        order = {"val": 0, "test": 1}
        evaluations = [e for e in (_load_json(p) for p in run_dir.glob("eval_*.json")) if isinstance(e, dict)]
        evaluations.sort(key=lambda e: (order.get(e.get("split"), 2), str(e.get("split"))))
        return cls(run_dir, config, model, list(classes), dataset, history,
                   diagnosis if isinstance(diagnosis, dict) else None, evaluations)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except CnnlabError:
        return None


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


# --- HTML pieces ------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_classes: list[str] | None = None) -> str:
    """A table from already-escaped cell HTML; columns in `numeric` are right-aligned."""
    def cell(tag: str, i: int, text: str) -> str:
        return f'<{tag} class="num">{text}</{tag}>' if i in numeric else f"<{tag}>{text}</{tag}>"
    head = "".join(cell("th", i, _e(h)) for i, h in enumerate(headers))
    body = []
    for k, row in enumerate(rows):
        css = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        body.append(f"<tr{css}>" + "".join(cell("td", i, text) for i, text in enumerate(row)) + "</tr>")
    # wrapped so that a wide table (a long layer list, long file names) scrolls instead of widening the page
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _figure(path: Path, alt: str, caption: str = "") -> str:
    """A PNG from the run folder embedded as a data: URI (never a link), or a note that it is missing."""
    try:
        data = path.read_bytes()  # the bytes are embedded as they are, not decoded
    except OSError:
        data = b""
    if not data.startswith(PNG_SIGNATURE):
        return f'<p class="missing">{_e(path.name)} is missing from the run folder.</p>'
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    caption_html = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{_e(alt)}">{caption_html}</figure>'


def _eval_figure(run: _RunFiles, evaluation: dict, key: str, alt: str, caption: str) -> str:
    """The PNG eval_<split>.json lists under files[key] (default <key>_<split>.png), from the run folder only."""
    split = evaluation.get("split", "?")
    name = Path(str(evaluation.get("files", {}).get(key, f"{key}_{split}.png"))).name
    return _figure(run.run_dir / name, f"{alt}, {split}", caption)


def _missing_eval(run: _RunFiles) -> str:
    return (f'<p class="missing">Not evaluated yet: run <code>cnnlab eval {_e(str(run.run_dir))}</code> '
            "to fill this section.</p>")


def _split_heading(evaluation: dict) -> str:
    return (f"<h3>{_e(evaluation.get('split', '?'))} split: {_e(evaluation.get('images', '?'))} images, "
            f"{_e(evaluation.get('weights', 'best'))} weights</h3>")


# --- sections: each returns (id, heading, inner HTML) -------------------------------------------------------------
def _overview(run: _RunFiles) -> tuple[str, str, str]:
    facts = [("model", run.model.get("model") or run.config.get("model", "?")),
             ("image size", f"{run.model.get('img_size') or run.config.get('img_size', '?')} px"),
             ("classes", len(run.classes))]
    counts = run.dataset.get("counts", {})
    for split in counts:
        facts.append((f"{split} images", f"{sum(counts[split].values()):,}"))
    if run.history:
        facts.append(("epochs", f"{run.history[-1]['epoch']} of {run.config.get('epochs', '?')}"))
        best = min(run.history, key=lambda row: row["val_loss"] if math.isfinite(row["val_loss"]) else math.inf)
        facts += [("best epoch", best["epoch"]), ("best val accuracy", _pct(best["val_acc"])),
                  ("best val loss", _num(best["val_loss"]))]
    for evaluation in run.evaluations:
        facts.append((f"{evaluation.get('split')} accuracy (eval)", _pct(evaluation.get("accuracy"))))
    cards = "".join(f'<div class="fact"><span>{_e(name)}</span><b>{_e(value)}</b></div>' for name, value in facts)
    verdict = ""
    if run.diagnosis:
        value = run.diagnosis.get("verdict", "")
        verdict = (f'<p><span class="badge verdict-{_e(value)}">{_e(VERDICT_NAMES.get(value, value))}</span> '
                   f'{_e(run.diagnosis.get("headline", ""))}</p>')
    return "overview", "Overview", f'{verdict}<div class="facts">{cards}</div>'


def _verdict(run: _RunFiles) -> tuple[str, str, str]:
    title = "Is it well trained?"
    if not run.diagnosis:
        return "verdict", title, '<p class="missing">No finished epoch in metrics.csv yet, so no verdict.</p>'
    d = run.diagnosis
    value = str(d.get("verdict", ""))
    evidence = "".join(f"<li>{_e(item)}</li>" for item in d.get("evidence", []))
    advice = "".join(f"<li>{_e(item)}</li>" for item in d.get("advice", []))
    parts = [f'<div class="verdict verdict-{_e(value)}">',
             f'<p class="verdict-name">{_e(VERDICT_NAMES.get(value, value))}</p>',
             f'<p class="headline">{_e(d.get("headline", ""))}</p>']
    if evidence:
        parts.append(f"<h4>Evidence</h4><ul>{evidence}</ul>")
    if advice:
        parts.append(f"<h4>What to try</h4><ol>{advice}</ol>")
    parts.append("</div>")
    parts.append('<p class="muted">Read from the learning curves (metrics.csv) by cnnlab.diagnose.</p>')
    return "verdict", title, "".join(parts)


def _curves(run: _RunFiles) -> tuple[str, str, str]:
    figure = _figure(run.run_dir / "learning_curves.png", "learning curves",
                     "Loss and accuracy per epoch on the training and validation images; the dashed line marks "
                     "the best epoch (lowest validation loss), whose weights best.safetensors keeps.")
    if not run.history:
        return "curves", "Learning curves", figure
    best = (run.diagnosis or {}).get("best_epoch")
    rows = [[_e(r["epoch"]), _e(f"{r['lr']:.3g}"), _num(r["train_loss"]), _pct(r["train_acc"]),
             _num(r["val_loss"]), _pct(r["val_acc"]), _num(r["seconds"], 1)] for r in run.history]
    table = _table(["epoch", "learning rate", "train loss", "train acc", "val loss", "val acc", "seconds"], rows,
                   numeric=set(range(7)), row_classes=["best" if r["epoch"] == best else "" for r in run.history])
    return "curves", "Learning curves", (f"{figure}<details><summary>Numbers per epoch ({len(rows)} epochs; "
                                         f"best epoch highlighted)</summary>{table}</details>")


def _confusion(run: _RunFiles) -> tuple[str, str, str]:
    title = "Confusion matrix and most-confused classes"
    if not run.evaluations:
        return "confusion", title, _missing_eval(run)
    parts = []
    for ev in run.evaluations:
        parts.append(_split_heading(ev))
        parts.append(_eval_figure(run, ev, "confusion_matrix", "confusion matrix",
                                  "Rows: true class, columns: predicted class. Left: image counts; right: each row "
                                  "divided by its total, so the diagonal is the recall of each class."))
        pairs = ev.get("most_confused", [])
        if pairs:
            rows = [[_e(p["true"]), _e(p["predicted"]), _e(p["count"]), _pct(p["share_of_true"]),
                     _pct(p["share_of_errors"])] for p in pairs]
            parts.append("<h4>Most-confused pairs</h4>" + _table(
                ["true class", "predicted as", "images", "share of the true class", "share of all errors"],
                rows, numeric={2, 3, 4}))
        elif "most_confused" in ev:
            parts.append("<p>No mistakes on this split: every image was classified correctly.</p>")
    return "confusion", title, "".join(parts)


def _per_class(run: _RunFiles) -> tuple[str, str, str]:
    title = "Per-class precision, recall and F1"
    if not run.evaluations:
        return "per-class", title, _missing_eval(run)
    parts = []
    for ev in run.evaluations:
        parts.append(_split_heading(ev))
        parts.append(f"<p>Accuracy <b>{_pct(ev.get('accuracy'))}</b>, loss {_num(ev.get('loss'))}, "
                     f"macro F1 {_num(ev.get('macro_f1'), 3)}.</p>")
        rows = [[_e(r["class"]), _num(r["precision"], 3), _num(r["recall"], 3), _num(r["f1"], 3),
                 _e(r["support"])] for r in ev.get("per_class", [])]
        parts.append(_table(["class", "precision", "recall", "F1", "support"], rows, numeric={1, 2, 3, 4}))
    parts.append('<p class="muted">Precision: of the images predicted as the class, the share that are. '
                 "Recall: of the images of the class, the share found. F1: their harmonic mean. "
                 "Support: images of the class.</p>")
    return "per-class", title, "".join(parts)


def _top_losses(run: _RunFiles) -> tuple[str, str, str]:
    title = "Top losses: the images it gets most wrong"
    if not run.evaluations:
        return "top-losses", title, _missing_eval(run)
    size = run.model.get("img_size", "?")
    parts = []
    for ev in run.evaluations:
        parts.append(_split_heading(ev))
        parts.append(_eval_figure(run, ev, "top_losses", "top losses",
                                  f"Shown as the network saw them: resized and centre-cropped to {size} px. Each "
                                  "title: file, true class (its probability), predicted class (its probability)."))
        rows = [[_e(k + 1), _e(Path(r["path"]).name), _e(r["true"]), _num(r["probability_true"], 3),
                 _e(r["predicted"]), _num(r["probability_predicted"], 3), _num(r["loss"], 3)]
                for k, r in enumerate(ev.get("top_losses", []))]
        if rows:
            parts.append("<details><summary>As a table, with file names</summary>" + _table(
                ["#", "file", "true class", "p(true)", "predicted", "p(predicted)", "loss"], rows,
                numeric={0, 3, 5, 6}) + "</details>")
    parts.append('<p class="muted">Look for wrong labels, images that are ambiguous even to you, and what the '
                 "mistakes have in common (background, size, lighting): each suggests a fix.</p>")
    return "top-losses", title, "".join(parts)


def _calibration(run: _RunFiles) -> tuple[str, str, str]:
    title = "Calibration: can the probabilities be trusted?"
    if not run.evaluations:
        return "calibration", title, _missing_eval(run)
    parts = []
    for ev in run.evaluations:
        parts.append(_split_heading(ev))
        cal = ev.get("calibration") or {}
        if "ece" in cal:
            gap = cal["mean_confidence"] - cal["accuracy"]
            lean = "over-confident" if gap > 0 else "under-confident" if gap < 0 else "exactly as confident as accurate"
            parts.append(f"<p>Expected calibration error (ECE, {len(cal.get('bins', []))} bins): "
                         f"<b>{_num(cal['ece'], 3)}</b>. Mean confidence {_pct(cal['mean_confidence'])} against "
                         f"accuracy {_pct(cal['accuracy'])}: on average {lean}.</p>")
        parts.append(_eval_figure(run, ev, "reliability", "reliability diagram",
                                  "Bars: accuracy of the images in each confidence bin; dashed line: perfect "
                                  "calibration (a network 80% sure is right 80% of the time). Below: images per bin."))
    parts.append('<p class="muted">ECE is the average gap between confidence and accuracy, weighted by the '
                 "images in each bin: 0 is perfect.</p>")
    return "calibration", title, "".join(parts)


def _augmentation(run: _RunFiles) -> tuple[str, str, str]:
    preset = run.config.get("augment", "?")
    intro = f"<p>Augmentation preset: <code>{_e(preset)}</code>.</p>"
    path = run.run_dir / "augment_preview.png"
    if path.is_file():
        body = _figure(path, "augmentation preview", "Training images as the augmentation presents them.")
    else:
        command = (f"cnnlab augment-preview --data {run.config.get('data', 'DATA')} --augment {preset} "
                   f"--img-size {run.config.get('img_size', 128)} --run {run.run_dir}")
        body = ('<p class="missing">No augmentation preview in this run folder yet: run '
                f"<code>{_e(command)}</code> to see what the augmentation does to the training images.</p>")
    return "augmentation", "Data augmentation", intro + body


def _dataset(run: _RunFiles) -> tuple[str, str, str]:
    d = run.dataset
    parts = [f"<p>Folder <code>{_e(d.get('root', run.config.get('data', '?')))}</code>; split: "
             f"{_e(d.get('split_source', '?'))}; {len(run.classes)} classes.</p>"]
    counts = d.get("counts", {})
    if counts:
        splits = list(counts)
        rows = [[_e(name)] + [_num(counts[s].get(name, 0)) for s in splits]
                + [_num(sum(counts[s].get(name, 0) for s in splits))] for name in run.classes]
        rows.append(["<b>total</b>"] + [f"<b>{_num(sum(counts[s].values()))}</b>" for s in splits]
                    + [f"<b>{_num(sum(sum(c.values()) for c in counts.values()))}</b>"])
        parts.append(_table(["class", *splits, "all"], rows, numeric=set(range(1, len(splits) + 2))))
    if d.get("ignored_files"):
        parts.append(f"<p>{_num(d['ignored_files'])} hidden or non-image files were ignored.</p>")
    parts.append(_sizes_html(run))
    return "dataset", "Dataset", "".join(parts)


def _sizes_html(run: _RunFiles) -> str:
    """Image sizes recorded at training time, else read from the data folder if it is still reachable."""
    sizes = run.dataset.get("image_sizes")
    note = ""
    if not sizes:
        root = run.dataset.get("root") or run.config.get("data")
        try:
            from cnnlab.data import find_images

            sizes = image_sizes(find_images(root)) if root and Path(root).is_dir() else None
            note = " (read now from the data folder: not recorded at training time)"
        except (CnnlabError, OSError):
            sizes = None
        if not sizes:
            return (f'<p class="missing">Image sizes were not recorded and the data folder '
                    f"<code>{_e(root)}</code> is not reachable from here.</p>")
    if "width" not in sizes:
        return f'<p class="missing">None of the {_e(sizes.get("sampled", 0))} sampled image headers could be read.</p>'
    def fmt(key: str, value: float) -> str:
        return f"{value:.3g}" if key == "megapixels" else f"{value:,.0f}"
    rows = [[_e(name)] + [fmt(key, sizes[key][stat]) for stat in ("min", "median", "max")]
            for key, name in (("width", "width (px)"), ("height", "height (px)"), ("megapixels", "megapixels"))]
    caption = (f"<p>Image sizes from the headers of {_e(sizes['sampled'])} of {_e(sizes.get('of', '?'))} files"
               f"{_e(note)}; the network sees {_e(run.model.get('img_size', '?'))} px crops.</p>")
    return caption + _table(["", "min", "median", "max"], rows, numeric={1, 2, 3})


def _model(run: _RunFiles) -> tuple[str, str, str]:
    m = run.model
    name, options = m.get("model", run.config.get("model", "?")), m.get("model_options", {})
    size = m.get("img_size") or run.config.get("img_size")
    parts = [f"<p><b>{_e(name)}</b> with options <code>{_e(_value(options))}</code>, input {_e(size)} px, "
             f"{len(run.classes)} outputs.</p>"]
    summary = _layer_summary(name, options, len(run.classes), size)
    if summary is not None:
        parts.append(_layer_table(summary.rows))
        parts.append(f"<p>Parameters: <b>{summary.total_params:,}</b>; multiply-accumulates per image: "
                     f"<b>{summary.total_macs:,}</b> (for a {_e(size)} x {_e(size)} input).</p>")
    else:
        total = _parameter_count(name, options, len(run.classes))
        parts.append(f"<p>Parameters: <b>{_e(f'{total:,}' if total is not None else 'unknown')}</b>.</p>")
    preprocessing = m.get("preprocessing")
    if preprocessing:
        parts.append("<h4>Preprocessing (stored with the weights)</h4>" + _table(
            ["setting", "value"], [[_e(k), f"<code>{_e(_value(v))}</code>"] for k, v in preprocessing.items()]))
    return "model", "Model", "".join(parts)


def _layer_summary(name: str, options: dict, num_classes: int, img_size: int | None):
    """cnnlab.summary's ModelSummary for the run's input size, or None (module absent, or it cannot)."""
    try:
        from cnnlab.model_summary import summarize_model
    except ImportError:  # the summary module is optional for the report
        return None
    if not img_size:
        return None
    try:
        return summarize_model(name, (3, int(img_size), int(img_size)), num_classes, **options)
    except (CnnlabError, TypeError, ValueError, RuntimeError, NotImplementedError):
        return None


def _parameter_count(name: str, options: dict, num_classes: int) -> int | None:
    """Parameters of the run's model, rebuilt with random weights (only the shapes matter)."""
    try:
        from cnnlab.models import create_model

        return sum(p.numel() for p in create_model(name, num_classes, **options).parameters())
    except (CnnlabError, TypeError, ValueError, RuntimeError):
        return None


LAYER_COLUMNS = (("index", "#"), ("name", "layer"), ("type", "type"), ("kernel_size", "kernel"),
                 ("stride", "stride"), ("output_shape", "output (C \u00d7 H \u00d7 W)"), ("params", "parameters"),
                 ("macs", "MACs"), ("receptive_field", "receptive field"))


def _layer_table(rows: list[dict]) -> str:
    """One row per layer; tables longer than 30 rows fold away behind a <details>."""
    def cell(key: str, value: Any) -> str:
        if key == "receptive_field" and value is None:
            return "all"  # after global pooling every output sees the whole image
        if isinstance(value, (list, tuple)):
            return _e(" \u00d7 ".join(str(v) for v in value))
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "" if value is None else _e(value)
    columns = [(key, title) for key, title in LAYER_COLUMNS if rows and key in rows[0]]
    table = _table([title for _, title in columns], [[cell(key, row.get(key)) for key, _ in columns] for row in rows],
                   numeric={i for i, (key, _) in enumerate(columns) if key in ("index", "params", "macs")},
                   row_classes=["flagged" if row.get("flagged") else "" for row in rows])
    note = ""
    if any(row.get("flagged") for row in rows):
        note = ('<p class="muted">Highlighted layers never read the last rows or columns of their input: '
                "(H + 2 padding - kernel) / stride is not a whole number.</p>")
    if len(rows) > 30:
        return f"<details><summary>Layer table ({len(rows)} layers)</summary>{table}</details>{note}"
    return table + note


def _value(value: Any) -> str:
    """A config value as text: strings as they are, everything else as one line of YAML."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return yaml.safe_dump(value, default_flow_style=True).splitlines()[0]  # null, true, 0.002
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()


def _config(run: _RunFiles) -> tuple[str, str, str]:
    if not run.config:
        return "config", "Configuration", '<p class="missing">config.yaml is missing.</p>'
    rows = [[_e(key), f"<code>{_e(_value(value))}</code>"] for key, value in run.config.items()]
    return "config", "Configuration", ('<p class="muted">Every training option, resolved (config.yaml).</p>'
                                       + _table(["option", "value"], rows))


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f4; color: var(--fg);
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 40px 48px; background: #fff; min-height: 100vh; }
header { border-bottom: 1px solid var(--line); padding-bottom: 12px; }
.kicker { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: .75rem; color: var(--muted); }
h1 { font-size: 1.8rem; margin: .1em 0 .1em; }
h2 { font-size: 1.35rem; margin: 1.8em 0 .6em; padding-bottom: .25em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.4em 0 .5em; }
h4 { font-size: .95rem; margin: 1em 0 .3em; }
nav { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: .9rem; }
nav a, details summary { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
.muted, figcaption { color: var(--muted); font-size: .88rem; }
.missing { color: var(--muted); font-style: italic; background: var(--soft); padding: 10px 14px; border-radius: 6px; }
code { background: var(--soft); padding: 1px 5px; border-radius: 4px; font-size: .88em; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .9rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
.num { text-align: right; }
.scroll { overflow-x: auto; }
tr.best td, tr.flagged td { background: #fff8c5; }
figure { margin: 1em 0; }
img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
details { margin: .5em 0 1em; }
details summary { cursor: pointer; font-size: .9rem; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; margin-top: 10px; }
.fact { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.fact span { display: block; color: var(--muted); font-size: .78rem; }
.fact b { font-size: 1.1rem; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; font-weight: 600; font-size: .85rem;
         border: 1px solid; margin-right: 6px; }
.verdict { border: 1px solid; border-left-width: 6px; border-radius: 6px; padding: 6px 20px 10px; }
.verdict-name { font-weight: 700; font-size: 1.1rem; margin: .5em 0 0; }
.headline { font-size: 1.02rem; margin: .3em 0 .6em; }
.verdict ul, .verdict ol { margin: .2em 0 .6em; padding-left: 1.4em; }
.verdict-good_fit { border-color: #1a7f37; background: #dafbe1; }
.verdict-overfitting { border-color: #bc4c00; background: #fff1e5; }
.verdict-underfitting { border-color: #0969da; background: #ddf4ff; }
.verdict-plateau { border-color: #9a6700; background: #fff8c5; }
.verdict-diverging { border-color: #cf222e; background: #ffebe9; }
.verdict-too_few_val { border-color: #8250df; background: #fbefff; }
footer { margin-top: 3em; padding-top: 10px; border-top: 1px solid var(--line); color: var(--muted);
         font-size: .82rem; }
"""
