# Quick start: `make repro` (pipeline on the embedded default) and `make test`.
# Both create or update .venv first (scripts/setup.sh; seconds when nothing changed).
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup setup-tf repro test test-fast test-equality bench smoke-gpu lock clean-venv

setup:
	@scripts/setup.sh

# setup plus the optional extra `tf` (TensorFlow, to import the authors' checkpoints; ~20 s with a fast
# download, nothing when installed); `make test` installs it, so that the TF-checkpoint test runs
setup-tf:
	@scripts/setup.sh --tf

repro: setup
	$(BIN)/dvc repro

# Test files run on 2 workers of 1 thread each (both cores; 2 threads per worker oversubscribe them
# and cost 60% more time); a file's tests stay together so that its fixtures run once; the two
# longest files start first, one per worker (tests/conftest.py). Set OMP_NUM_THREADS to override.
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -rs -n 2 --dist loadfile --no-loadscope-reorder

test: setup-tf
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

# The tests that compare two code paths (2 processes against 1, resumed against uninterrupted,
# cached against uncached, an objective against its slow reference), again under other CPU
# kernels: AVX2 (no AVX-512) by default, or ATEN_CPU_CAPABILITY=default (no AVX). .ci/run runs it.
EQUALITY := gloo_processes or two_processes or sync_bn or interrupted_then_resumed or cached_and_uncached or reference or as_one_process or equal
test-equality: setup
	ATEN_CPU_CAPABILITY=$${ATEN_CPU_CAPABILITY:-avx2} $(PYTEST) -k "$(EQUALITY)"

bench: setup
	$(BIN)/python -m benchmarks

# On a CUDA machine: the paper's scale in a few minutes (reports/gpu-smoke.md); elsewhere says so.
smoke-gpu: setup
	$(BIN)/python -m benchmarks.gpu_smoke

lock: setup
	{ head -2 requirements.lock; $(BIN)/python -m pip freeze --exclude-editable \
	    $$(sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/--exclude \1/p' requirements-tf.lock); } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)
