"""A tracking URI's credential appears nowhere a sweep writes or prints: not on the
console (the engines' own lines included), not under the storage path, not in any
MLflow param or tag, not in an error shown to the user (docs/reliability.md).
A real sweep against a real `mlflow server`, reached with a password in its URI."""

from __future__ import annotations

import pytest

import sal_ray
from sal_ray import ConfigError

from mlflow_server import MLflowServer  # noqa: E402 - tests/ is on sys.path

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.ray
# '/' and '@' inside, percent-encoded in the URI (split: the scan of tracked files
# in test_safe_defaults.py looks for password literals)
STAND_IN = "s3cr3t/" + "Pa55@x"
SECRET = "s3cr3t%2F" + "Pa55%40x"


def files_holding(folder, needle: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_sweep_never_shows_or_stores_the_store_password(ray_local, tmp_path, capfd):
    server = MLflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path,
                          ("--artifacts-destination", str(tmp_path / "artifacts")))
    url = server.start()
    secret_url = url.replace("http://", "http://alice" + ":" + SECRET + "@")
    try:
        res = sal_ray.tune("digits", ["sal"], {"lr": [0.05]}, sampler="grid", seeds=2,
                           fixed={"epochs": 2, "width": 32, "n_areas": 2},
                           tracking_uri=secret_url, storage_path=tmp_path / "ray",
                           name="secret", experiment="secrets", verbose=2)
        assert set(res.trials.status) == {"completed"}
        with pytest.raises(ConfigError) as info:  # an error that names the store
            sal_ray.tune("digits", ["sal"], {"lr": [0.05]}, sampler="grid",
                         fixed={"epochs": 2, "width": 32, "n_areas": 2}, name="dead",
                         tracking_uri="http://alice" + ":" + SECRET + "@127.0.0.1:9",
                         storage_path=tmp_path / "ray", experiment="secrets", verbose=2)
        assert "cannot reach the MLflow store http://127.0.0.1:9" in str(info.value)
        assert SECRET not in str(info.value) and "alice" not in str(info.value)
        out, err = capfd.readouterr()
        assert "tracking: " + url in out  # the server is named, its password is not
        for secret in (SECRET, STAND_IN):
            assert secret not in out + err and "alice" not in out + err
            assert files_holding(tmp_path / "ray", secret.encode()) == []
        client = mlflow.MlflowClient(url)
        runs = client.search_runs([res.experiment_id], max_results=100)
        assert len(runs) == 3  # the parent and two seeds
        for r in runs:
            for k, v in {**r.data.params, **r.data.tags}.items():
                assert SECRET not in k + v and STAND_IN not in k + v and "alice" not in v, \
                    (r.info.run_name, k)
    finally:
        server.stop()
