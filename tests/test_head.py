"""The sweep's last hint, how to open the MLflow UI (sal_ray/sweep/head.py): on a
launcher's head it is a command for the laptop, never the head's private address."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("ray")

from sal_ray.sweep import head, ray_compat  # noqa: E402

HEAD = {"cluster_name": "sal-ray", "auth": {"ssh_user": "ubuntu"}}


def this_machines_address() -> str:
    """An address of this machine other than loopback when it has one (a head's
    private address), found without sending anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: a route is looked up, nothing sent
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def test_on_a_head_the_hint_is_a_tunnel_from_the_laptop_not_the_private_address():
    address = this_machines_address()
    hint = head.ui_hint(f"http://{address}:5000", HEAD)
    assert "ray attach CLUSTER.yaml" in hint and "-p 5000" in hint
    assert "http://127.0.0.1:5000" in hint
    assert "ssh -L 5000:localhost:5000 ubuntu@HEAD" in hint
    assert "cluster 'sal-ray'" in hint
    if address != "127.0.0.1":
        assert address not in hint
    assert "-p 5123" in head.ui_hint("http://localhost:5123", HEAD)


def test_a_server_on_another_machine_and_a_laptop_keep_the_address():
    # 192.0.2.0/24 (TEST-NET-1) is no address of this machine
    assert head.ui_hint("http://192.0.2.7:5000", HEAD) == "open http://192.0.2.7:5000 in a browser"
    assert head.ui_hint("http://127.0.0.1:5000", None) == "open http://127.0.0.1:5000 in a browser"
    assert not head.is_this_machine("192.0.2.7") and head.is_this_machine("127.0.0.1")
    assert not head.is_this_machine("no-such-host.invalid")


def test_a_sqlite_store_on_the_head_is_opened_through_the_tunnel_or_fetched():
    hint = head.ui_hint("sqlite:////home/ubuntu/mlflow.db", HEAD)
    assert "ray attach CLUSTER.yaml" in hint and "-p 5000" in hint
    assert "mlflow ui --backend-store-uri sqlite:////home/ubuntu/mlflow.db" in hint
    assert "scripts/fetch_results.sh CLUSTER.yaml" in hint


def test_the_head_is_known_by_the_config_ray_up_leaves_there(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_compat.launcher_config() is None
    assert head.ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000 in a browser"
    (tmp_path / "ray_bootstrap_config.yaml").write_text(
        "cluster_name: sal-ray-local\nauth: {ssh_user: me}\n")
    assert "ray attach CLUSTER.yaml (the config you ran `ray up` with, cluster " \
           "'sal-ray-local') -p 5000" in head.ui_command("http://127.0.0.1:5000")
    (tmp_path / "ray_bootstrap_config.yaml").write_text("a: [unclosed\n")  # torn: no head
    assert ray_compat.launcher_config() is None
