# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv with the pinned versions in requirements.lock; a second call reuses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean bench

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, by exact version, so pip takes the local wheels and never a multi-GB download.
	$(BIN)/pip install --quiet -c requirements.lock torch torchvision
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cnnlab demo

# The whole suite (CI), printing the 30 slowest tests so that their cost is measured, not guessed.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q --durations=30

# The fast tier while working: everything but the slow, browser and multiprocess tests (pyproject.toml's markers);
# it still runs each real component once (training, exact resume, ONNX export with onnxruntime, serve).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow and not browser and not multiprocess" --durations=10

bench: $(STAMP)
	$(BIN)/python benchmarks/conv2d.py

clean:
	rm -rf $(VENV) .pytest_cache
