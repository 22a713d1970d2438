"""`fit_distributed` through Ray Train's real TorchTrainer: 2 CPU workers, gloo."""

import os

import pytest
import torch

from sal_ray import Config, fit
from sal_ray.trainer import CHECKPOINT_NAME, build, load_checkpoint

pytestmark = pytest.mark.ray

CFG = Config().replace(method="sal", n_areas=4, width=16, epochs=2, dtype="float64", lr=0.05,
                       batch_size=64)


@pytest.fixture
def ray_up(request):
    """The session's Ray from tests/conftest.py; a Ray of our own if it has none."""
    try:
        return request.getfixturevalue("ray_local")
    except pytest.FixtureLookupError:
        pass
    ray = pytest.importorskip("ray")  # imported only when a Ray test runs
    if not ray.is_initialized():
        # address="local": never join a cluster that $RAY_ADDRESS names
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        request.addfinalizer(ray.shutdown)
    return ray


def test_two_ray_workers_resume_a_single_process_checkpoint(ray_up, tmp_path):
    from sal_ray.distributed import fit_distributed

    first = str(tmp_path / "first_epoch")
    fit(CFG.replace(epochs=1), checkpoint_dir=first)  # epoch 1 in this process
    result = fit_distributed(CFG, num_workers=2, storage_path=str(tmp_path / "ray"),
                             name="resume-test", resume_from=first, verbose=False)
    assert result.status == "completed", result.message
    assert [m["epoch"] for m in result.history] == [1, 2]
    assert result.history[-1]["num_workers"] == 2
    # counts reach the params and rank 0's reported metrics
    assert result.config["params_total"] == 4330 and result.config["num_workers"] == 2
    metrics = result.ray_result.metrics
    assert metrics["epoch"] == 2 and metrics["params_active"] == 1210

    # Ray's checkpoint is the core format: the single-process trainer loads it
    assert result.run_path == os.path.join(str(tmp_path / "ray"), "resume-test")
    assert os.path.exists(os.path.join(result.checkpoint_path, CHECKPOINT_NAME))
    run = build(CFG)
    assert load_checkpoint(run, result.checkpoint_path)[0] == 2
    whole = fit(CFG)
    for (k, a), b in zip(run.net.state_dict().items(), whole.net.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), k
    assert metrics["val_loss"] == pytest.approx(whole.history[-1]["val_loss"], rel=1e-12)

    # the same (storage_path, name) resumes that run from its latest checkpoint,
    # as a restarted Tune trial does; here on one worker instead of two
    more = fit_distributed(CFG.replace(epochs=3), num_workers=1, storage_path=str(tmp_path / "ray"),
                           name="resume-test", verbose=False)
    assert [m["epoch"] for m in more.history] == [1, 2, 3]
    assert more.history[-1]["num_workers"] == 1
    run3 = build(CFG)
    assert load_checkpoint(run3, more.checkpoint_path)[0] == 3
    whole3 = fit(CFG.replace(epochs=3))
    for (k, a), b in zip(run3.net.state_dict().items(), whole3.net.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), k


def test_two_ray_workers_layer_parallel(ray_up, tmp_path):
    """layout="layer": both Train workers read their layers from a single-process
    checkpoint, each holds one stage and reports its own shard; Ray merges the
    workers' folders into one checkpoint, which gathers into a core checkpoint
    equal to the single-process run."""
    from sal_ray.distributed import fit_distributed, gather_checkpoint

    cfg = CFG.replace(arch="residual", depth=4, routed="hidden")
    first = str(tmp_path / "first_epoch")
    fit(cfg.replace(epochs=1), checkpoint_dir=first)  # epoch 1 in this process
    result = fit_distributed(cfg, num_workers=2, storage_path=str(tmp_path / "ray"),
                             name="layer-test", layout="layer", resume_from=first,
                             verbose=False)
    assert result.status == "completed", result.message
    assert result.config["layout"] == "layer_parallel" and result.config["num_workers"] == 2
    assert [m["epoch"] for m in result.history] == [1, 2]
    assert "num_workers" not in result.history[0] and result.history[1]["num_workers"] == 2
    names = set(os.listdir(result.checkpoint_path))
    assert {"stages.json", "stage-0-of-2.e00002.pt", "stage-1-of-2.e00002.pt"} <= names
    run = build(cfg)
    assert load_checkpoint(run, os.path.dirname(
        gather_checkpoint(result.checkpoint_path, str(tmp_path / "core"))))[0] == 2
    whole = fit(cfg)
    for (k, a), b in zip(run.net.state_dict().items(), whole.net.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), k
    assert result.ray_result.metrics["val_loss"] == pytest.approx(
        whole.history[-1]["val_loss"], rel=1e-12)
