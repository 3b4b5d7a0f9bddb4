"""cnnlab: train, understand and trust convolutional networks on your own images.

The public API, one plain function per CLI command (same arguments):

    cnnlab.synthesize(out_dir, classes=6, per_class=100, size=1024, seed=0)   # cnnlab data synth
    cnnlab.fit(data=..., model="simple_cnn", img_size=128, epochs=10, ...)   # cnnlab train
    cnnlab.evaluate(run_dir, data=None, split="val")                         # cnnlab eval
    cnnlab.predict(run_dir, [paths], top_k=3)                                # cnnlab predict
    cnnlab.create_model(name, num_classes, **options), cnnlab.list_models()  # cnnlab models
    cnnlab.summarize_model("simple_cnn", "3x1000x1000")                       # cnnlab summary
    cnnlab.filter_image(path, kernel="sobel-x"), cnnlab.inspect_run(run, img) # cnnlab filter / inspect
    cnnlab.diagnose_run(run_dir), cnnlab.write_report(run_dir)               # the run's verdict / report.html
    cnnlab.find_lr(data=...)                                                 # cnnlab lr-find
    cnnlab.check_dataset(root)                                               # cnnlab data check
    cnnlab.fit(resume=run_dir)                                               # cnnlab train --resume
    cnnlab.plan(data=..., img_size=128, batch_size="auto")                   # cnnlab plan: memory, speed, time
    cnnlab.sweep(data, "64,96,128", time="2m")                               # cnnlab sweep: which size is worth it
    cnnlab.read_run(run_dir)                                                 # a run folder, typed
    cnnlab.export(run_dir, out="model.onnx")                                 # cnnlab export (checked with onnxruntime)
    cnnlab.predict("model.onnx", [paths])                                    # cnnlab predict model.onnx
    cnnlab.serve(run_dir, port=8000), cnnlab.create_app(run_dir)             # cnnlab serve / the ASGI app itself

Names are resolved lazily (PEP 562) so that `cnnlab --help` does not import torch.
"""

from __future__ import annotations

import importlib

from cnnlab.errors import CnnlabError, ImageReadError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "TrainConfig": "cnnlab.config",
    "fit": "cnnlab.commands.train",
    "TrainResult": "cnnlab.commands.train",
    "evaluate": "cnnlab.commands.evaluate",
    "predict": "cnnlab.commands.predict",
    "create_model": "cnnlab.models",
    "list_models": "cnnlab.models",
    "load_model": "cnnlab.runs.reader",
    "read_run": "cnnlab.runs.reader",
    "diagnose_run": "cnnlab.runs.reader",
    "find_samples": "cnnlab.data.folders",
    "read_image": "cnnlab.data.images",
    "synthesize": "cnnlab.data.synth",
    "diagnose": "cnnlab.runs.diagnosis",
    "check_dataset": "cnnlab.data.check",
    "summarize_model": "cnnlab.models.summary",
    "summary": "cnnlab.models.summary",
    "filter_image": "cnnlab.commands.filters",
    "inspect_run": "cnnlab.commands.inspect",
    "write_report": "cnnlab.runs.report",
    "find_lr": "cnnlab.commands.lr_find",
    "export": "cnnlab.commands.export",
    "serve": "cnnlab.commands.serve",
    "create_app": "cnnlab.commands.serve",
    "plan": "cnnlab.commands.plan",
    "sweep": "cnnlab.commands.sweep",
}

__all__ = ["CnnlabError", "ImageReadError", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # cache: later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
