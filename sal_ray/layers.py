"""Routed layers: areas (or experts), the routers that pick one per sample, and
the routed matmul kernels. Imports only torch.

Shapes carry their names: B batch, I layer input, O layer output, N areas,
F router features. `areas_B` holds one area index per sample.

Every kernel computes the same thing,

    u_BO[i] = x_BI[i] @ W_NIO[areas_B[i]] + b_NO[areas_B[i]],

and its weight gradient, ΔW[k] = Σ_{i: areas_B[i]=k} x_i^T δ_i. They differ
only in layout, which decides speed:

- onehot: scatter x into an (B, N·I) block-one-hot matrix, then one GEMM against
  W viewed as (N·I, O). N× the FLOPs, but one launch and no host sync: fastest
  while N·B·I·O is small (the paper's batch-16, width-256 nets).
- gather: W[areas] as (B, I, O), then a batched product. B·I·O bytes of copy.
- sorted: stable sort by area, one GEMM per used area. Optimal FLOPs; one host
  sync for the group sizes. For large widths and batches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# `python benchmarks/step.py --threads 1 --kernel-table` (2026-12-03, shared 2-core
# sandbox, 7 rounds; docs/performance.md), batch 16, width 256, fastest layout:
#   n_areas 16: d_in 64 onehot (sorted 1.06x), 256..9216 sorted (onehot 1.06-1.46x)
#   n_areas 4:  d_in 64, 256 onehot (sorted 1.06-1.18x), 784..9216 sorted (onehot 1.02-1.22x)
# gather was never fastest (1.16-11.6x). So on the CPU: onehot up to this many
# multiply-adds N*B*I*O (4.2M: exactly SAL-16 at 64 and SAL-4 at 256), sorted beyond.
ONEHOT_MAX_MACS = 1 << 22


# On a GPU a small batch is bound by reading the weights: the one-GEMM layout reads
# each area once (the floor when every area is used) and never syncs with the host.
# Past this many rows x areas it is FLOP-bound, where sorting pays.
GPU_ONEHOT_MAX_ROWS = 512


def pick_kernel(kernel: str, n_areas: int, batch: int, d_in: int, d_out: int,
                on_gpu: bool = False) -> str:
    if n_areas == 1:
        return "dense"
    if kernel != "auto":
        return kernel
    if on_gpu:
        return "onehot" if n_areas * batch <= GPU_ONEHOT_MAX_ROWS else "sorted"
    if n_areas * batch * d_in * d_out <= ONEHOT_MAX_MACS:
        return "onehot"
    return "sorted"


def _onehot_rows(x_BI: torch.Tensor, areas_B: torch.Tensor, n_areas: int) -> torch.Tensor:
    """(B, N·I) with x_i in block areas_B[i] and zeros elsewhere."""
    B, I = x_BI.shape
    index = areas_B.view(B, 1, 1).expand(B, 1, I)
    x_BNI = x_BI.new_zeros(B, n_areas, I).scatter_(1, index, x_BI.unsqueeze(1))
    return x_BNI.view(B, n_areas * I)


def _sorted_groups(areas_B: torch.Tensor, n_areas: int):
    order_B = torch.argsort(areas_B, stable=True)
    counts = torch.bincount(areas_B, minlength=n_areas).tolist()  # the one host sync
    return order_B, counts


class Routing:
    """One batch's assignment of samples to areas, laid out once (block-one-hot
    rows, or sort order and group sizes) and used by both the forward product
    and the weight gradient, so a SAL step lays out and syncs only once."""

    def __init__(self, x_BI, areas_B, n_areas: int, d_out: int, kernel: str = "auto"):
        B, I = x_BI.shape
        self.x_BI, self.areas_B, self.n_areas = x_BI, areas_B, n_areas
        # areas_B is None on an unrouted layer (one area)
        self.kind = "dense" if areas_B is None else \
            pick_kernel(kernel, n_areas, B, I, d_out, x_BI.is_cuda)
        if self.kind == "onehot":
            self.rows = _onehot_rows(x_BI, areas_B, n_areas)
        elif self.kind == "sorted":
            self.order_B, self.counts = _sorted_groups(areas_B, n_areas)
            self.xs = torch.split(x_BI[self.order_B], self.counts)

    def linear(self, weight_NIO, bias_NO):
        """u_BO = x W[area] + b[area] per sample. Differentiable in x, W and b."""
        N, I, O = weight_NIO.shape
        x_BI, areas_B = self.x_BI, self.areas_B
        if self.kind == "dense":
            return torch.addmm(bias_NO[0], x_BI, weight_NIO[0])
        if self.kind == "onehot":
            return torch.addmm(bias_NO[areas_B], self.rows, weight_NIO.view(N * I, O))
        if self.kind == "gather":
            return torch.bmm(x_BI.unsqueeze(1), weight_NIO[areas_B]).squeeze(1) + bias_NO[areas_B]
        pieces = torch.cat([torch.addmm(bias_NO[k], xk, weight_NIO[k])
                            for k, xk in enumerate(self.xs) if self.counts[k]])
        # in the products' dtype: bfloat16 under autocast, whatever x is
        return pieces.new_empty(x_BI.shape[0], O).index_copy(0, self.order_B, pieces)

    def area_counts(self, dtype) -> torch.Tensor:
        """(N,) how many of the batch's samples chose each area, in `dtype`."""
        return torch.zeros(self.n_areas, dtype=dtype, device=self.areas_B.device).index_add_(
            0, self.areas_B, torch.ones_like(self.areas_B, dtype=dtype))

    def weight_grad(self, delta_BO, out=None):
        """(ΔW_NIO, Δb_NO): per-area sums of x_i^T δ_i and δ_i. Areas no sample
        chose get exact zeros, so plain SGD leaves them bit-identical. `out`, an
        (N, I, O) tensor, receives ΔW in place of a new one (its old values are
        overwritten, never added to)."""
        x_BI, areas_B, N = self.x_BI, self.areas_B, self.n_areas
        I, O = x_BI.shape[1], delta_BO.shape[1]
        if self.kind == "dense":
            dW = product(x_BI.T, delta_BO, None if out is None else out[0])
            return (dW.unsqueeze(0) if out is None else out), delta_BO.sum(0, keepdim=True)
        db_NO = delta_BO.new_zeros(N, O).index_add_(0, areas_B, delta_BO)
        if self.kind == "onehot":
            dW = product(self.rows.T, delta_BO, None if out is None else out.view(N * I, O))
            return (dW.view(N, I, O) if out is None else out), db_NO
        dW_NIO = delta_BO.new_zeros(N, I, O) if out is None else out
        if self.kind == "gather":
            outer_BIO = x_BI.unsqueeze(2) * delta_BO.unsqueeze(1)
            if out is not None:
                out.zero_()
            return dW_NIO.index_add_(0, areas_B, outer_BIO), db_NO
        ds = torch.split(delta_BO[self.order_B], self.counts)
        for k in range(N):
            if self.counts[k]:
                product(self.xs[k].T, ds[k], dW_NIO[k])
            elif out is not None:
                dW_NIO[k].zero_()  # only areas no sample chose: the rest are overwritten
        return dW_NIO, db_NO


