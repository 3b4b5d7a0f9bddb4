"""A run folder, read: the typed reader (reader), a trained run opened for inference (inference), the
verdict on its learning curves (diagnosis), what it gets wrong (interpret) and the report (report).

The writer is cnnlab.training.record; this layer never trains and never writes training's files."""
