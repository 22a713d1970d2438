"""ray_cluster.yaml is valid for `ray up`: filled with the provider's defaults and
checked against the schema bundled in the installed Ray, as `ray up` does."""

from __future__ import annotations

import copy
import pathlib
import re

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("jsonschema")
util = pytest.importorskip("ray.autoscaler._private.util")

PATH = pathlib.Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PATH.read_text())


def test_cluster_config_validates_against_rays_schema(raw):
    prepared = util.prepare_config(copy.deepcopy(raw))
    util.validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_a_broken_config_is_caught_by_the_same_check(raw):
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["worker.gpu"]["min_wrokers"] = 1
    with pytest.raises(Exception, match="min_wrokers"):
        util.validate_config(util.prepare_config(bad))


def test_cpu_head_gpu_workers_and_autoscaler_limits(raw):
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers)
    for t in types.values():  # node resources must be integers
        assert all(isinstance(v, int) for v in t["resources"].values())
    assert sum(t.get("min_workers", 0) for t in workers) <= raw["max_workers"]
    assert all(t["max_workers"] <= raw["max_workers"] for t in workers)
    assert raw["idle_timeout_minutes"] > 0


def test_project_installed_dashboard_local_token_auth(raw):
    setup = " ".join(raw["setup_commands"])
    assert 'pip install --quiet -e "$HOME/sal_ray[sweep]"' in setup
    assert raw["file_mounts"]["~/sal_ray"] == "."
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=token" in " ".join(raw["worker_start_ray_commands"])
    assert "MLFLOW_TRACKING_URI" in " ".join(raw["head_setup_commands"])


def test_no_credentials_in_the_file():
    text = PATH.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # AWS access key ids
    for word in ("aws_secret_access_key", "ssh_private_key:", "KeyName", "password"):
        assert word not in text


def _keys(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}/{k}", k
            yield from _keys(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _keys(v, f"{path}/{i}")


def test_credentials_come_from_the_users_environment(raw):
    """No key, secret or token in the file: Ray makes the SSH key pair, boto3 finds
    the AWS keys (~/.aws or AWS_*), the Ray token is mounted from the user's home."""
    assert set(raw["auth"]) == {"ssh_user"}  # no ssh_private_key, no KeyName
    secret = re.compile(r"(?i)secret|password|private_key|access_key|credential|token")
    named = [p for p, k in _keys(raw) if secret.search(str(k))]
    # the only one: the token file, copied from the user's ~/.ray to the nodes
    assert named == ["/file_mounts/~/.ray/auth_token"]
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert all(src == "." or src.startswith("~/") for src in raw["file_mounts"].values())
    commands = " ".join(str(c) for key in raw if key.endswith("_commands") for c in raw[key])
    assert not re.search(r"AWS_[A-Z_]*=|--password|auth_token=", commands)
    # the token stays out of the synced checkout: nothing of the kind is tracked
    assert not (PATH.parent / ".ray").exists() and not (PATH.parent / "auth_token").exists()
