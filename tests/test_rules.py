"""The SAL rule against docs/spec.md section 2, written out independently here in
float64 with a Python loop over samples (the library never loops over samples)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sal_ray.models import Architecture, LayerSpec, Net
from sal_ray.rules import SALRule, backprop_grads, sal_grads

torch.set_default_dtype(torch.float64)


def make_net(layers, n_classes, method="sal", kernel="auto", seed=3, d_f=None):
    net = Net(Architecture(tuple(layers), n_classes, d_f), method, seed=seed, kernel=kernel)
    return net.double()


def small_net(kernel="auto", seed=3):
    # routed ReLU input layer, routed residual tanh layer, plain output layer
    return make_net([LayerSpec(6, 8, "relu", False, 3), LayerSpec(8, 8, "tanh", True, 2),
                     LayerSpec(8, 4, "identity", False, 1)], 4, kernel=kernel, seed=seed)


def batch(n=7, d=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def phi(name, u):
    return {"relu": lambda v: torch.clamp(v, min=0), "tanh": torch.tanh,
            "identity": lambda v: v}[name](u)


def dphi(name, u):
    if name == "relu":
        return (u > 0).double()
    if name == "tanh":
        return 1 - torch.tanh(u) ** 2
    return torch.ones_like(u)


def reference_grads(net, X, Y, lam=1.0, output_local=True, area_scale="batch"):
    """The spec, sample by sample."""
    n, C = X.shape[0], net.arch.n_classes
    onehot = torch.eye(C)[Y]
    acts, h = [], X
    for layer in net.layers:
        s = layer.spec
        rows = []
        for i in range(n):
            x = h[i]
            if layer.router is not None:
                z = x @ layer.router.weight
                k = int(torch.argmax(z @ layer.router.prototypes))
            else:
                z, k = None, 0
            u = x @ layer.areas.weight[k] + layer.areas.bias[k]
            out = phi(s.activation, u) + (x if s.residual else 0)
            rows.append((x, z, k, u, out))
        acts.append(rows)
        h = torch.stack([r[4] for r in rows])
    E_top = (torch.softmax(h, 1) - onehot) / n
    grads = []
    for li, (layer, rows) in enumerate(zip(net.layers, acts)):
        s, B = layer.spec, layer.feedback
        dW = torch.zeros_like(layer.areas.weight)
        db = torch.zeros_like(layer.areas.bias)
        dWs = None if layer.router is None else torch.zeros_like(layer.router.weight)
        counts = torch.zeros(s.n_areas)
        for i, (x, z, k, u, out) in enumerate(rows):
            E = E_top[i].clone()
            if lam and (output_local or not layer.is_output):
                o = out @ B
                E = E + lam * (torch.softmax(o, 0) - onehot[i]) / n
            delta = dphi(s.activation, u) * (B @ E)
            dW[k] += torch.outer(x, delta)
            db[k] += delta
            counts[k] += 1
            if dWs is not None:
                target = torch.zeros(z.shape[0])
                target[Y[i]] = 1
                dWs += torch.outer(x, (torch.softmax(z, 0) - target) / n)
        if area_scale == "area":
            for k in range(s.n_areas):
                if counts[k]:
                    dW[k] *= n / counts[k]
                    db[k] *= n / counts[k]
        grads.append((dW, db, dWs, counts))
    return grads


@pytest.mark.parametrize("kernel", ["onehot", "gather", "sorted"])
@pytest.mark.parametrize("lam,output_local,area_scale",
                         [(1.0, True, "batch"), (0.5, False, "batch"), (1.0, True, "area"),
                          (0.0, True, "batch")])
def test_sal_grads_equal_spec_formulas(kernel, lam, output_local, area_scale):
    net = small_net(kernel)
    X, Y = batch()
    sal_grads(net, X, Y, SALRule(lam, output_local, area_scale))
    for layer, (dW, db, dWs, counts) in zip(net.layers, reference_grads(net, X, Y, lam,
                                                                        output_local, area_scale)):
        torch.testing.assert_close(layer.areas.weight.grad, dW, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(layer.areas.bias.grad, db, rtol=1e-12, atol=1e-14)
        if dWs is not None:
            torch.testing.assert_close(layer.router.weight.grad, dWs, rtol=1e-12, atol=1e-14)
    # the test is only meaningful if some area was used and some not, somewhere
    assert any(0 < (c > 0).sum() for *_, c in reference_grads(net, X, Y))


def sgd_step(net, X, Y, lr=0.1, rule=SALRule()):
    sal_grads(net, X, Y, rule)
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def test_unchosen_areas_and_fixed_tensors_are_bit_identical():
    net = make_net([LayerSpec(6, 12, "relu", False, 8), LayerSpec(12, 4, "identity", False, 1)], 4)
    X, Y = batch(n=3)
    before = copy.deepcopy(net.state_dict())
    _, _, areas = sal_grads(net, X, Y)
    used = set(areas[0].tolist())
    assert len(used) < 8
    sgd_step(net, X, Y)
    W, b = net.layers[0].areas.weight, net.layers[0].areas.bias
    for k in range(8):
        same = torch.equal(W[k], before["layers.0.areas.weight"][k]) and \
            torch.equal(b[k], before["layers.0.areas.bias"][k])
        assert same == (k not in used), k
    for name in ("layers.0.router.prototypes", "layers.0.feedback", "layers.1.feedback"):
        assert torch.equal(net.state_dict()[name], before[name])
    assert torch.equal(net.layers[1].feedback, torch.eye(4))


def test_fixed_tensors_are_buffers_not_parameters():
    net = small_net()
    names = {n for n, _ in net.named_parameters()}
    assert not any("prototypes" in n or "feedback" in n for n in names)
    assert {n for n, _ in net.named_buffers()} >= {"layers.0.router.prototypes", "layers.0.feedback"}


def test_selector_moves_only_through_its_own_loss():
    """W_s's gradient is xᵀ(softmax(z) − onehot)/batch: it does not depend on the
    areas, the feedback, λ_local or any other layer."""
    net = small_net()
    X, Y = batch()
    sal_grads(net, X, Y, SALRule(lambda_local=1.0))
    g1 = net.layers[0].router.weight.grad.clone()
    with torch.no_grad():
        for layer in net.layers:
            layer.areas.weight.mul_(3.0)
            layer.feedback.mul_(-2.0)
    sal_grads(net, X, Y, SALRule(lambda_local=0.0))
    assert torch.equal(net.layers[0].router.weight.grad, g1)
    z = X @ net.layers[0].router.weight
    target = F.pad(F.one_hot(Y, 4).double(), (0, 4))
    torch.testing.assert_close(g1, X.T @ (torch.softmax(z, 1) - target) / len(Y))


def test_layer_update_depends_on_other_layers_only_through_E_top():
    """Change layer 2's weights: layer 0's update changes only via E_top, so it
    equals the update recomputed with layer 0's own quantities and the new E_top."""
    net = small_net()
    X, Y = batch()
    net2 = copy.deepcopy(net)
    with torch.no_grad():
        net2.layers[2].areas.weight.add_(0.5)
    sal_grads(net2, X, Y)
    ref = reference_grads(net2, X, Y)
    torch.testing.assert_close(net2.layers[0].areas.weight.grad, ref[0][0])
    # another layer's feedback matrix leaves the forward pass, hence E_top, unchanged:
    # layer 0's update must then be bit-identical
    net3 = copy.deepcopy(net)
    with torch.no_grad():
        net3.layers[1].feedback.normal_()
    sal_grads(net, X, Y)
    sal_grads(net3, X, Y)
    assert torch.equal(net.layers[0].areas.weight.grad, net3.layers[0].areas.weight.grad)
    assert torch.equal(net.layers[0].router.weight.grad, net3.layers[0].router.weight.grad)
    assert not torch.equal(net.layers[1].areas.weight.grad, net3.layers[1].areas.weight.grad)


