# Quick start: `make repro` (pipeline on the embedded default) and `make test`.
# Both create or update .venv first (scripts/setup.sh; seconds when nothing changed).
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-fast bench smoke-gpu lock clean-venv

setup:
	@scripts/setup.sh

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks

# On a CUDA machine: the paper's scale in a few minutes (reports/gpu-smoke.md); elsewhere says so.
smoke-gpu: setup
	$(BIN)/python -m benchmarks.gpu_smoke

lock: setup
	{ head -2 requirements.lock; $(BIN)/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)
