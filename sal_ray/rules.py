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

from .layers import activation_grad, routed_weight_grad
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
        u_BO = layer.areas(h, areas_B, net.kernel) if areas_B is not None else \
            torch.addmm(layer.areas.bias[0], h, layer.areas.weight[0])
        h_next, phi_BO = layer.finish(h, u_BO)
        trace.append((h, z_BF, areas_B, u_BO, phi_BO, h_next))
        all_areas.append(areas_B)
        h = h_next

    loss = F.cross_entropy(h, y_B)
    E_top_BC = _class_error(h, onehot_BC, batch)

    # Each layer's update depends on the others only through E_top.
    for layer, (x, z_BF, areas_B, u_BO, phi_BO, h_BO) in zip(net.layers, trace):
        B_OC = layer.feedback
        E_BC = E_top_BC
        if rule.lambda_local and (rule.output_local or not layer.is_output):
            E_BC = E_top_BC + rule.lambda_local * _class_error(h_BO @ B_OC, onehot_BC, batch)
        delta_BO = activation_grad(layer.spec.activation, u_BO, phi_BO) * (E_BC @ B_OC.T)
        n_areas = layer.spec.n_areas
        if areas_B is None:
            dW, db = (x.T @ delta_BO).unsqueeze(0), delta_BO.sum(0, keepdim=True)
        else:
            dW, db = routed_weight_grad(x, delta_BO, areas_B, n_areas, net.kernel)
            if rule.area_grad_scale == "area":
                counts_N = torch.zeros(n_areas, dtype=x.dtype, device=x.device).index_add_(
                    0, areas_B, torch.ones_like(x[:, 0]))
                scale_N = batch / counts_N.clamp(min=1)
                dW, db = dW * scale_N.view(-1, 1, 1), db * scale_N.view(-1, 1)
        layer.areas.weight.grad, layer.areas.bias.grad = dW, db
        if z_BF is not None:
            # Selector loss CE(z, y) with z as d_f logits; x is a constant here.
            onehot_BF = F.pad(onehot_BC, (0, z_BF.shape[1] - C))
            layer.router.weight.grad = x.T @ _class_error(z_BF, onehot_BF, batch)
    return loss, h, all_areas