def test_single_layer_one_area_no_local_term_equals_backprop():
    torch.manual_seed(0)
    sal = make_net([LayerSpec(6, 4, "identity", False, 1)], 4)
    bp = make_net([LayerSpec(6, 4, "identity", False, 1)], 4, method="bp")
    bp.load_state_dict(sal.state_dict(), strict=False)
    X, Y = batch()
    sal_grads(sal, X, Y, SALRule(lambda_local=0.0))
    backprop_grads(bp, X, Y)
    torch.testing.assert_close(sal.layers[0].areas.weight.grad, bp.layers[0].areas.weight.grad,
                               rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(sal.layers[0].areas.bias.grad, bp.layers[0].areas.bias.grad,
                               rtol=1e-13, atol=1e-15)


def test_two_layers_with_transposed_path_feedback_equal_backprop():
    """With B₁ = W₂ (the path backprop uses) and λ = 0, SAL's hidden update is BP's."""
    layers = [LayerSpec(6, 8, "tanh", False, 1), LayerSpec(8, 4, "identity", False, 1)]
    sal, bp = make_net(layers, 4), make_net(layers, 4, method="bp")
    bp.load_state_dict(sal.state_dict(), strict=False)
    with torch.no_grad():
        sal.layers[0].feedback.copy_(sal.layers[1].areas.weight[0])
    X, Y = batch()
    sal_grads(sal, X, Y, SALRule(lambda_local=0.0))
    backprop_grads(bp, X, Y)
    for a, b in zip(sal.parameters(), bp.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def test_moe_gate_receives_gradient():
    net = make_net([LayerSpec(6, 8, "relu", False, 4), LayerSpec(8, 4, "identity", False, 1)],
                   4, method="moe")
    X, Y = batch(n=16)
    backprop_grads(net, X, Y, moe_balance=0.01)
    g = net.layers[0].router.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_moe_output_is_gate_scaled_expert():
    net = make_net([LayerSpec(6, 4, "identity", False, 3)], 4, method="moe")
    X, _ = batch()
    logits, (areas,) = net(X)
    gate = net.layers[0].router
    g = torch.softmax(X @ gate.weight, 1)
    for i in range(len(X)):
        k = int(torch.argmax(g[i]))
        assert k == int(areas[i])
        expect = g[i, k] * (X[i] @ net.layers[0].areas.weight[k] + net.layers[0].areas.bias[k])
        torch.testing.assert_close(logits[i], expect)


@pytest.mark.parametrize("kernel", ["onehot", "gather", "sorted"])
def test_kernels_agree_with_autograd(kernel):
    from sal_ray.layers import routed_linear, routed_weight_grad
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, generator=g)
    W = torch.randn(4, 5, 3, generator=g, requires_grad=True)
    b = torch.randn(4, 3, generator=g, requires_grad=True)
    areas = torch.tensor([0, 2, 2, 1, 0, 2, 0, 0, 2])  # area 3 unused
    u = routed_linear(x, W, b, areas, kernel)
    expect = torch.stack([x[i] @ W[a] + b[a] for i, a in enumerate(areas)])
    torch.testing.assert_close(u, expect)
    delta = torch.randn(9, 3, generator=g)
    (u * delta).sum().backward()
    dW, db = routed_weight_grad(x, delta, areas, 4, kernel)
    torch.testing.assert_close(dW, W.grad)
    torch.testing.assert_close(db, b.grad)
    assert torch.equal(dW[3], torch.zeros(5, 3))


@pytest.mark.parametrize("kernel", ["dense", "onehot", "gather", "sorted"])
def test_a_reused_gradient_buffer_holds_this_batch_alone(kernel):
    # a step's ΔW written over the last step's .grad: areas used before and not
    # now must read exact zeros, and the buffer itself is what comes back
    from sal_ray.layers import Routing
    g = torch.Generator().manual_seed(2)
    N = 1 if kernel == "dense" else 4
    x1, x2 = torch.randn(8, 5, generator=g), torch.randn(6, 5, generator=g)
    d1, d2 = torch.randn(8, 3, generator=g), torch.randn(6, 3, generator=g)
    a1 = None if N == 1 else torch.arange(8) % 4  # every area
    a2 = None if N == 1 else torch.tensor([1, 1, 3, 1, 3, 3])  # areas 0 and 2 unused
    buffer = Routing(x1, a1, N, 3, kernel).weight_grad(d1)[0].clone()
    assert buffer.abs().min() > 0
    fresh = Routing(x2, a2, N, 3, kernel).weight_grad(d2)
    reused = Routing(x2, a2, N, 3, kernel).weight_grad(d2, out=buffer)
    assert reused[0].data_ptr() == buffer.data_ptr()
    assert torch.equal(reused[0], fresh[0]) and torch.equal(reused[1], fresh[1])
    if N > 1:
        assert torch.equal(buffer[[0, 2]], torch.zeros(2, 5, 3))


@pytest.mark.parametrize("kind", ["dense", "onehot", "gather", "sorted", "padded"])
def test_a_pack_reuses_its_gradient_buffer_exactly(kind):
    from sal_ray.pack.routing import PackRouting
    g = torch.Generator().manual_seed(4)
    M, N, B, I, O = 2, 1 if kind == "dense" else 4, 6, 5, 3
    x1, x2 = torch.randn(M, B, I, generator=g), torch.randn(M, B, I, generator=g)
    d1, d2 = torch.randn(M, B, O, generator=g), torch.randn(M, B, O, generator=g)
    a1 = None if N == 1 else torch.arange(M * B).view(M, B) % N
    a2 = None if N == 1 else torch.tensor([[1, 1, 3, 1, 3, 3], [0, 0, 0, 0, 0, 2]])
    buffer = PackRouting(x1, a1, N, O, kind).weight_grad(d1)[0].clone()
    fresh = PackRouting(x2, a2, N, O, kind).weight_grad(d2)
    reused = PackRouting(x2, a2, N, O, kind).weight_grad(d2, out=buffer)
    assert reused[0].data_ptr() == buffer.data_ptr()
    assert torch.equal(reused[0], fresh[0]) and torch.equal(reused[1], fresh[1])


def test_the_rule_writes_each_step_over_the_last_steps_gradient():
    # from the second step on, .grad is the same storage, holding that step's ΔW
    net = small_net(kernel="sorted")
    x1, y1 = batch(seed=1)
    x2, y2 = batch(seed=2)
    sal_grads(net, x1, y1)
    storage = net.layers[0].areas.weight.grad.data_ptr()
    sal_grads(net, x2, y2)
    fresh = copy.deepcopy(net)
    for p in fresh.parameters():
        p.grad = None
    sal_grads(fresh, x2, y2)
    assert net.layers[0].areas.weight.grad.data_ptr() == storage
    for p, q in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(p.grad, q.grad)
