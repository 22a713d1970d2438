"""Layer parallelism for SAL: 2 gloo stages on the CPU against the single-process
trainer, in float64, on the same data order and seed; checkpoints moving between
2 stages and 1 process; BP and MoE refused.

One spawned process group runs every 2-stage job (process start-up is the
expensive part on a small machine); the tests then read its results.
"""

import functools
import os
import shutil

import pytest
import torch

from sal_ray import Config, fit
from sal_ray.checkpoint import CheckpointError
from sal_ray.config import ConfigError
from sal_ray.distributed import Group, check_layout, gather_checkpoint, spawn, spawn_fit
from sal_ray.distributed import fit as fit_workers
from sal_ray.distributed import layer_parallel as lp
from sal_ray.distributed import partition
from sal_ray.distributed.launch import _fit_jobs
from sal_ray.models import Architecture, param_counts
from sal_ray.trainer import CHECKPOINT_NAME, build

# batch 256 on Digits' 1437 training samples: 6 steps per epoch, 12 in two, with
# a short last batch; lr large enough that the weights move far beyond round-off
BASE = Config().replace(method="sal", width=16, n_areas=4, epochs=2, dtype="float64", lr=0.2,
                        batch_size=256)
JOBS = {
    # residual, depth 5: linear in and out, tanh + skip between; balanced cut
    "residual": (BASE.replace(arch="residual", depth=5, routed="hidden"), None),
    # mlp with every layer routed (the output layer too), cut given by hand; the
    # per-area gradient scale is layer-local too
    "mlp_all": (BASE.replace(arch="mlp", depth=3, routed="all", area_grad_scale="area"), [2]),
}
# its own selector rate: a checkpoint must carry both optimizer groups' settings
RESUMED = BASE.replace(arch="residual", depth=4, routed="hidden", lr_sel=0.1)
# written with stage 1 = the unrouted output layer alone, so that stage has no
# selector group and the gathered optimizer state must still be the whole net's
RESUMED_CUT = [3]


@pytest.fixture(scope="module")
def lp_runs(tmp_path_factory):
    """On 2 stages: the JOBS, a first epoch checkpointed by the stages, and a second
    epoch resumed from a single-process checkpoint."""
    root = tmp_path_factory.mktemp("lp")
    two_to_one, one_to_two = str(root / "two_to_one"), str(root / "one_to_two")
    fit(RESUMED.replace(epochs=1), checkpoint_dir=one_to_two)  # 1 process, epoch 1
    jobs = [{"config": cfg.to_flat(), "layout": "layer", "boundaries": cut}
            for cfg, cut in JOBS.values()]
    jobs += [{"config": RESUMED.replace(epochs=1).to_flat(), "layout": "layer",
              "checkpoint_dir": two_to_one, "boundaries": RESUMED_CUT},
             {"config": RESUMED.to_flat(), "layout": "layer", "checkpoint_dir": one_to_two}]
    results = spawn(_fit_jobs, 2, jobs)
    return dict(zip([*JOBS, "two_to_one", "one_to_two"], results)), two_to_one, one_to_two


def reference(cfg: Config):
    """The single-process run of `cfg` (each reference is trained once per session)."""
    return _reference(tuple(cfg.to_flat().items()))


@functools.lru_cache(maxsize=None)
def _reference(flat):
    return fit(Config.from_flat(dict(flat)))


def assert_same_weights(net, ref_net, init_net):
    """Equal to float64 round-off, every tensor present, and training moved them
    far beyond round-off."""
    got, ref, init = net.state_dict(), ref_net.state_dict(), init_net.state_dict()
    assert got.keys() == ref.keys()
    moved = 0.0
    for k in ref:
        assert torch.allclose(got[k], ref[k], rtol=0, atol=1e-12), (k, (got[k] - ref[k]).abs().max())
        moved = max(moved, (ref[k] - init[k]).abs().max().item())
    assert moved > 1e-2


@pytest.mark.parametrize("name", list(JOBS))
def test_two_stages_match_one_process(lp_runs, name):
    results, *_ = lp_runs
    (cfg, cut), got = JOBS[name], results[name]
    ref = reference(cfg)
    assert got.status == "completed"
    assert_same_weights(got.net, ref.net, build(cfg).net)
    assert len(got.history) == len(ref.history) == 2
    for a, b in zip(got.history, ref.history):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
        assert {k: v for k, v in a.items() if k.startswith("area")} == \
               {k: v for k, v in b.items() if k.startswith("area")}
    arch = build(cfg).net.arch
    bounds = partition.stage_bounds(arch, "sal", 2, cut)
    assert got.config["stage_bounds"] == ",".join(map(str, bounds))
    assert got.config["layout"] == "layer_parallel" and got.config["num_workers"] == 2
    assert got.config["params_total"] == ref.config["params_total"]


