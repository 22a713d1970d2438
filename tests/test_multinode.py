"""Multi-node Ray, for real on this machine: a head (`ray start --head`) and a
worker joined to it (`ray start --address`, with a resource of its own), one CPU
each, and a sweep driven against the head whose trials run on both nodes at once.
Every trial logs to one MLflow server (the head's, as on a cluster) and nothing
is lost: every trial's run, finished, with its whole metric history, and each run
names the node it ran on. Both nodes are this test's own processes (tests/
ray_nodes.py), stopped by process group at the end; no `ray stop`.

This session's own local Ray, if any, is not used: the driver is a process of its
own, as `ray submit` runs it on a head.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("ray")

try:
    from mlflow_server import MLflowServer
    from ray_nodes import RayNodes
    from test_faults import DRIVER, assert_complete_history, child_runs
except ImportError:  # tests/ as a package
    from tests.mlflow_server import MLflowServer
    from tests.ray_nodes import RayNodes
    from tests.test_faults import DRIVER, assert_complete_history, child_runs

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 3
# two trials, one CPU each, two nodes of one CPU: they run at once, one on each node
SWEEP = dict(datasets="digits", methods="sal", space={"lr": [0.01, 0.03]},
             sampler="grid", fixed={"width": 32, "batch_size": 32, "n_areas": 4,
                                    "epochs": EPOCHS},
             resources={"cpu": 1}, max_concurrent=2, experiment="multinode", name="two-nodes")


@pytest.fixture
def cluster():
    nodes = RayNodes()
    try:
        nodes.head(num_cpus=1)
        nodes.worker(num_cpus=1, resources={"second_node": 1})
        yield nodes
    finally:
        nodes.stop()
        left = nodes.leftovers()
        shutil.rmtree(nodes.root, ignore_errors=True)
        assert left == [], left  # both nodes gone, every process of theirs with them


def test_a_sweep_on_two_ray_nodes_lands_on_both_and_loses_nothing(cluster, tmp_path):
    server = MLflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    uri = server.start()
    try:
        nodes = {n["NodeID"]: n["Resources"] for n in cluster.nodes()}
        assert len(nodes) == 2
        worker = [i for i, r in nodes.items() if r.get("second_node") == 1.0]
        assert len(worker) == 1  # the worker's own resource, as it was started with
        kw = {**SWEEP, "tracking_uri": uri, "address": cluster.address,
              "storage_path": str(tmp_path / "ray")}
        out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(kw)], cwd=tmp_path,
                             env=cluster.env, capture_output=True, text=True, timeout=600)
        log = (out.stdout + out.stderr)[-4000:]
        assert out.returncode == 0, log
        assert "sweep 'two-nodes' done" in out.stdout, log

        client = mlflow.MlflowClient(uri)
        runs = child_runs(client, "multinode", "two-nodes")
        assert len(runs) == 2, log                                   # every trial's run
        for run in runs:
            assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
            assert_complete_history(client, run, EPOCHS)             # every epoch's metrics
        assert {r.data.tags["ray_node_id"] for r in runs} == set(nodes)   # both nodes ran trials
        exp = client.get_experiment_by_name("multinode")
        parent = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")
        assert len(parent) == 1 and parent[0].data.tags["status"] == "completed"
        assert parent[0].data.tags["trials_ended"] == "2/2"
    finally:
        server.stop()
