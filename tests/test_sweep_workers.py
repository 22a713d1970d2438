"""A sweep trial that asks for several workers trains each seed on Ray Train
(TorchTrainer, gloo on the CPU) and ends where the one-process trainer ends."""

from __future__ import annotations

import pytest
import torch

import sal_ray
from sal_ray import Config, fit

pytestmark = pytest.mark.ray
mlflow = pytest.importorskip("mlflow")

FIXED = {"width": 32, "batch_size": 32, "n_areas": 4, "epochs": 2, "dtype": "float64",
         "lr": 0.05}


def test_a_two_worker_trial_matches_the_single_process_run(ray_local, tmp_path, mlflow_uri):
    res = sal_ray.tune("digits", ["sal"], space={"n_areas": [4]}, sampler="grid",
                       fixed={k: v for k, v in FIXED.items() if k != "n_areas"},
                       tracking_uri=mlflow_uri, storage_path=tmp_path / "ray", name="workers",
                       experiment="workers", resources={"workers": 2, "cpu": 1},
                       log_model="all", verbose=0)
    row = res.trials.iloc[0]
    assert row.status == "completed"
    reference = fit(Config().replace(**FIXED, seed=0))
    assert row.final_val_loss_mean == pytest.approx(reference.final["val_loss"], abs=1e-12)

    client = mlflow.MlflowClient(mlflow_uri)
    runs = [r for r in client.search_runs([res.experiment_id], "tags.sweep = 'workers'")
            if r.data.tags.get("kind") != "sweep"]
    assert len(runs) == 1 and runs[0].data.tags["status"] == "completed"
    run = runs[0]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [1, 2]
    assert run.data.params["params_active"] == str(reference.counts["params_active"])
    # the weights logged from the workers' checkpoint are the one-process weights
    path = client.download_artifacts(run.info.run_id, "model/state_dict_s0.pt", str(tmp_path))
    logged = torch.load(path, weights_only=True)
    for name, tensor in reference.net.state_dict().items():
        assert torch.allclose(logged[name], tensor, rtol=0, atol=1e-12), name


def test_workers_and_layout_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(sal_ray.ConfigError) as info:
        sal_ray.tune("digits", ["bp"], space={"lr": [0.1]}, sampler="grid",
                     resources={"workers": 2}, layout="layer", dry_run=True,
                     storage_path=tmp_path)
    assert info.value.option == "layout"
    with pytest.raises(sal_ray.ConfigError) as info:
        sal_ray.tune("digits", ["sal"], space={"lr": [0.1]}, sampler="grid",
                     resources={"workers": 1.5}, dry_run=True, storage_path=tmp_path)
    assert info.value.option == "resources" and "workers" in str(info.value)
