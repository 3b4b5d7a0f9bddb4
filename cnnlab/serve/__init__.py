"""The web app of a trained run: its ASGI app (app), the self-contained page (page.html) and the upload predictor
(predictor). Above cnnlab.runs, below cnnlab.commands (`cnnlab serve` starts it)."""
