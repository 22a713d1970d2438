"""A trial no node can hold is refused in one line, before any run exists
(sal_ray/sweep/placement.py): first against the node types of ray_cluster.yaml
as the launcher's head sees them, then for real on this session's local Ray,
which has 2 CPUs and no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")
yaml = pytest.importorskip("yaml")

import sal_ray  # noqa: E402
from sal_ray.sweep import placement, ray_compat  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEAD_NOW = [{"CPU": 0.0, "memory": 3e10, "node:__internal_head__": 1.0}]  # the AWS head


@pytest.fixture
def aws_types(monkeypatch, tmp_path):
    """ray_cluster.yaml's node types, read the way the sweep reads them on a head
    (`ray up` leaves the config at ~/ray_bootstrap_config.yaml)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ray_bootstrap_config.yaml").write_text((REPO / "ray_cluster.yaml").read_text())
    monkeypatch.setattr(ray_compat, "_gcs_node_types", lambda: None)
    types = ray_compat.autoscaler_node_types()
    assert sorted((t["name"], t["max_count"], t["head"]) for t in types) == \
        [("head.cpu", 1, True), ("worker.gpu", 8, False)]
    return types


def test_what_the_autoscaler_can_start_is_placeable_though_no_worker_runs_yet(aws_types):
    assert placement.refusal({"cpu": 2, "gpu": 0.25}, HEAD_NOW, aws_types) is None  # depth.py
    assert placement.refusal({"cpu": 8, "gpu": 1, "workers": 8}, HEAD_NOW, aws_types) is None


def test_what_no_node_type_offers_is_refused_naming_the_resource_and_its_flag(aws_types):
    why = placement.refusal({"cpu": 2, "gpu": 2}, HEAD_NOW, aws_types)
    assert why == ("a trial asks for 2 GPU, but none of the cluster's nodes and the node "
                   "types its autoscaler can start has more than 1; set --gpus-per-trial "
                   "(resources['gpu']) to at most 1")
    assert "--cpus-per-trial" in placement.refusal({"cpu": 16}, HEAD_NOW, aws_types)
    many = placement.refusal({"cpu": 4, "gpu": 1, "workers": 9}, HEAD_NOW, aws_types)
    assert "9 workers with 1 GPU each" in many and "at most 8" in many
    assert "--workers-per-trial" in many


def test_resources_that_fit_alone_but_never_together_are_refused():
    nodes = [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}]
    why = placement.refusal({"cpu": 4, "gpu": 1}, nodes, None)
    assert "4 CPU and 1 GPU on one node" in why and "(it has no autoscaler)" in why
    assert "--cpus-per-trial" in why and "--gpus-per-trial" in why


def test_on_premise_machines_still_joining_leave_placement_unknown_not_refused():
    local = [{"name": "local.cluster.node", "resources": None, "max_count": 2, "head": False}]
    head = [{"CPU": 2.0, "node:__internal_head__": 1.0}]
    assert placement.nodes_at_most(head, local) is None
    assert placement.refusal({"gpu": 1}, head, local) is None
    # all of them joined: what they have is all there is
    joined = head + [{"CPU": 2.0}, {"CPU": 2.0}]
    assert "set --gpus-per-trial (resources['gpu']) to 0" in \
        placement.refusal({"cpu": 1, "gpu": 1}, joined, local)


def parent_runs(uri: str):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("placement")
    return [] if exp is None else client.search_runs([exp.experiment_id])


@pytest.mark.ray
@pytest.mark.parametrize("resources, flag", [
    ({"gpu": 1}, "--gpus-per-trial"),                      # no GPU at all here
    ({"cpu": 3}, "--cpus-per-trial"),                      # 2 CPUs here
    ({"cpu": 1, "workers": 3}, "--workers-per-trial"),     # 3 workers x 1 CPU > 2
])
def test_an_unplaceable_trial_on_this_ray_stops_before_any_run(
        ray_local, tmp_path, mlflow_uri, resources, flag):
    with pytest.raises(sal_ray.ConfigError) as err:
        sal_ray.tune(datasets="digits", methods="sal", space={"lr": [0.01]}, sampler="grid",
                     fixed={"epochs": 1}, resources=resources, experiment="placement",
                     name="unplaceable", tracking_uri=mlflow_uri,
                     storage_path=str(tmp_path / "ray"), verbose=0)
    message = str(err.value)
    assert message.startswith("option 'resources': ") and "\n" not in message
    assert flag in message
    assert parent_runs(mlflow_uri) == []                      # no parent run, RUNNING or not
    assert not (tmp_path / "ray" / "unplaceable").exists()    # and no trial folder
