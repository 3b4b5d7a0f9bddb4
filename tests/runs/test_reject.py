"""None of these: the threshold chosen on the validation split (known answers by hand), the risk-coverage curve
(against a brute-force count), and predict, serve, eval and the report applying or showing it; images of classes
the run never saw are answered unknown exactly when their top probability is below the threshold."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cnnlab.commands.evaluate import evaluate
from cnnlab.commands.predict import predict
from cnnlab.data.images import read_at
from cnnlab.data.synth import synthesize
from cnnlab.errors import CnnlabError
from cnnlab.files import read_json
from cnnlab.runs.inference import open_trained
from cnnlab.runs.reject import (TARGET_PRECISION, choose_threshold, read_threshold, resolve_threshold,
                                risk_coverage)
from cnnlab.runs.tables import table_rows
from cnnlab.serve.predictor import UploadPredictor
from cnnlab.training.record import REJECT, RISK_COVERAGE


def top_probability(trained, path) -> float:
    """The image's top probability computed here, image by image: decode, the eval transform, the model, softmax."""
    pre = trained.preprocessing
    with torch.no_grad():
        logits = trained.model(trained.pipeline(pre.eval_transform()(read_at(path, pre.resolution))[None]))[0]
    return float(torch.softmax(logits.float(), 0).max())


# --- the threshold and the curve, by hand ----------------------------------------------------------------------
def test_the_lowest_threshold_that_reaches_the_target():
    # confidences 0.9 0.8 0.7 0.6 0.55; the first three right, then wrong, right: kept accuracy 1 1 1 .75 .8
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1, 0])
    chosen = choose_threshold(probabilities, labels)
    assert chosen["target_precision"] == TARGET_PRECISION  # the surest half is all right: 0.95 is reachable
    assert chosen["threshold"] == 0.7 and chosen["kept"] == 3 and chosen["coverage"] == pytest.approx(0.6)
    assert chosen["accuracy"] == 1.0 and chosen["accuracy_all"] == pytest.approx(0.8)
    low, high = chosen["accuracy_interval95"]
    assert 0.4 < low < 0.45 and high == 1.0  # Wilson, 3 of 3: (0.438, 1)
    # an explicit target of 0.8 is reached by keeping everything: the lowest confidence is the threshold
    assert choose_threshold(probabilities, labels, target=0.8)["threshold"] == 0.55
    with pytest.raises(CnnlabError, match="no threshold reaches"):
        choose_threshold(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([1, 0]), target=0.9)


def test_a_weak_run_gets_the_precision_of_its_surest_half():
    # kept accuracy 0, 1/2, 2/3, 1/2: no point reaches 0.95; the surest half (2 images) is 1/2 right
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 1])
    chosen = choose_threshold(probabilities, labels)
    assert chosen["target_precision"] == 0.5
    assert chosen["threshold"] == 0.6 and chosen["coverage"] == 1.0  # the lowest threshold still reaching 1/2


def test_the_curve_is_the_accuracy_of_the_kept_images():
    rng = np.random.default_rng(0)
    confidence = rng.choice([0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], size=200)  # many ties: kept or dropped together
    correct = rng.random(200) < confidence
    curve = risk_coverage(confidence, correct)
    assert curve.thresholds.tolist() == sorted(set(confidence.tolist()), reverse=True)
    for t, coverage, accuracy in zip(curve.thresholds, curve.coverage, curve.accuracy):
        kept = confidence >= t
        assert coverage == pytest.approx(kept.mean()) and accuracy == pytest.approx(correct[kept].mean())
    assert curve.coverage[-1] == 1.0


def test_reject_values():
    assert resolve_threshold("off", "/nonexistent") is None
    assert resolve_threshold("0.99", "/nonexistent") == 0.99 and resolve_threshold(0.5, "/nonexistent") == 0.5
    assert resolve_threshold("auto", "/nonexistent") is None  # no reject.json: nothing is unknown
    for bad in ("1.5", "0", "maybe", "nan"):
        with pytest.raises(CnnlabError, match="--reject"):
            resolve_threshold(bad, "/nonexistent")


