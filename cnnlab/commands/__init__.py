"""The commands a user runs, each a plain function the CLI calls: train (fit = prepare, train, finish),
evaluate, predict, compare, inspect, filters, demo, lr_find, augment_preview, export (ONNX, with onnx_file its
reader) and serve (the web app, with upload_predictor for one uploaded image)."""
