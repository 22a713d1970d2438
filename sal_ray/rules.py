"""Learning rules. Each fills `.grad` of the net's parameters for one batch and
returns the batch loss; one optimizer then applies the update for every method.

- `backprop_grads`: BP and MoE, by autograd of the mean cross-entropy (plus the
  optional Switch load-balancing loss for MoE).
- `sal_grads`: SAL_SPEC section 2, computed in closed form. No gradient flows
  between layers: each layer sees only its own input, pre-activation and the
  batch × C output error E_top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import Routing, activation_grad
from .models import Net


@dataclass(frozen=True)
class SALRule:
    lambda_local: float = 1.0
    output_local: bool = True      # the local term on the output layer (B = I doubles E_top)
    area_grad_scale: str = "batch"  # "area": a per-area mean instead of a batch mean


def backprop_grads(net: Net, x_BI, y_B, moe_balance: float = 0.0):
    net.zero_grad(set_to_none=True)
    logits_BC, areas = net(x_BI)
    loss = F.cross_entropy(logits_BC, y_B)
    objective = loss + moe_balance * switch_balance(net.gates) if moe_balance else loss
    objective.backward()
    return loss.detach(), logits_BC.detach(), areas


def switch_balance(gates) -> torch.Tensor:
    """Switch Transformer's auxiliary loss, N Σ_j f_j P_j, summed over routed layers:
    f_j the share of samples sent to expert j, P_j its mean gate probability."""
    total = 0.0
    for g_BN, areas_B in gates:
        n = g_BN.shape[1]
        f_N = torch.zeros(n, dtype=g_BN.dtype, device=g_BN.device).index_add_(
            0, areas_B, torch.ones_like(areas_B, dtype=g_BN.dtype)) / areas_B.shape[0]
        total = total + n * (f_N * g_BN.mean(0)).sum()
    return total


def _class_error(logits_BC, onehot_BC, batch: int):
    """∂ mean-CE / ∂ logits = (softmax − onehot) / batch."""
    return (torch.softmax(logits_BC, dim=1) - onehot_BC) / batch


@torch.no_grad()
def sal_grads(net: Net, x_BI, y_B, rule: SALRule = SALRule()):
    batch = x_BI.shape[0]
    C = net.arch.n_classes
    onehot_BC = F.one_hot(y_B, C).to(x_BI.dtype)

    # Forward, keeping what each layer's local update needs.
    trace, all_areas, h = [], [], x_BI
    for layer in net.layers:
        z_BF, areas_B = layer.router(h) if layer.router is not None else (None, None)
        routing = Routing(h, areas_B, layer.spec.n_areas, layer.spec.d_out, net.kernel)
        u_BO = routing.linear(layer.areas.weight, layer.areas.bias)
        h_next, phi_BO = layer.finish(h, u_BO)
        trace.append((routing, z_BF, u_BO, phi_BO, h_next))
        all_areas.append(areas_B)
        h = h_next

    loss = F.cross_entropy(h, y_B)
    E_top_BC = _class_error(h, onehot_BC, batch)

    # Each layer's update depends on the others only through E_top.
    for layer, (routing, z_BF, u_BO, phi_BO, h_BO) in zip(net.layers, trace):
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
            grad_h_BO = E_BC @ B_OC.T
        delta_BO = grad_h_BO * activation_grad(layer.spec.activation, u_BO, phi_BO)
        dW, db = routing.weight_grad(delta_BO)
        if rule.area_grad_scale == "area" and routing.areas_B is not None:
            counts_N = torch.zeros_like(db[:, 0]).index_add_(
                0, routing.areas_B, torch.ones_like(delta_BO[:, 0]))
            scale_N = batch / counts_N.clamp(min=1)
            dW, db = dW * scale_N.view(-1, 1, 1), db * scale_N.view(-1, 1)
        layer.areas.weight.grad, layer.areas.bias.grad = dW, db
        if z_BF is not None:
            # Selector loss CE(z, y) with z as d_f logits; x is a constant here.
            onehot_BF = F.pad(onehot_BC, (0, z_BF.shape[1] - C))
            layer.router.weight.grad = routing.x_BI.T @ _class_error(z_BF, onehot_BF, batch)
    return loss, h, all_areas
