"""SAL, BP and MoE nets built from one architecture description.

The three methods share layer sizes, activations, residual connections and the
area weights' initialisation (same seed, same draws); they differ only in the
router each routed layer carries:

- SAL: a `Selector` (trained by the selector loss) and a fixed feedback matrix
  B (a buffer, d_out × C; the identity on the output layer);
- MoE: a `Gate` whose top-1 probability scales the expert's output;
- BP:  one area, no router.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import Config, ConfigError
from .layers import ACT_GAIN, Areas, Gate, Selector, activate, routed_linear, seeded


@dataclass(frozen=True)
class LayerSpec:
    d_in: int
    d_out: int
    activation: str = "identity"
    residual: bool = False
    n_areas: int = 1

    def __post_init__(self):
        if self.residual and self.d_in != self.d_out:
            raise ConfigError("residual", f"a residual layer needs equal input and output "
                              f"sizes; got {self.d_in} -> {self.d_out}")
        if self.n_areas < 1:
            raise ConfigError("n_areas", f"must be an integer >= 1; got {self.n_areas}")


@dataclass(frozen=True)
class Architecture:
    """The net every method is built from: a list of layers ending in C classes."""
    layers: tuple[LayerSpec, ...]
    n_classes: int
    d_f: int | None = None  # router features; None: each layer's d_out

    def __post_init__(self):
        if not self.layers:
            raise ConfigError("depth", "an architecture needs at least one layer")
        if self.layers[-1].d_out != self.n_classes:
            raise ConfigError("n_classes", f"the output layer must have {self.n_classes} "
                              f"outputs; got {self.layers[-1].d_out}")
        for a, b in zip(self.layers, self.layers[1:]):
            if a.d_out != b.d_in:
                raise ConfigError("width", f"layer sizes do not chain: {a.d_out} -> {b.d_in}")
        for spec in self.layers:
            if spec.n_areas > 1 and self.features(spec) < self.n_classes:
                raise ConfigError("d_f", f"the selector treats z as class logits, so d_f must "
                                  f"be >= the {self.n_classes} classes; got {self.features(spec)}")

    def features(self, spec: LayerSpec) -> int:
        return self.d_f if self.d_f is not None else spec.d_out

    @classmethod
    def from_config(cls, cfg: Config, input_dim: int, n_classes: int) -> Architecture:
        m = cfg.model
        act = m.activation or ("relu" if m.arch == "mlp" else "tanh")
        sizes = [input_dim] + [m.width] * (m.depth - 1) + [n_classes]
        last = m.depth - 1
        routed = {"first": {0}, "hidden": set(range(last)),
                  "all": set(range(m.depth))}[m.routed]
        layers = []
        for i in range(m.depth):
            if m.arch == "mlp":
                layer_act, residual = (act if i < last else "identity"), False
            else:  # residual: linear in and out, `act` + skip in between
                hidden = 0 < i < last
                layer_act, residual = (act if hidden else "identity"), hidden
            n = m.n_areas if (i in routed and m.method != "bp") else 1
            layers.append(LayerSpec(sizes[i], sizes[i + 1], layer_act, residual, n))
        return cls(tuple(layers), n_classes, m.d_f)


class Layer(nn.Module):
    def __init__(self, spec: LayerSpec, method: str, arch: Architecture, index: int,
                 seed: int, shared_init: bool, feedback_dist: str, feedback_scale: float,
                 init: str = "kaiming_normal"):
        super().__init__()
        self.spec, self.method = spec, method
        self.is_output = index == len(arch.layers) - 1
        self.areas = Areas(spec.n_areas, spec.d_in, spec.d_out, ACT_GAIN[spec.activation],
                           shared_init, seeded(seed, index, 0), init)
        self.router: nn.Module | None = None
        if spec.n_areas > 1 and method == "sal":
            self.router = Selector(spec.d_in, arch.features(spec), spec.n_areas,
                                   seeded(seed, index, 1))
        elif spec.n_areas > 1 and method == "moe":
            self.router = Gate(spec.d_in, spec.n_areas, seeded(seed, index, 1))
        if method == "sal":
            self.register_buffer("feedback", self._feedback(arch.n_classes, seeded(seed, index, 2),
                                                            feedback_dist, feedback_scale))

    def _feedback(self, n_classes, gen, dist, scale):
        """B (d_out × C): identity on the output layer; elsewhere random and frozen,
        zero mean, std = feedback_scale / sqrt(d_out), the std a Kaiming-initialised
        next layer's weights would have, so E Bᵀ starts at the scale backprop's would."""
        d_out = self.spec.d_out
        if self.is_output:
            return torch.eye(n_classes)
        std = scale / math.sqrt(d_out)
        if dist == "gaussian":
            b = torch.randn(d_out, n_classes, generator=gen, dtype=torch.float64) * std
        else:  # uniform on [-a, a] has std a / sqrt(3)
            b = (torch.rand(d_out, n_classes, generator=gen, dtype=torch.float64) * 2 - 1)
            b = b * std * math.sqrt(3.0)
        return b.float()

    def activate_and_skip(self, x_BI, u_BO):
        """The layer's output from its pre-activation u: h = φ(u), plus the input x on
        a residual layer. Also returns φ(u), which the SAL update needs for φ'."""
        phi_BO = activate(self.spec.activation, u_BO)
        return (phi_BO + x_BI if self.spec.residual else phi_BO), phi_BO


