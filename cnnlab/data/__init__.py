"""Data: the folder walk and splits (folders), image decoding (images, the only module that opens image
files), the decoded-image cache (cache), per-image transforms and the preprocessing record (transforms),
the batch augmentation on the device (augment), the dataset (dataset), loaders (loaders), unreadable-image
bookkeeping (unreadable), the data check (check, findings) and the built-in synthetic datasets (synth).

Imports nothing from the layers above it: models, training, runs, commands, cli."""
