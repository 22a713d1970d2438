"""The routed-matmul kernels of `layers.Routing`, over a leading member axis M.

Each member m computes exactly what its separate run's `Routing` does,

    u_MBO[m, i] = x_MBI[m, i] @ W_MNIO[m, areas_MB[m, i]] + b_MNO[m, areas_MB[m, i]],

and its weight gradient, batched over members. A kernel named in the config is
the separate run's layout; `auto` on the CPU picks by the pack's size
(PACK_ONEHOT_MAX_MACS), elsewhere as `layers.pick_kernel` does. Every layout is
the same math:

- dense (one area): one batched GEMM (baddbmm) for all members;
- onehot: each member's block-one-hot rows (M, B, N·I), one batched GEMM;
- gather: the (member, area) blocks of every sample, one batched product;
- sorted: rows grouped by (member, area) with one stable sort, one GEMM per used
  group: the member's own groups, in its own order;
- padded (pack only, auto on the CPU past PACK_ONEHOT_MAX_MACS): sorted's groups
  padded with zero rows to the largest, one batched GEMM for all of them.

Areas are addressed in the flat (M·N) index m·N + area, so per-area sums of all
members are one index_add_ and one bincount.
"""

from __future__ import annotations

import torch

from ..layers import pick_kernel, product

# auto on the CPU, for a pack: the one-hot product while the pack's multiply-adds
# (M·N·B·I·O) stay under this, else the padded one. Measured on Digits' first layer
# (64 -> 256, batch 16, 5 members, one thread, 3 rounds): sorted/onehot 1.47 at
# N=2 (2.6M), 1.13 at N=4 (5.2M), 0.85 at N=8 (10.5M), 0.68 at N=16 (21M), and
# padded (below) a further 0.65-0.8x of sorted's layer time at N=4..16. A
# separate run's crossover (layers.ONEHOT_MAX_MACS) is per run: the pack's one-hot
# product grows with M·N·B, the padded one with M·N times the largest group.
PACK_ONEHOT_MAX_MACS = 7_500_000


