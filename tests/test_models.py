import pytest
import torch

from sal_ray.config import Config
from sal_ray.models import Architecture, Net, build_net, param_counts


def count(tensors):
    return sum(t.numel() for t in tensors)


@pytest.mark.parametrize("method,n_areas", [("sal", 4), ("moe", 4), ("bp", 1), ("sal", 1)])
def test_param_count_formula_matches_tensors(method, n_areas):
    cfg = Config().replace(method=method, n_areas=n_areas, arch="residual", depth=4, width=24,
                           routed="hidden")
    net = build_net(cfg, input_dim=10, n_classes=3)
    c = param_counts(net.arch, method)
    areas = [p for n, p in net.named_parameters() if ".areas." in n]
    routers = [p for n, p in net.named_parameters() if ".router." in n]
    assert c.total == count(areas)
    assert c.router == count(routers)
    assert c.fixed == count(net.buffers())
    assert c.active == count(l.areas.weight[0] for l in net.layers) + \
        count(l.areas.bias[0] for l in net.layers)
    assert count(net.parameters()) == c.total + c.router


def test_width_4096_depth_64_is_the_papers_1b_configuration():
    cfg = Config().replace(arch="residual", depth=64, width=4096, n_areas=4, routed="hidden")
    c = param_counts(Architecture.from_config(cfg, 1024, 10), "sal")
    assert 1.0e9 < c.active < 1.1e9          # ~1B active
    assert c.total > 4.0e9                    # over 4B total
    assert 1.0e9 < c.router < 1.1e9           # d_f = d_out routers add ~1B


def test_architectures_of_the_protocols():
    conv = Architecture.from_config(Config().replace(n_areas=16), 64, 10)
    assert [(l.d_in, l.d_out, l.activation, l.residual, l.n_areas) for l in conv.layers] == \
        [(64, 256, "relu", False, 16), (256, 10, "identity", False, 1)]
    deep = Architecture.from_config(
        Config().replace(arch="residual", depth=4, n_areas=4, routed="hidden"), 1024, 10)
    assert [(l.activation, l.residual, l.n_areas) for l in deep.layers] == \
        [("identity", False, 4), ("tanh", True, 4), ("tanh", True, 4), ("identity", False, 1)]


def test_methods_share_initial_area_weights():
    nets = [build_net(Config().replace(method=m, n_areas=n), 64, 10)
            for m, n in [("bp", 1), ("sal", 1), ("sal", 16), ("moe", 8)]]
    for net in nets[1:]:
        for a, b in zip(nets[0].layers, net.layers):
            assert torch.equal(a.areas.weight[0], b.areas.weight[0])


def test_shared_area_init_copies_one_draw():
    net = build_net(Config().replace(n_areas=4, area_init="shared"), 64, 10)
    w = net.layers[0].areas.weight
    assert all(torch.equal(w[0], w[k]) for k in range(4))
    net = build_net(Config().replace(n_areas=4), 64, 10)
    assert not torch.equal(net.layers[0].areas.weight[0], net.layers[0].areas.weight[1])


def test_feedback_distribution_and_scale():
    net = build_net(Config().replace(width=4096, feedback_scale=2.0), 64, 10)
    B = net.layers[0].feedback
    assert B.shape == (4096, 10)
    assert abs(B.std().item() - 2.0 / 4096 ** 0.5) < 0.02 * 2.0 / 4096 ** 0.5
    net = build_net(Config().replace(width=4096, feedback_dist="uniform"), 64, 10)
    B = net.layers[0].feedback
    a = 3 ** 0.5 / 4096 ** 0.5
    assert B.abs().max() <= a and abs(B.std().item() - 1 / 4096 ** 0.5) < 0.02 / 4096 ** 0.5
