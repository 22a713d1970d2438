"""One pack step: every member's rule fills its slice of `.grad`, then one SGD
update with a per-member rate.

- SAL: the stacked forward keeps `rules.LayerTrace`s and each layer's update is
  `rules.sal_layer_grads` itself, broadcast over the member axis.
- BP and MoE: autograd of the sum over members of each member's own objective
  (mean cross-entropy, plus its Switch balance loss): member m's gradient is the
  gradient of its own objective, since no product mixes members.

Losses come back per member, (M,). Under precision bf16 the same autocast as a
separate run's rule wraps the step (`rules.autocast`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..config import Config
from ..rules import (LayerTrace, SALRule, _class_error, autocast, full_precision,
                     sal_layer_grads, switch_balance)
from .build import PackNet
from .routing import PackRouting


def member_losses(logits_MBC, y_MB):
    """(M,) each member's mean cross-entropy over its batch."""
    M, B, C = logits_MBC.shape
    ce = F.cross_entropy(logits_MBC.reshape(M * B, C), y_MB.reshape(M * B), reduction="none")
    return ce.view(M, B).mean(1)


@torch.no_grad()
def sal_pack_grads(net: PackNet, x_MBI, y_MB, rule: SALRule = SALRule()):
    """`rules.sal_grads` for every member at once."""
    h, traces, all_areas = x_MBI, [], []
    for layer in net.layers:
        z, areas = layer.router(h) if layer.router is not None else (None, None)
        routing = PackRouting(h, areas, layer.spec.n_areas, layer.spec.d_out, net.kernel)
        u = routing.linear(layer.areas.weight, layer.areas.bias)
        h_next, phi = layer.activate_and_skip(h, u)
        traces.append(LayerTrace(routing, z, u, phi, h_next))
        all_areas.append(areas)
        h = h_next
    h = full_precision(h)
    C = net.arch.n_classes
    onehot_MBC = F.one_hot(y_MB, C).to(h.dtype)
    E_top_MBC = _class_error(h, onehot_MBC, y_MB.shape[1])
    for layer, trace in zip(net.layers, traces):
        sal_layer_grads(layer, trace, E_top_MBC, onehot_MBC, rule)
    return member_losses(h, y_MB), h, all_areas


def backprop_pack_grads(net: PackNet, x_MBI, y_MB, moe_balance: float = 0.0):
    """`rules.backprop_grads` for every member at once."""
    net.zero_grad(set_to_none=True)
    logits, areas = net(x_MBI)
    logits = full_precision(logits)
    loss_M = member_losses(logits, y_MB)
    objective_M = loss_M + moe_balance * switch_balance(net.gates) if moe_balance else loss_M
    with torch.autocast(logits.device.type, enabled=False):  # as in rules.backprop_grads
        objective_M.sum().backward()
    return loss_M.detach(), logits.detach(), areas


def make_pack_rule(cfg: Config) -> Callable:
    """The members' shared rule as `(pack net, x, y) -> (losses (M,), logits, areas)`."""
    if cfg.model.method == "sal":
        rule = SALRule(cfg.sal.lambda_local, cfg.sal.output_local, cfg.sal.area_grad_scale)
        grads = lambda net, x, y: sal_pack_grads(net, x, y, rule)  # noqa: E731
    else:
        balance = cfg.model.moe_balance if cfg.model.method == "moe" else 0.0
        grads = lambda net, x, y: backprop_pack_grads(net, x, y, balance)  # noqa: E731

    def step(net, x, y):
        with autocast(cfg, x.device.type):
            return grads(net, x, y)
    return step


class PackSGD:
    """Plain SGD over the stacked tensors with a rate per member, as
    `rules.make_optimizer` groups them: SAL's selectors at lr_sel (default lr),
    everything else at lr. A member's rate set to 0 freezes it."""

    def __init__(self, net: PackNet, configs: list[Config]):
        dev, dtype = net.layers[0].areas.weight.device, net.layers[0].areas.weight.dtype
        self.lr = torch.tensor([c.optim.lr for c in configs], dtype=torch.float64)
        self.lr_sel = torch.tensor([c.sal.lr_sel or c.optim.lr for c in configs],
                                   dtype=torch.float64)
        self.alive = torch.ones(len(configs), dtype=torch.bool)
        selectors = {id(l.router.weight) for l in net.layers
                     if l.router is not None and net.method == "sal"}
        self.params = [(p, id(p) in selectors) for p in net.parameters()]
        self.device, self.dtype = dev, dtype
        self._rates()

    def _rates(self):
        """Negative rates, (M,) shaped for each tensor, on the device, once."""
        out = []
        for p, is_selector in self.params:
            rate = torch.where(self.alive, self.lr_sel if is_selector else self.lr, 0.0)
            out.append((-rate).to(self.device, self.dtype).view(-1, *[1] * (p.dim() - 1)))
        self.rates = out

    def freeze(self, m: int) -> None:
        self.alive[m] = False
        self._rates()

    @torch.no_grad()
    def step(self) -> None:
        for (p, _), rate in zip(self.params, self.rates):
            if p.grad is not None:
                p.addcmul_(p.grad, rate)
