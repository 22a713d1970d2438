"""A pack: M member runs of one shape held as one stacked model.

Members are the seeds of one configuration and/or configurations that differ only
in per-member scalars (`PER_MEMBER`). Each member's net is built exactly as its
separate run builds it (`models.build_net`, same seeds, same draws), then every
tensor is stacked along a new leading member axis M. The stacked modules keep
`models.Net`'s attribute names (`layers.i.areas.weight`, `.router.weight`,
`.router.prototypes`, `.feedback`), so a pack's state dict is the members'
state dicts stacked key by key, and `rules.sal_layer_grads` runs on a stacked
layer unchanged.

Shapes: M members, N areas, I layer input, O layer output, F router features,
C classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config, ConfigError
from ..models import Layer, Net
from .routing import PackRouting

# Options members of one pack may differ in: none changes a tensor's shape or the
# step's code; each is applied per member (the data order from the seed, the
# update's rate, the divergence verdict).
PER_MEMBER = ("seed", "lr", "lr_sel", "diverge_loss")


def check_pack(configs) -> None:
    """Refuse, before any work, members that cannot share one stacked model:
    one ConfigError naming the first option that differs."""
    if not configs:
        raise ConfigError("pack", "a pack needs at least one member configuration")
    for c in configs:
        if not isinstance(c, Config):
            raise ConfigError("pack", f"members must be sal_ray.Config; got {type(c).__name__}")
    first = configs[0].to_flat()
    for i, c in enumerate(configs[1:], 1):
        for name, value in c.to_flat().items():
            if name not in PER_MEMBER and value != first[name]:
                raise ConfigError(name, f"members of a pack may differ only in "
                                  f"{', '.join(PER_MEMBER)}; member {i} has {name}={value!r} "
                                  f"where member 0 has {first[name]!r}: put them in "
                                  "separate packs, or set fuse=false")


class PackAreas(nn.Module):
    """M members' N areas: weight (M, N, I, O), bias (M, N, O)."""

    def __init__(self, weight_MNIO, bias_MNO):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight_MNIO), nn.Parameter(bias_MNO)

    @property
    def n_areas(self) -> int:
        return self.weight.shape[1]


class PackSelector(nn.Module):
    """SAL's router per member: z = x W_s (M, I, F), area = argmax z W_fix (M, F, N)."""

    def __init__(self, weight_MIF, prototypes_MFN):
        super().__init__()
        self.weight = nn.Parameter(weight_MIF)
        self.register_buffer("prototypes", prototypes_MFN)

    def forward(self, x_MBI):
        z_MBF = torch.bmm(x_MBI, self.weight)
        return z_MBF, torch.argmax(torch.bmm(z_MBF, self.prototypes), dim=-1)


class PackGate(nn.Module):
    """MoE's router per member: g = softmax(x W_g), top-1 expert."""

    def __init__(self, weight_MIN):
        super().__init__()
        self.weight = nn.Parameter(weight_MIN)

    def forward(self, x_MBI):
        # softmax in the weight's dtype, as `layers.Gate` does
        g_MBN = torch.softmax(torch.bmm(x_MBI, self.weight), dim=-1, dtype=self.weight.dtype)
        g_MB, areas_MB = g_MBN.max(dim=-1)
        return g_MBN, g_MB, areas_MB


def _stack(mods, name):
    return torch.stack([getattr(m, name).detach() for m in mods]).clone()


class PackLayer(nn.Module):
    """One layer of every member, stacked; the attributes `models.Layer` has."""

    activate_and_skip = Layer.activate_and_skip  # uses only .spec: one code for both

    def __init__(self, layers: list[Layer]):
        super().__init__()
        first = layers[0]
        self.spec, self.method, self.is_output = first.spec, first.method, first.is_output
        areas = [layer.areas for layer in layers]
        self.areas = PackAreas(_stack(areas, "weight"), _stack(areas, "bias"))
        routers = [layer.router for layer in layers]
        self.router: nn.Module | None = None
        if first.router is not None and first.method == "sal":
            self.router = PackSelector(_stack(routers, "weight"), _stack(routers, "prototypes"))
        elif first.router is not None:
            self.router = PackGate(_stack(routers, "weight"))
        if first.method == "sal":
            self.register_buffer("feedback", _stack(layers, "feedback"))


class PackNet(nn.Module):
    """M members' nets as one: `forward` (M, B, I) -> (M, B, C) logits."""

    def __init__(self, nets: list[Net]):
        super().__init__()
        first = nets[0]
        self.arch, self.method, self.kernel = first.arch, first.method, first.kernel
        self.size = len(nets)
        self.layers = nn.ModuleList(PackLayer([net.layers[i] for net in nets])
                                    for i in range(len(first.layers)))

    def forward(self, x_MBI):
        """Logits and each layer's (M, B) area choice (None where unrouted), as
        `models.Net.forward`: BP and MoE train through it, every method evaluates."""
        all_areas, self.gates = [], []  # MoE: (g_MBN, areas_MB) per routed layer
        h = x_MBI
        for layer in self.layers:
            w, b = layer.areas.weight, layer.areas.bias
            areas, scale = None, None
            if layer.router is not None and layer.method == "moe":
                g_MBN, scale, areas = layer.router(h)
                self.gates.append((g_MBN, areas))
            elif layer.router is not None:
                _, areas = layer.router(h)
            u = PackRouting(h, areas, layer.spec.n_areas, layer.spec.d_out,
                            self.kernel).linear(w, b)
            if scale is not None:
                u = scale.unsqueeze(-1) * u
            h, _ = layer.activate_and_skip(h, u)
            all_areas.append(areas)
        return h, all_areas


def stack_nets(nets: list[Net]) -> PackNet:
    """The members' nets (one shape, one dtype and device) as one PackNet."""
    return PackNet(nets).to(device=nets[0].layers[0].areas.weight.device)


def member_state(pack: PackNet, m: int) -> dict[str, torch.Tensor]:
    """Member m's state dict, in `models.Net`'s keys (fresh tensors)."""
    return {k: v[m].clone() for k, v in pack.state_dict().items()}


@torch.no_grad()
def unstack_into(pack: PackNet, m: int, net: Net) -> Net:
    """Copy member m's weights into its own `Net`."""
    net.load_state_dict(member_state(pack, m))
    return net


@torch.no_grad()
def zero_member(pack: PackNet, m: int) -> None:
    """Member m's weights set to zero: a frozen member (its rate is 0) then stays
    finite, so whatever made it diverge never reaches the others' sums or checks."""
    for t in (*pack.parameters(), *pack.buffers()):
        t[m].zero_()