# --- a trained run ---------------------------------------------------------------------------------------------
def test_training_writes_the_threshold_and_the_report_shows_it(tiny_run):
    chosen = read_json(tiny_run.run_dir / REJECT)
    assert (tiny_run.run_dir / RISK_COVERAGE).stat().st_size > 0
    assert chosen["split"] == "val" and chosen["images"] == 12 and "Hendrycks" in chosen["method"]
    curve = chosen["curve"]
    at = curve["threshold"].index(chosen["threshold"])
    assert curve["coverage"][at] == chosen["coverage"] and curve["accuracy"][at] == chosen["accuracy"]
    assert chosen["accuracy"] >= chosen["target_precision"]
    # the lowest such threshold: every lower point of the curve misses the target
    assert all(a < chosen["target_precision"] for a in curve["accuracy"][at + 1:])
    page = (tiny_run.run_dir / "report.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="unknown"'):]
    assert f"{chosen['threshold']:.3f}" in section[:section.index("</section>")]


def test_eval_chooses_the_threshold_for_a_run_without_one(tiny_run, tmp_path):
    run = tmp_path / "older"
    shutil.copytree(tiny_run.run_dir, run)
    (run / REJECT).unlink()
    (run / RISK_COVERAGE).unlink()
    evaluate(run, split="val", workers=0, verbose=False)
    assert read_threshold(run)["threshold"] == pytest.approx(read_threshold(tiny_run.run_dir)["threshold"], abs=1e-6)
    assert (run / RISK_COVERAGE).is_file()


def test_predict_marks_exactly_the_images_under_the_threshold(tiny_run, tiny_data, capsys):
    images = sorted((tiny_data / "val").rglob("*.jpg")) + sorted((tiny_data / "train").rglob("*.jpg"))[:12]
    trained = open_trained(tiny_run.run_dir, device="cpu")
    top = {str(path): top_probability(trained, path) for path in images}
    threshold = read_threshold(tiny_run.run_dir)["threshold"]
    for reject, value in (("auto", threshold), ("0.99", 0.99), ("0.5", 0.5)):
        rows = predict(tiny_run.run_dir, images, top_k=2, workers=0, reject=reject)
        for row in rows:
            p = top[str(row["path"])]
            if abs(p - value) > 1e-6:  # an image at the threshold itself is decided by float round-off
                assert row["unknown"] == (p < value), (reject, row, p)
            assert row["top"][0]["probability"] == pytest.approx(p, abs=1e-5)  # the closest classes stay
        if reject == "0.99":  # a 2-epoch run is rarely 99% sure
            assert sum(row["unknown"] for row in rows) >= len(rows) // 2
    off = predict(tiny_run.run_dir, images, workers=0, reject="off")
    assert not any("unknown" in row for row in off)
    assert "unknown" not in table_rows(off)[0]
    with pytest.raises(CnnlabError, match="--reject"):
        predict(tiny_run.run_dir, images[:1], workers=0, reject="2")


def test_the_cli_says_unknown_with_the_closest_classes(tiny_run, tiny_data):
    image = sorted((tiny_data / "val").rglob("*.jpg"))[0]
    shown = subprocess.run([sys.executable, "-m", "cnnlab", "predict", str(tiny_run.run_dir), str(image),
                            "--reject", "1", "--top-k", "2"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    line = shown.stdout.strip()
    assert line.startswith(f"{image}: unknown (closest: ") and line.count(" 0.") == 2, line


def test_serve_answers_unknown_as_predict_does(tiny_run, tiny_data):
    trained = open_trained(tiny_run.run_dir, device="cpu")
    paths = sorted((tiny_data / "val").rglob("*.jpg"))[:4]
    for threshold in (1.0, 0.99, 1 / 3):
        predictor = UploadPredictor(trained, threshold)
        rows = predict(tiny_run.run_dir, paths, workers=0, reject=str(threshold))
        for path, row in zip(paths, rows):
            answer = predictor.predict(path.read_bytes(), path.name).to_dict()
            assert answer["unknown"] == row["unknown"] and answer["threshold"] == threshold
    assert UploadPredictor(trained).predict(paths[0].read_bytes(), paths[0].name).to_dict()["unknown"] is False


def test_images_of_classes_the_run_never_saw(tiny_run, tmp_path):
    """tiny_run knows circle, square and triangle; star, cross and ring (the same kind of picture) and the objects
    kind (many small shapes on clutter) it never saw. Asserted: the mechanism, exactly; how well it separates
    them is measured, not asserted (docs/trust.md)."""
    synthesize(tmp_path / "shapes6", classes=6, per_class=4, size=64, seed=5, val_fraction=0.25)
    synthesize(tmp_path / "objects", classes=3, per_class=4, size=512, seed=5, val_fraction=0.25, kind="objects")
    unseen = [p for name in ("star", "cross", "ring") for p in sorted((tmp_path / "shapes6").rglob(f"{name}_*.jpg"))]
    unseen += sorted((tmp_path / "objects").rglob("*.jpg"))
    assert len(unseen) == 24
    trained = open_trained(tiny_run.run_dir, device="cpu")
    threshold = read_threshold(tiny_run.run_dir)["threshold"]
    rows = predict(tiny_run.run_dir, unseen, top_k=3, workers=0)
    assert len(rows) == len(unseen) and all("error" not in row for row in rows)
    for row in rows:
        p = top_probability(trained, row["path"])
        assert row["unknown"] == (p < threshold), (row, p, threshold)
        assert [t["class"] for t in row["top"]] and row["top"][0]["class"] in trained.record.classes
