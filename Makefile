# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv with the pinned versions in requirements.lock; a second call reuses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

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

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python benchmarks/conv2d.py

clean:
	rm -rf $(VENV) .pytest_cache
