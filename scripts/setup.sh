#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) and the system data it reads.
# Idempotent: with nothing changed it costs a few seconds. Called by `make` targets.
#
#   scripts/setup.sh            venv + system data
#   scripts/setup.sh --tf       the same, plus the optional extra `tf` (requirements-tf.lock, against the lock)
#   PYTHON=/path/python3.10 scripts/setup.sh   use this interpreter
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP=$VENV/.localagg-installed
LOCK=requirements.lock

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

is_py310() { "$@" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }

find_python() {
    if [ -n "${PYTHON:-}" ]; then
        is_py310 "$PYTHON" && { echo "$PYTHON"; return; }
        die "PYTHON=$PYTHON is not a working CPython 3.10."
    fi
    local c
    for c in python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
        if command -v "$c" >/dev/null 2>&1 && is_py310 "$c"; then command -v "$c"; return; fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local root; root=$(pyenv root)
        for c in "$root"/versions/3.10*/bin/python3.10; do
            [ -x "$c" ] && is_py310 "$c" && { echo "$c"; return; }
        done
    fi
    for c in "$HOME"/.pyenv/versions/3.10*/bin/python3.10; do
        [ -x "$c" ] && is_py310 "$c" && { echo "$c"; return; }
    done
    die "no CPython 3.10 found. The tested stack (torch 2.3.1 + compiled Detectron2 wheel) needs Python 3.10.
  Install one, e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10 python3.10-venv',
  or point to it: PYTHON=/path/to/python3.10 make test"
}

# pip's site config on some machines names local package folders that do not exist; drop that noise.
pip_quiet() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location .* is ignored" >&2); }

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && is_py310 "$VENV/bin/python"; then
        if [ -f "$STAMP" ] && [ "$STAMP" -nt "$LOCK" ] && [ "$STAMP" -nt pyproject.toml ]; then
            return
        fi
    else
        local py; py=$(find_python)
        say "creating $VENV with $py"
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
    fi
    say "installing the locked stack from $LOCK (first time: a few minutes, ~5 GB)"
    pip_quiet install -q --disable-pip-version-check --upgrade "pip>=23"
    pip_quiet install -q --disable-pip-version-check -r "$LOCK"
    pip_quiet install -q --disable-pip-version-check --no-deps -e .
    "$VENV/bin/python" -c 'import torch, torchvision, faiss, detectron2, dvc, dvclive, typer, pandas' \
        || die "the environment installed but an import fails (see above)."
    touch "$STAMP"
}

# The optional extra `tf` (TensorFlow, to read the authors' checkpoints): requirements-tf.lock installed
# with requirements.lock as constraints, so that no locked version moves (unconstrained, pip takes numpy 2).
TF_LOCK=requirements-tf.lock
TF_STAMP=$VENV/.localagg-tf-installed
ensure_tf() {
    if [ -f "$TF_STAMP" ] && [ "$TF_STAMP" -nt "$TF_LOCK" ] && [ "$TF_STAMP" -nt "$STAMP" ]; then
        return
    fi
    say "installing the optional extra tf from $TF_LOCK (TensorFlow CPU: a 300 MB download, 1.4 GB installed)"
    pip_quiet install -q --disable-pip-version-check -r "$TF_LOCK" -c "$LOCK"
    TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=0 "$VENV/bin/python" -c 'import tensorflow, torch' \
        || die "the extra tf installed but 'import tensorflow' fails (see above)."
    touch "$TF_STAMP"
}

FASHION_DIR=/usr/share/datasets/fashion-mnist
ensure_system_data() {
    [ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ] && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian package dataset-fashion-mnist (real Fashion-MNIST, ~31 MB, MIT)"
        # another apt or dpkg (a shared machine's unattended upgrades) may hold the lock: wait for it
        local lock="-o DPkg::Lock::Timeout=${APT_LOCK_TIMEOUT_S:-600}"
        if command -v fuser >/dev/null 2>&1 && fuser /var/lib/dpkg/lock-frontend /var/lib/apt/lists/lock >/dev/null 2>&1; then
            say "another apt/dpkg process holds the package lock: waiting up to ${APT_LOCK_TIMEOUT_S:-600} s for it"
        fi
        apt-get $lock update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get $lock install -y -qq dataset-fashion-mnist >&2 \
            || die "apt-get install dataset-fashion-mnist failed (see above; if the package lock was held, retry when \
the other apt/dpkg process has finished, or set APT_LOCK_TIMEOUT_S)."
    else
        die "Fashion-MNIST is missing from $FASHION_DIR. Run as root:
  apt-get update && apt-get install -y dataset-fashion-mnist
or put the four IDX .gz files in a folder and set prepare.object.root to it in params.yaml."
    fi
}

# `dvc plots show` renders offline: its page template inlines the chart library (vl-convert-python).
TEMPLATE=.dvc/plots/template.html
ensure_plots_template() {
    [ -f "$TEMPLATE" ] && [ "$TEMPLATE" -nt "$STAMP" ] && return
    "$VENV/bin/python" scripts/plots_template.py >&2 || die "writing $TEMPLATE failed (see above)."
}

WITH_TF=0
for arg in "$@"; do
    case "$arg" in
        --tf) WITH_TF=1 ;;
        *) die "unknown option $arg (scripts/setup.sh [--tf])" ;;
    esac
done

ensure_venv
if [ "$WITH_TF" = 1 ]; then ensure_tf; fi
ensure_system_data
ensure_plots_template
