"""Training: prepare a run from a TrainConfig (setup), the epoch loop (loop), its state and checkpoint
(state), the run folder's writer (record), optimizer and schedule (optim), device and precision (device),
progress (progress), batches to the model (forward) and the LR range test (lr_find); stopping on signals is
cnnlab.signals (base layer: the data workers use it too).

Imports nothing from cnnlab.runs, cnnlab.commands or cnnlab.cli (tests/test_layers.py checks it).
Names are resolved lazily, so importing the package does not import torch."""

import importlib

_EXPORTS = {"Run": "cnnlab.training.setup", "prepare": "cnnlab.training.setup", "train": "cnnlab.training.loop"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnnlab.training' has no attribute {name!r}")