def test_stage_shards_and_manifest(lp_runs):
    _, two_to_one, one_to_two = lp_runs
    names = sorted(os.listdir(two_to_one))
    assert names == ["stage-0-of-2.e00001.pt", "stage-1-of-2.e00001.pt", "stages.json"]
    # the second run resumed from a core checkpoint and wrote epoch 2 beside it:
    # the stale shards of epoch 1 are gone, the core file is left as it was
    names = sorted(os.listdir(one_to_two))
    assert names == [CHECKPOINT_NAME, "stage-0-of-2.e00002.pt", "stage-1-of-2.e00002.pt",
                     "stages.json"]
    # each shard holds only its stage's layers, under the full net's key names
    for rank, layers in ((0, {0, 1, 2}), (1, {3})):
        # plain tensors and values: it loads without unpickling any object
        shard = torch.load(os.path.join(two_to_one, f"stage-{rank}-of-2.e00001.pt"),
                           weights_only=True)
        assert {int(k.split(".")[1]) for k in shard["net"]} == layers
        assert len(shard["optimizer"]["param_groups"]) == (2 if rank == 0 else 1)


def test_checkpoint_from_two_stages_resumes_in_one_process(lp_runs, tmp_path):
    results, two_to_one, _ = lp_runs
    assert [m["epoch"] for m in results["two_to_one"].history] == [1]
    core = str(tmp_path / "core")
    gather_checkpoint(two_to_one, core)
    resumed = fit(RESUMED, checkpoint_dir=core)  # the core trainer, 1 process
    whole = reference(RESUMED)
    assert [m["epoch"] for m in resumed.history] == [1, 2]
    assert resumed.history[0]["num_workers"] == 2
    assert_same_weights(resumed.net, whole.net, build(RESUMED).net)


def test_checkpoint_from_two_stages_resumes_on_one_stage(lp_runs):
    """Shards written with one cut are read by a layout with another (here one
    stage holding every layer), without any gather step."""
    _, two_to_one, _ = lp_runs
    got = lp.fit(RESUMED, Group(), resume_dir=two_to_one, gather_net=True)
    assert [m["epoch"] for m in got.history] == [1, 2]
    assert_same_weights(got.net, reference(RESUMED).net, build(RESUMED).net)


def test_checkpoint_from_one_process_resumes_on_two_stages(lp_runs):
    results, *_ = lp_runs
    got, whole = results["one_to_two"], reference(RESUMED)
    assert [m["epoch"] for m in got.history] == [1, 2]
    assert "num_workers" not in got.history[0] and got.history[1]["num_workers"] == 2
    assert_same_weights(got.net, whole.net, build(RESUMED).net)


def test_checkpoint_of_another_configuration_is_refused(lp_runs):
    _, two_to_one, _ = lp_runs
    with pytest.raises(ConfigError, match="lr"):
        lp.fit(RESUMED.replace(lr=0.1), Group(), resume_dir=two_to_one)


def _drop_option(path, option):
    """Rewrite a checkpoint file as a version before `option` existed wrote it."""
    state = torch.load(path, weights_only=True)
    del state["config"][option]
    torch.save(state, path)


def test_a_checkpoint_from_before_an_option_resumes_in_the_layer_layout(lp_runs, tmp_path):
    """As in one process (test_precision): an option newer than the checkpoint
    counts as its default there, for a core checkpoint and for stage shards."""
    _, two_to_one, _ = lp_runs
    core, shards = tmp_path / "core", tmp_path / "shards"
    fit(RESUMED.replace(epochs=1), checkpoint_dir=str(core))
    shutil.copytree(two_to_one, shards)
    for path in [core / CHECKPOINT_NAME, *shards.glob("stage-*.pt")]:
        _drop_option(path, "precision")  # RESUMED runs the default, fp32
    for folder in (core, shards):
        got = lp.fit(RESUMED, Group(), resume_dir=str(folder), gather_net=True)
        assert [m["epoch"] for m in got.history] == [1, 2]
        assert_same_weights(got.net, reference(RESUMED).net, build(RESUMED).net)
    # an option the run sets away from its default still has to match
    for path in shards.glob("stage-*.pt"):
        _drop_option(path, "lr_sel")  # RESUMED has lr_sel=0.1, the default is None
    with pytest.raises(ConfigError, match="lr_sel"):
        lp.fit(RESUMED, Group(), resume_dir=str(shards))


