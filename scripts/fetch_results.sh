#!/usr/bin/env bash
# Bring a cluster's results down to this machine; run it before `ray down`, which
# on a cloud provider deletes the head and everything on it:
#
#   scripts/fetch_results.sh ray_cluster.yaml [DEST]      # DEST default: runs/cluster
#
# From the head (where `ray submit` runs the sweep, in the remote home folder) to DEST:
#   ~/mlflow/mlflow.db    -> DEST/mlflow.db     the MLflow store: a consistent copy
#                                               (SQLite's backup, made on the head, so
#                                               a server still writing is no problem)
#   ~/mlflow/artifacts/   -> DEST/artifacts/    the runs' artifacts (tables, models)
#   ~/runs/               -> DEST/runs/         Tune storage: checkpoints, experiment state
# Then browse them here, with the artifacts served from the copy:
#   mlflow server --backend-store-uri sqlite:///$PWD/DEST/mlflow.db \
#     --artifacts-destination $PWD/DEST/artifacts --host 127.0.0.1 --port 5000
# Running it again updates DEST (rsync sends only what changed). `ray` must be on
# PATH (the project's venv). Checked by tests/test_launcher.py; docs/cluster.md.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 CLUSTER.yaml [DEST]   (DEST default: runs/cluster)" >&2
  exit 2
fi
cluster=$1
dest=${2:-runs/cluster}
mkdir -p "$dest"
# the snapshot: beside the store on the head, taken by the head's python (the venv)
ray exec "$cluster" "python -c \"import os, sqlite3; home = os.path.expanduser('~/mlflow'); \
src = sqlite3.connect(home + '/mlflow.db'); dst = sqlite3.connect(home + '/mlflow.snapshot.db'); \
src.backup(dst); dst.close(); src.close()\""
ray rsync-down "$cluster" '~/mlflow/mlflow.snapshot.db' "$dest/mlflow.db"
ray rsync-down "$cluster" '~/mlflow/artifacts/' "$dest/artifacts/"
ray rsync-down "$cluster" '~/runs/' "$dest/runs/"
echo "[fetch_results] $cluster -> $dest: mlflow.db, artifacts/, runs/"
