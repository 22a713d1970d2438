#!/usr/bin/env bash
# Quick start, command 1: install into .venv/ and run the main job on the embedded
# defaults (local Ray, local MLflow SQLite store ./mlflow.db, Digits from scikit-learn).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all
if [ -f sweeps/search.py ]; then
  exec .venv/bin/python sweeps/search.py --quick "$@"
fi
exec .venv/bin/python benchmarks/reproduce.py "$@"