def test_an_unreadable_shard_or_manifest_is_named(lp_runs, tmp_path):
    _, two_to_one, _ = lp_runs
    broken = tmp_path / "broken"
    shutil.copytree(two_to_one, broken)
    (broken / "stage-1-of-2.e00001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="stage-1-of-2.e00001.pt"):
        lp.fit(RESUMED, Group(), resume_dir=str(broken))
    (broken / "stages.json").write_text("{")
    with pytest.raises(CheckpointError, match="stages.json"):
        lp.fit(RESUMED, Group(), resume_dir=str(broken))


def test_a_stage_holds_only_its_own_layers():
    """Areas, selectors and feedback of its layers, nothing of the others'; no
    process group is needed to build one."""
    cfg = JOBS["residual"][0]
    for rank in (0, 1):
        layout = lp.LayerParallel(Group(rank, 2))
        run = build(cfg, layout)  # the core's one build path, with the layer layout
        lo, hi = layout.bounds[rank], layout.bounds[rank + 1]
        held = run.net.state_dict()
        assert {int(k.split(".")[1]) for k in held} == set(range(lo, hi))
        sizes = partition.layer_sizes(run.net.arch)
        assert sum(t.numel() for t in held.values()) == sum(sizes[lo:hi])
        assert (len(run.x_train) > 0) == (rank == 0)  # later stages never read the data


def test_one_stage_is_the_core_trainer():
    cfg = BASE.replace(arch="residual", depth=3, routed="hidden", epochs=1)
    got, ref = lp.fit(cfg, Group(), gather_net=True), fit(cfg)
    for a, b in zip(got.net.state_dict().values(), ref.net.state_dict().values()):
        assert torch.equal(a, b)
    assert got.history[0]["val_loss"] == ref.history[0]["val_loss"]


@pytest.mark.parametrize("method", ["bp", "moe"])
def test_backprop_methods_are_refused(method, tmp_path):
    cfg = BASE.replace(method=method, n_areas=1 if method == "bp" else 4)
    calls = [lambda: spawn_fit(cfg, 2, layout="layer"),   # before any process starts
             lambda: fit_workers(cfg, Group(), layout="layer"),
             lambda: lp.fit(cfg, Group())]
    for call in calls:
        with pytest.raises(ConfigError) as err:
            call()
        assert err.value.option == "layout"
        assert f"method '{method}'" in str(err.value) and "layout='data'" in str(err.value)
    check_layout(cfg, "data", 2)  # the data layout serves every method


def test_fit_distributed_refuses_before_starting_ray():
    from sal_ray.distributed import fit_distributed
    with pytest.raises(ConfigError, match="method 'moe'"):
        fit_distributed(BASE.replace(method="moe"), num_workers=2, layout="layer")
    with pytest.raises(ConfigError, match="must be one of data, layer"):
        fit_distributed(BASE, num_workers=2, layout="pipeline")


def test_more_stages_than_layers_is_refused():
    with pytest.raises(ConfigError, match="at least one layer"):
        check_layout(BASE.replace(depth=2), "layer", 3)


def test_balanced_bounds_minimise_the_largest_stage():
    # [4 1 1 | 1 5] is the only 2-stage cut whose largest stage is 6 (others >= 7)
    assert partition.balanced_bounds([4, 1, 1, 1, 5], 2) == [0, 3, 5]
    assert partition.balanced_bounds([5, 1, 1, 1, 4], 2) == [0, 2, 5]
    assert partition.balanced_bounds([5, 1, 1, 1, 5], 3) == [0, 1, 4, 5]
    assert partition.balanced_bounds([3, 3, 3], 3) == [0, 1, 2, 3]
    assert partition.balanced_bounds([7], 1) == [0, 1]
    with pytest.raises(ValueError):
        partition.balanced_bounds([1, 1], 3)


def test_layer_sizes_add_up_to_the_parameter_counts():
    # the Width protocol's 1B-active net, costed without allocating it
    cfg = Config().replace(arch="residual", depth=64, width=4096, n_areas=4, routed="hidden")
    arch = Architecture.from_config(cfg, 1024, 10)
    sizes, c = partition.layer_sizes(arch), param_counts(arch, "sal")
    assert sum(sizes) == c.total + c.router + c.fixed
    # the wide input layer (1024 in) is lighter than a hidden one, the output layer
    # is tiny, so the balanced cut gives stage 0 the input layer and 31 hidden ones
    assert partition.stage_bounds(arch, "sal", 2) == [0, 32, 64]
    assert partition.stage_bounds(arch, "sal", 2, [10]) == [0, 10, 64]
    for bad in ([0], [64], [10, 20], []):
        with pytest.raises(ValueError, match="boundaries"):
            partition.stage_bounds(arch, "sal", 2, bad)


def test_bf16_is_refused_by_the_layer_layout():
    with pytest.raises(ConfigError) as info:
        check_layout(Config().replace(precision="bf16"), "layer", 2)
    assert info.value.option == "precision"
