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
