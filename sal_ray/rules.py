"""Learning rules. Each fills `.grad` of the net's parameters for one batch and
returns the batch loss; one optimizer then applies the update for every method.

- `make_rule(cfg)`: the method's rule as `(net, x, y) -> (loss, logits, areas)`,
  and `make_optimizer`: the plain SGD that applies every rule's `.grad`.
- `backprop_grads`: BP and MoE, by autograd of the mean cross-entropy (plus the
  optional Switch load-balancing loss for MoE).
- `sal_grads`: docs/spec.md section 2, computed in closed form. No gradient flows
  between layers: each layer sees only its own input, pre-activation and the
  batch × C output error E_top. It is `sal_forward` (a block of layers, keeping
  traces), `sal_error` (E_top at the output) and `sal_layer_grads` (one layer),
  so the layer-parallel layout runs the same code on each worker's block.

Under `torch.autocast` (precision bf16) the matmuls run in bfloat16 while
parameters stay float32: losses, softmax and errors are taken in float32
(`full_precision`) and every `.grad` is cast to its parameter's dtype.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from .config import Config
from .layers import Routing, activation_grad
from .models import Net


@dataclass(frozen=True)
class SALRule:
    lambda_local: float = 1.0
    output_local: bool = True      # the local term on the output layer (B = I doubles E_top)
    area_grad_scale: str = "batch"  # "area": a per-area mean instead of a batch mean


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """A bfloat16/float16 tensor (an autocast matmul's output) as float32;
    float32 and float64 tensors are returned as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def backprop_grads(net: Net, x_BI, y_B, moe_balance: float = 0.0):
    net.zero_grad(set_to_none=True)
    logits_BC, areas = net(x_BI)
    logits_BC = full_precision(logits_BC)
    loss = F.cross_entropy(logits_BC, y_B)
    objective = loss + moe_balance * switch_balance(net.gates) if moe_balance else loss
    # autocast wraps the forward only; the backward ops still run in the dtypes
    # the forward used (bf16 matmuls), and grads reach float32 params as float32
    with torch.autocast(logits_BC.device.type, enabled=False):
        objective.backward()
    return loss.detach(), logits_BC.detach(), areas


def switch_balance(gates) -> torch.Tensor:
    """Switch Transformer's auxiliary loss, N Σ_j f_j P_j, summed over routed layers:
    f_j the share of samples sent to expert j, P_j its mean gate probability.
    Over leading axes too: a pack's (M, B, N) gates give one loss per member."""
    total = 0.0
    for g_BN, areas_B in gates:
        n = g_BN.shape[-1]
        f_N = F.one_hot(areas_B, n).to(g_BN.dtype).mean(-2)  # counts are exact, as is / B
        total = total + n * (f_N * g_BN.mean(-2)).sum(-1)
    return total


def _class_error(logits_BC, onehot_BC, batch: int):
    """∂ mean-CE / ∂ logits = (softmax − onehot) / batch, in onehot's dtype. Classes
    on the last axis, so a pack's (M, B, C) errors use it too (`sal_ray.pack`)."""
    return (torch.softmax(logits_BC, dim=-1, dtype=onehot_BC.dtype) - onehot_BC) / batch


class LayerTrace(NamedTuple):
    """What one layer's local update needs from its forward pass."""
    routing: Routing          # the layer input x and its area assignment, laid out once
    z_BF: torch.Tensor | None  # selector features (None on an unrouted layer)
    u_BO: torch.Tensor        # pre-activation
    phi_BO: torch.Tensor      # φ(u), for φ'
    h_BO: torch.Tensor        # the layer's output (with the skip), for the local logits


@torch.no_grad()
def sal_forward(layers, h, kernel: str = "auto"):
    """Forward through `layers` (all of a net's, or one contiguous block of them),
    keeping each layer's trace. Returns (output, traces, area choice per layer)."""
    traces, all_areas = [], []
    for layer in layers:
        z_BF, areas_B = layer.router(h) if layer.router is not None else (None, None)
        routing = Routing(h, areas_B, layer.spec.n_areas, layer.spec.d_out, kernel)
        u_BO = routing.linear(layer.areas.weight, layer.areas.bias)
        h_next, phi_BO = layer.activate_and_skip(h, u_BO)
        traces.append(LayerTrace(routing, z_BF, u_BO, phi_BO, h_next))
        all_areas.append(areas_B)
        h = h_next
    return h, traces, all_areas


def sal_error(logits_BC, y_B, n_classes: int):
    """The output's mean cross-entropy, E_top = ∂L/∂logits, and the one-hot labels
    (all float32 when the logits are bfloat16)."""
    logits_BC = full_precision(logits_BC)
    onehot_BC = F.one_hot(y_B, n_classes).to(logits_BC.dtype)
    loss = F.cross_entropy(logits_BC, y_B)
    return loss, _class_error(logits_BC, onehot_BC, y_B.shape[0]), onehot_BC


@torch.no_grad()
def sal_layer_grads(layer, trace: LayerTrace, E_top_BC, onehot_BC, rule: SALRule = SALRule()):
    """Fill one layer's .grad from its own trace and E_top (batch × C) alone.
    Every product broadcasts over leading axes, so a pack's stacked layer (its
    tensors carry a leading member axis M, `sal_ray.pack`) runs this same code."""
    routing, z_BF, u_BO, phi_BO, h_BO = trace
    batch, C = onehot_BC.shape[-2:]
    local = rule.lambda_local and (rule.output_local or not layer.is_output)
    if layer.is_output:
        # B = I here, so the local logits are h itself and e_local = E_top.
        E_BC = E_top_BC * (1.0 + rule.lambda_local) if local else E_top_BC
        grad_h_BO = E_BC
    else:
        B_OC = layer.feedback
        E_BC = E_top_BC
        if local:
            E_BC = E_top_BC + rule.lambda_local * _class_error(h_BO @ B_OC, onehot_BC, batch)
        grad_h_BO = E_BC @ B_OC.mT
    W, b = layer.areas.weight, layer.areas.bias
    # bf16: δ back to the parameter dtype, so the per-area sums (index_add_) run
    # in float32 and only the x^T δ products are autocast
    delta_BO = (grad_h_BO * activation_grad(layer.spec.activation, u_BO, phi_BO)).to(W.dtype)
    buffer = W.grad
    if buffer is None or buffer.layout != torch.strided or buffer.shape != W.shape \
            or buffer.dtype != W.dtype:
        dW, db = routing.weight_grad(delta_BO)
    else:
        # Last step's .grad, overwritten: a new tensor of over ~32 MB (SAL-16 from
        # width 2304) is fresh pages from the OS each step, whose first-touch
        # faults cost more than the whole update (docs/performance.md). A pack's
        # stacked layers take this branch too (PackRouting.weight_grad).
        dW, db = routing.weight_grad(delta_BO, out=buffer)
    dW, db = dW.to(W.dtype), db.to(b.dtype)
    if rule.area_grad_scale == "area" and routing.areas_B is not None:
        scale_N = batch / routing.area_counts(db.dtype).clamp(min=1)
        dW, db = dW.mul_(scale_N[..., None, None]), db.mul_(scale_N[..., None])
    W.grad, b.grad = dW, db
    if z_BF is not None:
        # Selector loss CE(z, y) with z as d_f logits; x is a constant here.
        onehot_BF = F.pad(onehot_BC, (0, z_BF.shape[-1] - C))
        W_s = layer.router.weight
        W_s.grad = (routing.x_BI.mT @ _class_error(z_BF, onehot_BF, batch)).to(W_s.dtype)


@torch.no_grad()
def sal_grads(net: Net, x_BI, y_B, rule: SALRule = SALRule()):
    # Split in three so that a layer-layout stage (sal_ray.distributed.
    # layer_parallel) runs the same code on its block of layers.
    h, traces, all_areas = sal_forward(net.layers, x_BI, net.kernel)
    h = full_precision(h)
    loss, E_top_BC, onehot_BC = sal_error(h, y_B, net.arch.n_classes)
    # Each layer's update depends on the others only through E_top.
    for layer, trace in zip(net.layers, traces):
        sal_layer_grads(layer, trace, E_top_BC, onehot_BC, rule)
    return loss, h, all_areas


def autocast(cfg: Config, device_type: str):
    """precision bf16: matmuls in bfloat16 over float32 weights; fp32: nothing."""
    if cfg.run.precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_rule(cfg: Config) -> Callable:
    """The method's gradient rule as `(net, x, y) -> (loss, logits, areas)`,
    under `autocast` (so every layout that calls it gets it too)."""
    if cfg.model.method == "sal":
        rule = SALRule(cfg.sal.lambda_local, cfg.sal.output_local, cfg.sal.area_grad_scale)
        grads = lambda net, x, y: sal_grads(net, x, y, rule)  # noqa: E731
    else:
        balance = cfg.model.moe_balance if cfg.model.method == "moe" else 0.0
        grads = lambda net, x, y: backprop_grads(net, x, y, balance)  # noqa: E731

    def step(net, x, y):
        with autocast(cfg, x.device.type):
            return grads(net, x, y)
    return step


def make_optimizer(net: Net, cfg: Config) -> torch.optim.Optimizer:
    """Plain SGD, no momentum or weight decay: those would move areas no sample
    chose. SAL's selectors get their own rate (lr_sel, default lr)."""
    selectors = [l.router.weight for l in net.layers
                 if l.router is not None and net.method == "sal"]
    chosen = {id(p) for p in selectors}
    rest = [p for p in net.parameters() if id(p) not in chosen]
    groups = [{"params": rest, "lr": cfg.optim.lr}]
    if selectors:
        groups.append({"params": selectors, "lr": cfg.sal.lr_sel or cfg.optim.lr})
    # torch takes its foreach update (one call over all tensors) on CUDA by default;
    # on the CPU it measured no faster than the loop (SAL-16, Digits: 102 vs 97 µs)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=0.0)
