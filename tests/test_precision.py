"""precision=bf16: float32 master weights, matmuls under torch.autocast(bfloat16).
All on the CPU (CPU autocast supports bfloat16), on Digits, in seconds."""

import pytest
import torch

from sal_ray import Config, fit
from sal_ray.config import ConfigError, validate
from sal_ray.trainer import build, train_step

# Settings that learn Digits well in 3 epochs (val acc 0.77-0.93 in fp32).
FAST = dict(width=64, epochs=3, batch_size=32, lr=0.05)
METHODS = [("sal", 4), ("bp", 1), ("moe", 4)]
# bfloat16 keeps 8 significant bits, about 3 significant decimal digits, so a bf16
# run drifts from the fp32 one (a ReLU or a route near its threshold can flip) and
# lands on a slightly different accuracy. Measured on the 2-core sandbox CPU, seeds
# 0 and 1, these settings: |bf16 - fp32| val acc <= 0.0083 (3 of 360 samples) for
# sal-4, bp, moe-4 and four variants (kernels, area_grad_scale, residual depth 4).
ACC_TOLERANCE = 0.03


def _strip(history):
    return [{k: v for k, v in m.items() if "time" not in k and "per_s" not in k}
            for m in history]


def test_fp32_is_the_default_and_unchanged():
    assert Config().run.precision == "fp32"
    cfg = Config().replace(n_areas=4, width=32, epochs=2, batch_size=32)
    a, b = fit(cfg), fit(cfg.replace(precision="fp32"))
    assert _strip(a.history) == _strip(b.history)
    for (k, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(x, y), k
    assert a.config["precision"] == "fp32"


@pytest.mark.parametrize("method,n_areas", METHODS)
def test_bf16_trains_close_to_fp32(method, n_areas):
    cfg = Config().replace(method=method, n_areas=n_areas, seed=0, **FAST)
    full = fit(cfg)
    half = fit(cfg.replace(precision="bf16"))
    assert half.status == "completed" and len(half.history) == 3
    assert half.config["precision"] == "bf16"
    for m in half.history:
        assert all(torch.isfinite(torch.tensor(m[k])) for k in ("train_loss", "val_loss"))
    for name, p in half.net.named_parameters():
        assert p.dtype == torch.float32, name
    assert half.final["val_acc"] > 0.7
    assert abs(half.final["val_acc"] - full.final["val_acc"]) <= ACC_TOLERANCE, \
        (method, full.final["val_acc"], half.final["val_acc"])
    # bf16 really changed the arithmetic: same seed, same batches, other losses
    assert half.final["train_loss"] != full.final["train_loss"]


def _one_step(precision, **options):
    run = build(Config().replace(precision=precision, width=64, batch_size=32, lr=0.05,
                                 **options))
    before = {n: p.detach().clone() for n, p in run.net.named_parameters()}
    train_step(run, run.x_train[:32], run.y_train[:32])
    for name, p in run.net.named_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
    return {n: p.detach() - before[n] for n, p in run.net.named_parameters()}


def test_a_bf16_sal_step_runs_its_matmuls_in_bf16():
    full, half = _one_step("fp32", n_areas=4), _one_step("bf16", n_areas=4)
    # The output layer (no ReLU, no routing) and the selector: a difference from
    # fp32 there is rounding of the bf16 products alone (measured 4.9e-3 and 3.7e-3).
    # Not bit-equal (so bf16 ran), yet within bf16's ~3 digits. (Routed ReLU layers
    # can differ more: one unit of one sample flipping sign moves a whole column.)
    for name in ("layers.1.areas.weight", "layers.0.router.weight"):
        rel = ((half[name] - full[name]).norm() / full[name].norm()).item()
        assert 1e-6 < rel < 5e-2, (name, rel)


@pytest.mark.parametrize("kernel", ["onehot", "gather", "sorted"])
@pytest.mark.parametrize("method", ["sal", "moe"])
def test_bf16_step_with_every_kernel_on_routed_hidden_layers(kernel, method):
    # routed=all: the hidden layers' inputs are bf16 activations, the first's float32
    step = _one_step("bf16", method=method, n_areas=2, arch="residual", depth=3,
                     routed="all", kernel=kernel)
    assert all(torch.isfinite(d).all() for d in step.values())


def test_bf16_with_float64_is_refused():
    with pytest.raises(ConfigError) as err:
        validate(Config().replace(precision="bf16", dtype="float64"))
    assert err.value.option == "precision" and "'precision'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate(Config().replace(precision="fp16"))
    assert err.value.option == "precision"


def test_precision_is_a_cli_flag():
    from sal_ray.cli import build_parser
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--precision" in help_text


@pytest.mark.parametrize("kernel", ["dense", "onehot", "sorted"])
def test_routed_products_round_to_bf16_under_autocast(kernel):
    # float32 inputs, as the first layer sees them; a product computed in bf16
    # comes out rounded to bf16 (the gather kernel's weight gradient is an
    # elementwise outer product and index_add_, so it stays float32)
    from sal_ray.layers import Routing
    g = torch.Generator().manual_seed(0)
    f32 = dict(generator=g, dtype=torch.float32)  # test_rules makes float64 the default
    x, delta = torch.randn(16, 8, **f32), torch.randn(16, 5, **f32)
    W, b = torch.randn(3, 8, 5, **f32), torch.randn(3, 5, **f32)
    areas = None if kernel == "dense" else torch.arange(16) % 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = Routing(x, areas, 1 if kernel == "dense" else 3, 5, kernel)
        u = routing.linear(W[:1] if kernel == "dense" else W, b)
        dW, _ = routing.weight_grad(delta)
    assert routing.kind == kernel and u.dtype == torch.bfloat16
    dW = dW.float()
    assert torch.equal(dW, dW.bfloat16().float())
    assert not torch.equal(dW, Routing(x, areas, dW.shape[0], 5, kernel).weight_grad(delta)[0])


def test_a_checkpoint_from_before_the_option_resumes_as_fp32(tmp_path):
    from sal_ray.trainer import CHECKPOINT_NAME
    cfg = Config().replace(width=32, epochs=2, batch_size=32)
    fit(cfg.replace(epochs=1), checkpoint_dir=str(tmp_path))
    path = tmp_path / CHECKPOINT_NAME
    state = torch.load(path, weights_only=True)  # plain tensors and values
    del state["config"]["precision"]  # as written before `precision` existed
    torch.save(state, path)
    assert [m["epoch"] for m in fit(cfg, checkpoint_dir=str(tmp_path)).history] == [1, 2]
    with pytest.raises(ConfigError, match="precision"):
        fit(cfg.replace(precision="bf16"), checkpoint_dir=str(tmp_path))