def product(a, b, into=None):
    """a @ b (mm or bmm), written into `into` when there is one."""
    if into is None:
        return a @ b
    if torch.is_autocast_enabled(a.device.type):  # an out= product would bypass autocast
        return into.copy_(a @ b)
    return torch.matmul(a, b, out=into)


def routed_linear(x_BI, weight_NIO, bias_NO, areas_B, kernel: str = "auto"):
    """u_BO = x W[area] + b[area] per sample. Differentiable in x, W and b."""
    N, _, O = weight_NIO.shape
    return Routing(x_BI, areas_B, N, O, kernel).linear(weight_NIO, bias_NO)


def routed_weight_grad(x_BI, delta_BO, areas_B, n_areas: int, kernel: str = "auto"):
    """(ΔW_NIO, Δb_NO) for one batch; see `Routing.weight_grad`."""
    return Routing(x_BI, areas_B, n_areas, delta_BO.shape[1], kernel).weight_grad(delta_BO)


ACT_GAIN = {"relu": math.sqrt(2.0), "tanh": 5.0 / 3.0, "identity": 1.0}


def activate(name: str, u: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return torch.relu(u)
    if name == "tanh":
        return torch.tanh(u)
    return u


def activation_grad(name: str, u: torch.Tensor, phi_u: torch.Tensor) -> torch.Tensor | float:
    """φ'(u), reusing φ(u) where that is cheaper."""
    if name == "relu":
        return u > 0  # a bool mask: multiplying by it promotes to u's dtype
    if name == "tanh":
        return 1.0 - phi_u * phi_u
    return 1.0


def seeded(seed: int, *path: int) -> torch.Generator:
    """A generator for one tensor, keyed by (seed, path): each tensor's draw is
    independent of every other tensor's shape, so SAL-1, SAL-16 and BP built
    from one seed share area 0's initial weights exactly."""
    key = seed
    for p in path:
        key = (key * 1_000_003 + p + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(key)


class Areas(nn.Module):
    """N independent affine maps d_in → d_out (N = 1: a plain linear layer)."""

    def __init__(self, n_areas: int, d_in: int, d_out: int, gain: float,
                 shared_init: bool, gen: torch.Generator, init: str = "kaiming_normal"):
        super().__init__()
        draws = 1 if shared_init else n_areas
        if init == "kaiming_normal":
            # He normal, fan-in mode: std = gain / sqrt(d_in). Biases start at zero.
            w = torch.randn(draws, d_in, d_out, generator=gen, dtype=torch.float64)
            w = w * (gain / math.sqrt(d_in))
            b = torch.zeros(draws, d_out, dtype=torch.float64)
        else:  # torch_linear: nn.Linear's default, U(±1/sqrt(d_in)) for weight and bias
            bound = 1.0 / math.sqrt(d_in)
            w = (torch.rand(draws, d_in, d_out, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            b = (torch.rand(draws, d_out, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        self.weight = nn.Parameter(w.expand(n_areas, d_in, d_out).clone().float())
        self.bias = nn.Parameter(b.expand(n_areas, d_out).clone().float())

    @property
    def n_areas(self) -> int:
        return self.weight.shape[0]

    def forward(self, x_BI, areas_B, kernel="auto"):
        return routed_linear(x_BI, self.weight, self.bias, areas_B, kernel)


class Selector(nn.Module):
    """SAL's router: z = x W_s (trained by the selector loss only),
    p = z W_fix (random, frozen: a buffer), area = argmax p."""

    def __init__(self, d_in: int, d_f: int, n_areas: int, gen: torch.Generator):
        super().__init__()
        w_s = torch.randn(d_in, d_f, generator=gen, dtype=torch.float64) / math.sqrt(d_in)
        w_fix = torch.randn(d_f, n_areas, generator=gen, dtype=torch.float64) / math.sqrt(d_f)
        self.weight = nn.Parameter(w_s.float())
        self.register_buffer("prototypes", w_fix.float())

    def forward(self, x_BI):
        z_BF = x_BI @ self.weight
        areas_B = torch.argmax(z_BF @ self.prototypes, dim=1)
        return z_BF, areas_B


class Gate(nn.Module):
    """MoE's router: g = softmax(x W_g), top-1 expert, trained end to end."""

    def __init__(self, d_in: int, n_experts: int, gen: torch.Generator):
        super().__init__()
        w_g = torch.randn(d_in, n_experts, generator=gen, dtype=torch.float64) / math.sqrt(d_in)
        self.weight = nn.Parameter(w_g.float())

    def forward(self, x_BI):
        # softmax in the weight's dtype: float32 under bf16 autocast, as on CUDA
        g_BN = torch.softmax(x_BI @ self.weight, dim=1, dtype=self.weight.dtype)
        g_B, areas_B = g_BN.max(dim=1)
        return g_BN, g_B, areas_B
