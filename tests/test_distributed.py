"""Data parallelism without Ray: 2 gloo workers on the CPU against the
single-process trainer, in float64, on the same data order and seed.

One spawned process group runs every multi-worker job (process start-up is the
expensive part on a small machine); the tests then read its results.
"""

import os

import pytest
import torch

from sal_ray import Config, fit
from sal_ray.distributed import Group, spawn_fit
from sal_ray.distributed.data_parallel import shard
from sal_ray.trainer import CHECKPOINT_NAME, build

# lr large enough that two epochs move the weights far beyond round-off, so a
# wrong gradient scale would show; float64 so round-off is ~1e-16.
BASE = Config().replace(width=16, epochs=2, dtype="float64", lr=0.05, batch_size=64)
JOBS = {
    "sal": BASE.replace(method="sal", n_areas=4),
    "bp": BASE.replace(method="bp"),
    "moe": BASE.replace(method="moe", n_areas=4),
    # 1437 = 4 * 359 + 1: the last global batch has one sample, so one worker's
    # shard is empty; per-area gradient scale needs the global area counts
    "sal_area_scale": BASE.replace(method="sal", n_areas=4, batch_size=359, epochs=1,
                                   area_grad_scale="area", routed="all"),
}
RESUMED = BASE.replace(method="sal", n_areas=4, routed="hidden")


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    """Runs on 2 workers: the JOBS, a first epoch checkpointed by the workers, and a
    second epoch on the workers resumed from a single-process checkpoint."""
    root = tmp_path_factory.mktemp("dp")
    two_to_one, one_to_two = str(root / "two_to_one"), str(root / "one_to_two")
    fit(RESUMED.replace(epochs=1), checkpoint_dir=one_to_two)  # 1 process, epoch 1
    cfgs = [*JOBS.values(), RESUMED.replace(epochs=1), RESUMED]
    dirs = [None] * len(JOBS) + [two_to_one, one_to_two]
    results = spawn_fit(cfgs, 2, checkpoint_dir=dirs)
    return dict(zip([*JOBS, "two_to_one", "one_to_two"], results)), two_to_one


def assert_same_weights(net, ref_net, init_net):
    """Equal to float64 round-off, and the training moved them far beyond it."""
    moved = 0.0
    for (k, a), b, w0 in zip(net.state_dict().items(), ref_net.state_dict().values(),
                             init_net.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), (k, (a - b).abs().max().item())
        moved = max(moved, (b - w0).abs().max().item())
    assert moved > 1e-3


@pytest.mark.parametrize("name", list(JOBS))
def test_two_workers_match_one_process(dp, name):
    results, _ = dp
    cfg, got = JOBS[name], results[name]
    ref = fit(cfg)
    assert got.status == "completed"
    assert_same_weights(got.net, ref.net, build(cfg).net)
    for a, b in zip(got.history, ref.history):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
        assert {k: v for k, v in a.items() if k.startswith("area")} == \
               {k: v for k, v in b.items() if k.startswith("area")}
    assert got.config["num_workers"] == 2 and got.config["layout"] == "data_parallel"
    assert got.config["params_total"] == ref.config["params_total"]


def test_checkpoint_from_two_workers_resumes_on_one(dp, tmp_path):
    results, two_to_one = dp
    assert [m["epoch"] for m in results["two_to_one"].history] == [1]
    assert os.path.exists(os.path.join(two_to_one, CHECKPOINT_NAME))
    resumed = fit(RESUMED, checkpoint_dir=two_to_one)  # the core trainer, 1 process
    whole = fit(RESUMED)
    assert [m["epoch"] for m in resumed.history] == [1, 2]
    assert_same_weights(resumed.net, whole.net, build(RESUMED).net)


def test_checkpoint_from_one_process_resumes_on_two_workers(dp):
    results, _ = dp
    got, whole = results["one_to_two"], fit(RESUMED)
    assert [m["epoch"] for m in got.history] == [1, 2]
    assert "num_workers" not in got.history[0] and got.history[1]["num_workers"] == 2
    assert_same_weights(got.net, whole.net, build(RESUMED).net)


def test_shards_cover_the_global_batch_once():
    idx = torch.arange(13)
    for world in (1, 2, 3, 16):
        parts = [shard(idx, Group(rank, world)) for rank in range(world)]
        assert torch.equal(torch.cat(parts), idx)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_worker_group_is_the_core_trainer():
    from sal_ray.distributed import fit as fit_dp
    cfg = BASE.replace(method="sal", n_areas=2, epochs=1)
    got, ref = fit_dp(cfg, Group()), fit(cfg)
    for a, b in zip(got.net.state_dict().values(), ref.net.state_dict().values()):
        assert torch.equal(a, b)