class PackRouting:
    """One pack batch's assignment of samples to areas, laid out once and used by
    the forward product and the weight gradient. Attribute names follow
    `layers.Routing` (x_BI is the (M, B, I) input, areas_B the (M, B) choice), so
    `rules.sal_layer_grads` reads either."""

    def __init__(self, x_MBI, areas_MB, n_areas: int, d_out: int, kernel: str = "auto"):
        M, B, I = x_MBI.shape
        self.x_BI, self.areas_B, self.n_areas = x_MBI, areas_MB, n_areas
        if areas_MB is None:
            self.kind = "dense"
            return
        if kernel == "auto" and not x_MBI.is_cuda and n_areas > 1:
            self.kind = "onehot" if M * n_areas * B * I * d_out <= PACK_ONEHOT_MAX_MACS \
                else "padded"
        else:
            self.kind = pick_kernel(kernel, n_areas, B, I, d_out, x_MBI.is_cuda)
        offsets_M1 = torch.arange(M, device=areas_MB.device).unsqueeze(1) * n_areas
        self.flat = (areas_MB + offsets_M1).reshape(M * B)  # (member, area) per row
        if self.kind == "onehot":
            index = areas_MB.view(M, B, 1, 1).expand(M, B, 1, I)
            x_MBNI = x_MBI.new_zeros(M, B, n_areas, I).scatter_(2, index, x_MBI.unsqueeze(2))
            self.rows = x_MBNI.view(M, B, n_areas * I)
        elif self.kind == "sorted":
            self.order = torch.argsort(self.flat, stable=True)
            # the one host sync, as in the separate run
            self.counts = torch.bincount(self.flat, minlength=M * n_areas).tolist()
            self.xs = torch.split(x_MBI.reshape(M * B, I)[self.order], self.counts)
        elif self.kind == "padded":
            # sorted's groups, each padded with zero rows to the largest: one batched
            # product for all (member, area) groups instead of one per group
            G = M * n_areas
            self.order = torch.argsort(self.flat, stable=True)
            counts = torch.bincount(self.flat, minlength=G)
            self.group = self.flat[self.order]
            self.pos = torch.arange(M * B, device=counts.device) - \
                (torch.cumsum(counts, 0) - counts)[self.group]
            C = int(counts.max())  # the one host sync
            self.x_GCI = x_MBI.new_zeros(G, C, I).index_put(
                (self.group, self.pos), x_MBI.reshape(M * B, I)[self.order])

    def _bias_rows(self, bias_MNO):
        """(M, B, O): each sample's area bias."""
        M, B = self.areas_B.shape
        return bias_MNO.reshape(-1, bias_MNO.shape[-1])[self.flat].view(M, B, -1)

    def linear(self, weight_MNIO, bias_MNO):
        """u_MBO per sample and member. Differentiable in x, W and b."""
        M, N, I, O = weight_MNIO.shape
        x = self.x_BI
        B = x.shape[1]
        if self.kind == "dense":
            return torch.baddbmm(bias_MNO[:, :1], x, weight_MNIO[:, 0])
        if self.kind == "onehot":
            return torch.baddbmm(self._bias_rows(bias_MNO), self.rows,
                                 weight_MNIO.reshape(M, N * I, O))
        if self.kind == "gather":
            w_RIO = weight_MNIO.reshape(M * N, I, O)[self.flat]
            u = torch.bmm(x.reshape(M * B, 1, I), w_RIO).view(M, B, O)
            return u + self._bias_rows(bias_MNO)
        if self.kind == "padded":
            u_GCO = torch.bmm(self.x_GCI, weight_MNIO.reshape(M * N, I, O))
            u = u_GCO.new_empty(M * B, O).index_copy(0, self.order,
                                                     u_GCO[self.group, self.pos])
            return u.view(M, B, O) + self._bias_rows(bias_MNO)
        w_GIO, b_GO = weight_MNIO.reshape(M * N, I, O), bias_MNO.reshape(M * N, O)
        pieces = torch.cat([torch.addmm(b_GO[g], xg, w_GIO[g])
                            for g, xg in enumerate(self.xs) if self.counts[g]])
        out = pieces.new_empty(M * B, O).index_copy(0, self.order, pieces)
        return out.view(M, B, O)

    def area_counts(self, dtype) -> torch.Tensor:
        """(M, N) how many of each member's samples chose each area."""
        M = self.areas_B.shape[0]
        ones = torch.ones_like(self.flat, dtype=dtype)
        return torch.zeros(M * self.n_areas, dtype=dtype, device=ones.device).index_add_(
            0, self.flat, ones).view(M, self.n_areas)

    def weight_grad(self, delta_MBO, out=None):
        """(ΔW_MNIO, Δb_MNO): per member and area, Σ x_i^T δ_i and Σ δ_i. Areas
        no sample of a member chose get exact zeros. `out`, an (M, N, I, O)
        tensor, receives ΔW in place of a new one (see `layers.Routing`)."""
        x, N = self.x_BI, self.n_areas
        M, B, I = x.shape
        O = delta_MBO.shape[-1]
        if self.kind == "dense":
            dW = product(x.mT, delta_MBO, None if out is None else out.view(M, I, O))
            return dW.view(M, 1, I, O), delta_MBO.sum(1).unsqueeze(1)
        d_RO = delta_MBO.reshape(M * B, O)
        db = delta_MBO.new_zeros(M * N, O).index_add_(0, self.flat, d_RO).view(M, N, O)
        flat_out = None if out is None else out.view(M * N, I, O)
        if self.kind == "onehot":
            dW = product(self.rows.mT, delta_MBO, None if out is None else out.view(M, N * I, O))
            return dW.view(M, N, I, O), db
        if self.kind == "gather":
            outer_RIO = x.reshape(M * B, I, 1) * d_RO.unsqueeze(1)
            dW = delta_MBO.new_zeros(M * N, I, O) if out is None else flat_out.zero_()
            return dW.index_add_(0, self.flat, outer_RIO).view(M, N, I, O), db
        if self.kind == "padded":
            d_GCO = delta_MBO.new_zeros(M * N, self.x_GCI.shape[1], O).index_put(
                (self.group, self.pos), d_RO[self.order])
            return product(self.x_GCI.mT, d_GCO, flat_out).view(M, N, I, O), db
        dW = delta_MBO.new_zeros(M * N, I, O) if out is None else flat_out
        ds = torch.split(d_RO[self.order], self.counts)
        for g in range(M * N):
            if self.counts[g]:
                product(self.xs[g].T, ds[g], dW[g])
            elif out is not None:
                dW[g].zero_()  # only groups no sample chose: the rest are overwritten
        return dW.view(M, N, I, O), db
