"""ray_cluster.yaml (AWS) and ray_cluster.local.yaml (on-premise) are valid for
`ray up`: filled with the provider's defaults and checked against the schema
bundled in the installed Ray, as `ray up` does. The on-premise file differs from
the AWS one only where its header says. tests/test_launcher.py runs the on-premise
one for real."""

from __future__ import annotations

import copy
import pathlib
import re

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("jsonschema")
util = pytest.importorskip("ray.autoscaler._private.util")

REPO = pathlib.Path(__file__).resolve().parents[1]
PATH = REPO / "ray_cluster.yaml"
LOCAL = REPO / "ray_cluster.local.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PATH.read_text())


@pytest.fixture(scope="module")
def local():
    return yaml.safe_load(LOCAL.read_text())


@pytest.mark.parametrize("path", [PATH, LOCAL], ids=lambda p: p.name)
def test_cluster_config_validates_against_rays_schema(path):
    prepared = util.prepare_config(yaml.safe_load(path.read_text()))
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


# ---- the on-premise variant ---------------------------------------------------------

# what ray_cluster.local.yaml changes, as its header lists; everything else is the same
ON_PREMISE_CHANGES = {"cluster_name", "provider", "auth", "setup_commands",
                      "docker", "available_node_types", "head_node_type",  # none on-premise
                      "max_workers", "upscaling_speed", "idle_timeout_minutes"}


def test_on_premise_is_the_aws_config_with_the_documented_changes_only(raw, local):
    for key in (set(raw) | set(local)) - ON_PREMISE_CHANGES:
        assert local.get(key) == raw.get(key), key
    assert not {"docker", "available_node_types", "head_node_type"} & set(local)
    assert local["cluster_name"] != raw["cluster_name"]  # both can be up at once
    # a venv from the machine's Python first on PATH, then the same install
    venv, path = local["setup_commands"][:2]
    assert "python3.11 -m venv ~/.venvs/sal_ray" in venv and ".venvs/sal_ray/bin" in path
    assert local["setup_commands"][2:] == raw["setup_commands"]
    prepared = util.prepare_config(copy.deepcopy(local))
    (node,) = prepared["available_node_types"].values()  # one type: the listed machines
    assert prepared["max_workers"] == len(local["provider"]["worker_ips"])
    assert node["min_workers"] == node["max_workers"] == prepared["max_workers"]


def test_on_premise_mistakes_are_caught_by_the_same_check(local):
    typed = copy.deepcopy(local)
    typed["available_node_types"] = {"head": {"resources": {}, "node_config": {}}}
    with pytest.raises(Exception, match="available_node_types is not supported"):
        util.prepare_config(typed)
    no_workers = copy.deepcopy(local)
    no_workers["provider"]["worker_ip"] = no_workers["provider"].pop("worker_ips")
    with pytest.raises(Exception, match="head_ip. and list of .worker_ips"):
        util.prepare_config(no_workers)


def test_on_premise_credentials_are_paths_on_the_laptop(local):
    """The SSH key is named by its path on your machine, never written here."""
    text = LOCAL.read_text()
    assert "PRIVATE KEY" not in text and not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert set(local["auth"]) == {"ssh_user", "ssh_private_key"}
    assert local["auth"]["ssh_private_key"].startswith("~/")
    secret = re.compile(r"(?i)secret|password|private_key|access_key|credential|token")
    named = [p for p, k in _keys(local) if secret.search(str(k))]
    assert named == ["/auth/ssh_private_key", "/file_mounts/~/.ray/auth_token"]


@pytest.mark.parametrize("path", [PATH, LOCAL], ids=lambda p: p.name)
def test_the_heads_mlflow_admits_the_cluster_address_and_localhost_only(path):
    """MLflow checks the Host header: the list is the tracking URI's host:port (what
    the driver and the workers use) and localhost on any port (a tunnel), and it
    replaces MLflow's default (localhost and private ranges, which missed a head
    whose address is outside them). tests/test_launcher.py exercises it."""
    cfg = yaml.safe_load(path.read_text())
    server = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert len(server) == 1
    hosts = re.search(r'--allowed-hosts "([^"]+)"', server[0]).group(1).split(",")
    assert hosts == ["${MLFLOW_TRACKING_URI#http://}", "localhost:*", "127.0.0.1:*"]
    assert "--host 0.0.0.0 --port 5000" in server[0]
    setup = " ".join(cfg["head_setup_commands"])
    assert "MLFLOW_TRACKING_URI=http://$(hostname -I | awk '{print $1}'):5000" in setup
    # ray up returns only once the server listens (or fails with its log)
    wait = cfg["head_start_ray_commands"][cfg["head_start_ray_commands"].index(server[0]) + 1]
    assert "/dev/tcp/127.0.0.1/5000" in wait and "server.log; exit 1" in wait
