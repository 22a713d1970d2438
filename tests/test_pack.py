"""A pack's members train exactly as their separate runs (sal_ray.pack)."""

import pytest
import torch

from sal_ray import Config, ConfigError, fit
from sal_ray.pack import fit_pack

TINY = dict(width=32, epochs=3, batch_size=32, dtype="float64")


def assert_same(pack_results, separate):
    for p, s in zip(pack_results, separate):
        assert p.status == s.status == "completed"
        for k, v in s.net.state_dict().items():
            assert (p.net.state_dict()[k] - v).abs().max().item() <= 1e-12, k
        assert abs(p.final["val_loss"] - s.final["val_loss"]) < 1e-10
        assert p.final.keys() == s.final.keys()


@pytest.mark.parametrize("method,n_areas,kernel", [
    ("sal", 4, "onehot"), ("sal", 4, "gather"), ("sal", 4, "sorted"),
    ("bp", 1, "auto"), ("moe", 4, "onehot"), ("moe", 4, "sorted")])
def test_members_follow_their_separate_runs_exactly(method, n_areas, kernel):
    base = Config().replace(method=method, n_areas=n_areas, kernel=kernel, lr=0.05, **TINY)
    cfgs = [base.replace(seed=0), base.replace(seed=1, lr=0.02), base.replace(seed=2)]
    assert_same(fit_pack(cfgs), [fit(c) for c in cfgs])


@pytest.mark.parametrize("method", ["sal", "moe"])
def test_past_the_one_hot_size_auto_packs_padded_groups_exactly(method):
    from sal_ray.pack.routing import PACK_ONEHOT_MAX_MACS, PackRouting
    base = Config().replace(method=method, n_areas=16, lr=0.05, **{**TINY, "width": 256,
                                                                   "epochs": 2})
    cfgs = [base.replace(seed=0), base.replace(seed=1, lr=0.02), base.replace(seed=2)]
    assert 3 * 16 * 32 * 64 * 256 > PACK_ONEHOT_MAX_MACS  # first layer: padded
    x = torch.randn(3, 32, 64, dtype=torch.float64)
    assert PackRouting(x, torch.randint(0, 16, (3, 32)), 16, 256).kind == "padded"
    assert_same(fit_pack(cfgs), [fit(c) for c in cfgs])


def test_the_padded_layout_is_the_sorted_one_to_rounding():
    from sal_ray.pack.routing import PackRouting
    torch.manual_seed(0)
    M, N, B, I, O = 3, 8, 20, 5, 7
    x = torch.randn(M, B, I, dtype=torch.float64, requires_grad=True)
    areas = torch.randint(0, N, (M, B))
    areas[1] = 2  # one member in one area: a group of B rows, the rest empty
    w = torch.randn(M, N, I, O, dtype=torch.float64, requires_grad=True)
    b = torch.randn(M, N, O, dtype=torch.float64, requires_grad=True)
    d = torch.randn(M, B, O, dtype=torch.float64)
    out = {}
    for kind in ("sorted", "padded"):
        r = PackRouting(x, areas, N, O, kind)
        u = r.linear(w, b)
        grads = torch.autograd.grad((u * d).sum(), (x, w, b))  # MoE's autograd path
        closed = PackRouting(x.detach(), areas, N, O, kind).weight_grad(d)  # SAL's rule
        out[kind] = (u, *closed, *grads)
    for s, p in zip(out["sorted"], out["padded"]):
        assert (s - p).abs().max().item() <= 1e-12
    assert out["padded"][1][0, torch.tensor([a not in areas[0] for a in range(N)])].abs().max() == 0


def test_a_diverging_member_stops_alone():
    base = Config().replace(n_areas=4, **TINY)
    cfgs = [base.replace(lr=10.0), base.replace(seed=1, lr=0.05)]
    pack = fit_pack(cfgs)
    alone = [fit(c) for c in cfgs]
    assert pack[0].status == alone[0].status == "diverged"
    assert pack[0].message == alone[0].message
    assert_same(pack[1:], alone[1:])


def test_other_shapes_are_refused_by_name():
    with pytest.raises(ConfigError, match="'n_areas'"):
        fit_pack([Config().replace(n_areas=4), Config().replace(n_areas=2)])


def test_a_pack_checkpoint_resumes_the_whole_pack(tmp_path):
    base = Config().replace(n_areas=4, **TINY)
    cfgs = [base.replace(seed=s) for s in range(2)]
    whole = fit_pack(cfgs)
    fit_pack([c.replace(epochs=2) for c in cfgs], checkpoint_dir=str(tmp_path))
    resumed = fit_pack(cfgs, checkpoint_dir=str(tmp_path))
    assert [len(r.history) for r in resumed] == [3, 3]
    assert_same(resumed, whole)
    with pytest.raises(ConfigError, match="different configuration"):
        fit_pack([c.replace(lr=0.5) for c in cfgs], checkpoint_dir=str(tmp_path))


def test_fuse_false_runs_members_one_by_one_and_layouts_refuse_a_pack():
    from sal_ray.distributed.layouts import check_layout
    cfgs = [Config().replace(n_areas=4, fuse=False, **TINY).replace(seed=s) for s in range(2)]
    assert_same(fit_pack(cfgs), [fit(c) for c in cfgs])
    with pytest.raises(ConfigError, match="layout='data' cannot run a pack"):
        check_layout(Config(), "data", 2, pack=5)


def test_a_member_the_scheduler_stops_keeps_its_weights_and_stays_stopped(tmp_path):
    # after_epoch asks member 1 to stop after epoch 1: it ends "stopped" with the
    # weights of a 1-epoch run, the other trains on exactly; a checkpoint keeps it so
    base = Config().replace(n_areas=4, **TINY)
    cfgs = [base.replace(seed=0), base.replace(seed=1, lr=0.02)]
    asked = []

    def after_epoch(epoch, folder):
        asked.append(epoch)
        return [(1, "stopped by the scheduler")] if epoch == 1 else []

    pack = fit_pack(cfgs, checkpoint_dir=str(tmp_path), after_epoch=after_epoch)
    assert asked == [1, 2, 3]
    assert pack[1].status == "stopped" and pack[1].message == "stopped by the scheduler"
    assert len(pack[1].history) == 1
    one_epoch = fit(cfgs[1].replace(epochs=1))
    for k, v in one_epoch.net.state_dict().items():
        assert (pack[1].net.state_dict()[k] - v).abs().max().item() <= 1e-12, k
    assert_same(pack[:1], [fit(cfgs[0])])
    again = fit_pack([c.replace(epochs=4) for c in cfgs], checkpoint_dir=str(tmp_path))
    assert again[1].status == "stopped" and len(again[1].history) == 1
    assert len(again[0].history) == 4
