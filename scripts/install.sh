#!/usr/bin/env bash
# Create .venv/ at the repo root (if missing) and install sal_ray with its extras.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-all}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $PY"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=24"
# torch 2.14.1 / torchvision 0.29.1 come from this machine's local files where they lie;
# pyproject's ranges admit them, so pip does not fetch a newer multi-GB build.
echo "[install] pip install -e .[$EXTRAS] (first time: a few minutes)"
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