class Net(nn.Module):
    def __init__(self, arch: Architecture, method: str, seed: int = 0,
                 area_init: str = "independent", feedback_dist: str = "gaussian",
                 feedback_scale: float = 1.0, kernel: str = "auto", init: str = "kaiming_normal"):
        super().__init__()
        self.arch, self.method, self.kernel = arch, method, kernel
        self.layers = nn.ModuleList(
            Layer(spec, method, arch, i, seed, area_init == "shared", feedback_dist,
                  feedback_scale, init)
            for i, spec in enumerate(arch.layers))

    def forward(self, x_BI: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Logits and each layer's area choice (None where unrouted). Used for
        BP and MoE training (autograd) and for evaluating every method."""
        all_areas = []
        self.gates: list = []  # MoE: (g_BN, areas_B) per routed layer, for the balance loss
        h = x_BI
        for layer in self.layers:
            u, areas = self._layer_pre(layer, h)
            h, _ = layer.activate_and_skip(h, u)
            all_areas.append(areas)
        return h, all_areas

    def _layer_pre(self, layer: Layer, x_BI):
        w, b = layer.areas.weight, layer.areas.bias
        if layer.router is None:
            zeros = torch.zeros(x_BI.shape[0], dtype=torch.long, device=x_BI.device)
            return routed_linear(x_BI, w, b, zeros), None
        if layer.method == "moe":
            g_BN, g_B, areas = layer.router(x_BI)
            self.gates.append((g_BN, areas))
            return g_B.unsqueeze(1) * routed_linear(x_BI, w, b, areas, self.kernel), areas
        _, areas = layer.router(x_BI)
        return routed_linear(x_BI, w, b, areas, self.kernel), areas


def net_options(cfg: Config) -> dict:
    """The options a `Net` (or a layer layout's stage of one) is built with, after
    its architecture and method: the same for every layout, so each builds the
    same layers from the same seeds."""
    return dict(seed=cfg.run.seed, area_init=cfg.model.area_init,
                feedback_dist=cfg.sal.feedback_dist, feedback_scale=cfg.sal.feedback_scale,
                kernel=cfg.run.kernel, init=cfg.model.init)


def build_net(cfg: Config, input_dim: int, n_classes: int) -> Net:
    arch = Architecture.from_config(cfg, input_dim, n_classes)
    return Net(arch, cfg.model.method, **net_options(cfg))


@dataclass
class ParamCounts:
    active: int   # area weights and biases one sample uses
    total: int    # all area weights and biases
    router: int   # trained router weights (SAL's W_s, MoE's W_g)
    fixed: int    # frozen tensors: SAL's W_fix and B
    per_layer: list = field(default_factory=list)  # per layer: the same four counts

    def as_dict(self) -> dict[str, int]:
        return {"params_active": self.active, "params_total": self.total,
                "params_router": self.router, "params_fixed": self.fixed}


def param_counts(arch: Architecture, method: str) -> ParamCounts:
    """By formula from the architecture alone, so a 1B-parameter configuration
    can be costed without allocating it (a test checks it against real tensors)."""
    rows = []
    for s in arch.layers:
        area = s.d_in * s.d_out + s.d_out
        row = {"active": area, "total": s.n_areas * area, "router": 0, "fixed": 0}
        if s.n_areas > 1 and method == "sal":
            d_f = arch.features(s)
            row["router"] = s.d_in * d_f
            row["fixed"] = d_f * s.n_areas
        elif s.n_areas > 1 and method == "moe":
            row["router"] = s.d_in * s.n_areas
        if method == "sal":
            row["fixed"] += s.d_out * arch.n_classes
        rows.append(row)
    return ParamCounts(*(sum(r[k] for r in rows) for k in ("active", "total", "router", "fixed")),
                       per_layer=rows)
