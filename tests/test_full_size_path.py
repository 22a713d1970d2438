"""The path benchmarks/full_size.py takes with the 1B-parameter net, at width 64:
the memory budget's refusal before any allocation, the layer layout through Ray
Train, its checkpoints persisted by hard link, a SIGKILLed worker, a resume on
another worker count that ends on the uninterrupted run's weights exactly, and
the large-weights rule with its threshold lowered (a reference in MLflow, not an
upload; an explicit upload still works)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal

import pytest
import torch

from sal_ray import budget
from sal_ray.config import Config, ConfigError
from sal_ray.models import Architecture, param_counts
from sal_ray.trainer import Layout, build

# the Width protocol's net (residual, tanh, routed hidden layers), small
CFG = Config().replace(method="sal", arch="residual", depth=4, width=64, n_areas=1,
                       routed="hidden", dataset="digits", batch_size=16, max_samples=32,
                       epochs=2, lr=1e-2, eval_batch_size=64)


class Watched(Layout):
    """One process, remembering whether it was asked to allocate the net."""
    made = False

    def make_net(self, cfg, arch):
        Watched.made = True
        return super().make_net(cfg, arch)


def test_the_budget_counts_what_sal_ray_params_prints_and_refuses_before_allocating(capsys):
    from sal_ray.cli import main
    big = CFG.replace(width=4096, depth=64, n_areas=2, d_f=10)
    assert main(["params", "--method", "sal", "--arch", "residual", "--depth", "64",
                 "--width", "4096", "--n-areas", "2", "--d-f", "10", "--routed", "hidden"]) == 0
    printed = {line.split()[0]: int(line.split()[-1].replace(",", ""))
               for line in capsys.readouterr().out.splitlines() if line.startswith("params_")}
    arch = Architecture.from_config(big, 64, 10)
    est = budget.estimate(big, arch, n_samples=64)  # max_samples 32 of each split
    c = param_counts(arch, "sal")
    assert [c.total, c.router, c.fixed] == [printed["params_total"], printed["params_router"],
                                            printed["params_fixed"]]
    assert est.state == 4 * (c.total + c.router + c.fixed)      # float32
    assert est.grads == 4 * (c.total + c.router)
    assert est.total > 16e9                                      # 2.08B areas + grads

    Watched.made = False
    with pytest.raises(ConfigError) as err:
        build(big.replace(memory_limit=12 * 10 ** 9), Watched())
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("option 'memory_limit': ")
    assert f"needs about {est.total / 1e9:.2f} GB" in msg and "memory_limit is 12.00 GB" in msg
    assert not Watched.made                                      # refused before the net
    run = build(CFG.replace(memory_limit=10 ** 10), Watched())   # a small one fits and builds
    assert Watched.made and run.counts.total == param_counts(run.net.arch, "sal").total


def test_fit_distributed_refuses_workers_that_cannot_fit_before_ray_starts():
    from sal_ray.distributed import fit_distributed
    from sal_ray.distributed.layouts import worker_estimates
    big = CFG.replace(width=4096, depth=64, n_areas=2, d_f=10, memory_limit=12 * 10 ** 9)
    per = worker_estimates(big, "layer", 2)
    assert abs(per[0].state - per[1].state) < 0.05 * per[0].state  # balanced stages
    with pytest.raises(ConfigError, match=r"2 layer-layout workers on this machine needs "
                                          rf"about {sum(e.total for e in per) / 1e9:.2f} GB"):
        fit_distributed(big, num_workers=2, layout="layer", storage_path="/nonexistent/ray")
    # four stages hold about a quarter of the state each (one GPU each fits less)
    four = worker_estimates(big, "layer", 4)
    assert max(e.state for e in four) < 0.27 * sum(e.state for e in per)
    assert sum(e.state for e in four) == sum(e.state for e in per)


def test_persisting_a_checkpoint_links_its_files_instead_of_copying(tmp_path):
    from sal_ray.distributed.ray_train import link_files
    src = tmp_path / "worker" / "out"
    src.mkdir(parents=True)
    (src / "stage-0-of-2.e00001.pt").write_bytes(os.urandom(1 << 16))
    (src / "stages.json").write_text("{}")
    assert link_files(str(src), str(tmp_path / "run" / "epoch_00001")) == 0  # bytes copied
    for name in ("stage-0-of-2.e00001.pt", "stages.json"):
        assert os.stat(src / name).st_ino == os.stat(tmp_path / "run" / "epoch_00001" / name).st_ino


def kill_rank(rank: int, epoch: int, metrics: dict) -> dict:
    """report_metrics hook: SIGKILL worker `rank` once epoch `epoch` is checkpointed
    locally, before Ray persists it (so Ray's newest checkpoint is the epoch before)."""
    import ray.train
    if ray.train.get_context().get_world_rank() == rank and int(metrics["epoch"]) == epoch:
        os.kill(os.getpid(), signal.SIGKILL)
    return metrics


def weights(folder: str) -> dict:
    from sal_ray.distributed.layer_checkpoint import read_checkpoint
    return read_checkpoint(folder)["net"]


@pytest.mark.ray
def test_a_killed_worker_loses_nothing_and_resumes_on_another_worker_count(ray_local, tmp_path):
    import sys

    from ray import cloudpickle

    from sal_ray.distributed import fit_distributed
    # the workers cannot import this test module: ship `kill_rank` by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    store = str(tmp_path / "ray")
    ref = fit_distributed(CFG, 1, storage_path=store, name="ref", layout="layer", verbose=False,
                          cpus_per_worker=1)
    assert ref.status == "completed"
    with pytest.raises(Exception):  # noqa: B017 - Ray's error for a dead worker group
        fit_distributed(CFG, 2, storage_path=store, name="cut", layout="layer", verbose=False,
                        cpus_per_worker=1, report_metrics=functools.partial(kill_rank, 1, 2))
    saved = os.path.join(store, "cut", "epoch_00001")
    assert sorted(os.listdir(saved)) == ["stage-0-of-2.e00001.pt", "stage-1-of-2.e00001.pt",
                                         "stages.json"]
    assert not os.path.exists(os.path.join(store, "cut", "epoch_00002"))
    res = fit_distributed(CFG, 1, storage_path=store, name="resumed", layout="layer",
                          verbose=False, cpus_per_worker=1, resume_from=saved)
    assert res.status == "completed" and [h["epoch"] for h in res.history] == [1, 2]
    a, b = weights(ref.checkpoint_path), weights(res.checkpoint_path)
    assert sorted(a) == sorted(b) and len(a) == 4 * 3  # areas' weight, bias, feedback
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and 1 -> 2: the uninterrupted run's first epoch, finished on two workers
    one = fit_distributed(CFG.replace(epochs=1), 1, storage_path=store, name="one",
                          layout="layer", verbose=False, cpus_per_worker=1)
    two = fit_distributed(CFG, 2, storage_path=store, name="two", layout="layer", verbose=False,
                          cpus_per_worker=1, resume_from=one.checkpoint_path)
    assert all(torch.equal(v, weights(two.checkpoint_path)[k]) for k, v in a.items())


def test_weights_past_the_threshold_go_to_mlflow_as_a_reference(tmp_path, mlflow_uri):
    mlflow = pytest.importorskip("mlflow")
    from sal_ray.sweep.trial_runs import log_trial_summary
    from sal_ray.sweep.trial_state import TrialContext, TrialFolder
    from sal_ray.tracking.weights import checkpoint_reference

    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.create_experiment("full-size")
    ckpt = tmp_path / "ray" / "epoch_00002"
    ckpt.mkdir(parents=True)
    torch.save({"w": torch.randn(64, 64)}, ckpt / "stage-0-of-1.e00002.pt")
    (ckpt / "stages.json").write_text("{}")
    size = sum(p.stat().st_size for p in ckpt.iterdir())

    def logged(max_bytes, weights, key):
        ctx = TrialContext(sweep="s", tracking_uri=mlflow_uri, experiment_id=exp,
                           parent_run_id=None, fixed={}, searched={}, metrics=("val_acc",),
                           modes=("max",), seeds=1, base_seed=0, log_model="all",
                           flush_every_s=0.0, log_model_max_bytes=max_bytes)
        folder = TrialFolder(ctx)
        folder.outbox.create(key, "run", {}, None)  # a key names one MLflow run
        folder.seed_done({"seed": 0, "val_acc": 0.5}, weights)
        log_trial_summary(ctx, folder, [key], {"final_val_acc": 0.5, "mean_val_acc": 0.5}, {})
        assert folder.outbox.deliver(force=True)
        return folder.outbox.run_ids[key]

    # a multi-worker run's checkpoint over a lowered threshold: referenced where it lies
    run_id = logged(1024, str(ckpt), "multi")
    tags = client.get_run(run_id).data.tags
    ref = checkpoint_reference(str(ckpt))
    assert tags["model_logged"] == "reference" and tags["model_ref_path"] == str(ckpt)
    assert int(tags["model_ref_bytes"]) == size == ref["bytes"]
    assert tags["model_ref_sha256"] == ref["sha256"]
    files = {f["file"]: f for f in ref["files"]}
    pt = ckpt / "stage-0-of-1.e00002.pt"
    assert files[pt.name]["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/reference.json"]
    got = json.loads(open(client.download_artifacts(run_id, "model/reference.json",
                                                    str(tmp_path / "dl"))).read())
    assert got["sha256"] == ref["sha256"] and got["bytes"] == size

    # a one-process run's state dict over the threshold: saved once, referenced
    run_id = logged(1024, {"w": torch.randn(64, 64)}, "one")
    assert client.get_run(run_id).data.tags["model_logged"] == "reference"
    # the explicit request (no threshold) uploads it whatever its size
    run_id = logged(None, {"w": torch.ones(64, 64)}, "explicit")
    assert client.get_run(run_id).data.tags["model_logged"] == "true"
    [art] = client.list_artifacts(run_id, "model")
    back = torch.load(client.download_artifacts(run_id, art.path, str(tmp_path / "dl2")),
                      weights_only=True)
    assert torch.equal(back["w"], torch.ones(64, 64))


def test_the_outbox_stages_an_artifact_by_hard_link(tmp_path):
    from sal_ray.tracking.outbox import Outbox
    src = tmp_path / "weights.pt"
    src.write_bytes(os.urandom(4096))
    box = Outbox("sqlite:///unused.db", "0", tmp_path / "outbox")
    box.artifact("k", str(src), "model")
    staged = tmp_path / "outbox" / box.ops[-1]["file"]
    assert staged.read_bytes() == src.read_bytes()
    assert os.stat(staged).st_ino == os.stat(src).st_ino
