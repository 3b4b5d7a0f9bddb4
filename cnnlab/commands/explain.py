"""`cnnlab explain RUN IMAGE|FOLDER...`: Grad-CAM overlays of images (cnnlab.runs.explain computes them), one
PNG per image, where the network found the evidence for a class."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from cnnlab import plots
from cnnlab.config import Help
from cnnlab.data.folders import Sample, expand_inputs
from cnnlab.errors import ImageReadError
from cnnlab.models.gradcam import cam_layer
from cnnlab.runs.display import shrink
from cnnlab.runs.explain import class_index_of, evidence_panels, explain_image
from cnnlab.runs.inference import open_trained
from cnnlab.training.record import GRADCAM


@dataclass
class ExplainResult:
    """What `explain` wrote: one overlay per image (and the images it could not read, with the reason)."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # path, class, predicted, probability, file[, evidence] | error

    def describe(self) -> str:
        """One line per image."""
        lines = []
        for row in self.rows:
            if "error" in row:
                lines.append(f"{row['path']}: error: {row['error']}")
            else:
                lines.append(f"{row['path']}: Grad-CAM of '{row['class']}' (predicted '{row['predicted']}', "
                             f"{row['probability']:.3f}) -> {row['file']}"
                             + (f"; evidence tiles -> {row['evidence']}" if "evidence" in row else ""))
        return "\n".join(lines)


def explain(run_dir: str | os.PathLike, images: list[str | os.PathLike],
            class_name: Annotated[str | None, Help("Show the evidence for this class (default: each image's predicted "
                                                   "class).", flag="--class")] = None,
            out: Annotated[str | os.PathLike | None, Help("Folder for <image>.gradcam.png (default: RUN_DIR/gradcam).")]
            = None,
            which: str = "best", device: str = "auto") -> ExplainResult:
    """Grad-CAM: where in each image the network found the evidence for a class (tiled runs: stitched over the
    whole image).

    Writes OUT/<image>.gradcam.png for each image (OUT default: RUN/gradcam), and for a bag run (--aggregate
    attention) OUT/<image>.evidence.png: the tiles with the most attention, each with its own map; each image that
    cannot be read gets a row with the reason (exit code 1)."""
    trained = open_trained(run_dir, which, device)
    cam_layer(trained.model)
    class_index = class_index_of(trained, class_name)
    out_dir = Path(out) if out is not None else Path(run_dir) / GRADCAM
    result = ExplainResult(out_dir)
    classes = trained.record.classes
    expanded = expand_inputs(images)  # files, and the images inside folders, as predict takes them
    paths = [path for path, reason in expanded if reason is None]
    dataset = trained.dataset([Sample(p, 0) for p in paths], warn=False)  # each failure is a row
    files = output_names(paths, ".gradcam.png")
    evidence_names = output_names(paths, ".evidence.png")  # bag runs only
    rows = {path: {"path": path, "error": reason} for path, reason in expanded if reason is not None}
    for index, path in enumerate(paths):
        try:
            picture = dataset.load(index)  # raises ImageReadError with the reason, once
        except ImageReadError as error:
            rows[path] = {"path": path, "error": error.reason}
            continue
        picture = dataset.transform(picture)
        explanation = explain_image(trained, picture, path, class_index)
        name = classes[explanation.class_index]
        file = out_dir / files[index]
        plots.heatmap_overlay(shrink(picture).permute(1, 2, 0).numpy(), explanation.cam.numpy(), file, vmax=None,
                              label="Grad-CAM",
                              title=f"{Path(path).name}: where the network sees '{name}' (predicted "
                                    f"'{classes[explanation.predicted]}', {float(explanation.probabilities.max()):.2f})")
        result.files.append(file)
        rows[path] = {"path": path, "class": name, "predicted": classes[explanation.predicted],
                      "probability": float(explanation.probabilities[explanation.predicted]), "file": str(file)}
        if explanation.evidence:  # a bag run: the tiles its prediction rests on, strongest first
            evidence = out_dir / evidence_names[index]
            panels, titles = evidence_panels(explanation)
            plots.image_grid(panels, titles, evidence, columns=min(len(panels), 4),
                             suptitle=f"{Path(path).name}: the {len(panels)} tiles with the most attention "
                                      f"(pixels at scale {trained.preprocessing.scale:g}), Grad-CAM for '{name}'")
            result.files.append(evidence)
            rows[path]["evidence"] = str(evidence)
    result.rows = [rows[path] for path, _ in expanded]  # the order the user gave
    return result


def output_names(paths: list[str], suffix: str) -> list[str]:
    """One file name per input, <stem><suffix>; inputs sharing a stem (a/x.jpg, b/x.png) get their parent folder's
    name too, so no picture overwrites another."""
    stems = [Path(path).stem for path in paths]
    names = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) > 1:
            stem = f"{Path(path).parent.name}_{stem}" if Path(path).parent.name else stem
        names.append(stem)
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # still equal (the same name in two folders of the same name): number them
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}_{seen[name]}")
    return [name + suffix for name in unique]


def show(result: ExplainResult) -> int:
    """One line per image; exit 1 when some could not be read."""
    print(result.describe(), flush=True)
    return 1 if any("error" in row for row in result.rows) else 0
