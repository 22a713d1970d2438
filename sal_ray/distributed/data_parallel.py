"""Data parallelism in plain torch.distributed: no Ray here, so the GPU machines
(which have no Ray) and the tests (`spawn`, gloo on CPU) use it directly.

`DataParallel` is a `train.Layout`: the core's one epoch loop and fit loop run
it. Every worker holds the whole net and the whole dataset. Each step, the
global batch that the single-process trainer would use (`epoch_order`,
`batch_size`) is cut into `world` contiguous shards; every worker runs the
method's rule on its shard, and the gradients are summed over workers. No DDP:
SAL fills `.grad` in closed form without any backward pass for DDP to hook, so
one explicit all-reduce serves SAL, BP and MoE alike.

Why a sum gives the single-process step: the rules return gradients that are
sums over samples divided by the *local* batch (`rules._class_error`). Scaling
each worker's gradient by local / global batch before summing turns them into
sums divided by the global batch, i.e. the single-process gradient up to float
round-off. SAL's `area_grad_scale="area"` divides each area by its local sample
count instead; there the factor is local count / global count of that area.
Not exact: MoE's Switch balance loss (moe_balance > 0) is a product of two batch
means, so each worker computes it on its own shard (as Switch does per device).

The state is replicated, so a checkpoint is the core's single-file format,
written by rank 0 with `train.save_checkpoint`; any number of workers resumes it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..config import Config
from ..data.batches import gather_rows
from ..trainer import Layout, Run, load_checkpoint, save_checkpoint
from ..trainer import evaluate as evaluate_local
from .group import Group, all_sum, broadcast_state, on_every_worker

# Gradients are all-reduced in flat buckets of at most this many elements: few
# collective calls at small shapes, bounded extra memory at the 4B-parameter one.
BUCKET_ELEMS = 1 << 25


def shard(idx_B: torch.Tensor, group: Group) -> torch.Tensor:
    """This worker's contiguous share of a global batch (sizes differ by at most 1;
    a share may be empty when the batch is smaller than the group)."""
    return torch.tensor_split(idx_B, group.world)[group.rank]


def _area_count_scales(run: Run, areas, local_n: int, group: Group) -> dict[int, torch.Tensor]:
    """SAL with area_grad_scale="area": per layer, local / global count of each area."""
    routed = run.routed_layers
    counts = []
    for i in routed:
        n = run.net.arch.layers[i].n_areas
        c = torch.zeros(n, dtype=torch.float64, device=group.device)
        if local_n:
            c.index_add_(0, areas[i], torch.ones_like(areas[i], dtype=torch.float64))
        counts.append(c)
    if not counts:
        return {}
    local = torch.cat(counts)
    total = all_sum(local.clone(), group)
    scale = (local / total.clamp(min=1)).split([c.numel() for c in counts])
    return dict(zip(routed, scale))


def sync_grads(run: Run, areas, local_n: int, global_n: int, group: Group,
               bucket_elems: int = BUCKET_ELEMS) -> None:
    """Make every worker's .grad the global batch's gradient (see module doc)."""
    params = [p for p in run.net.parameters() if p.requires_grad]
    for p in params:  # every worker must reduce the same list of tensors
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    per_area = {}
    if run.cfg.model.method == "sal" and run.cfg.sal.area_grad_scale == "area":
        per_area = _area_count_scales(run, areas, local_n, group)
    factor = local_n / global_n
    for i, layer in enumerate(run.net.layers):
        if i in per_area:
            s_N = per_area[i].to(layer.areas.weight.dtype)
            layer.areas.weight.grad.mul_(s_N.view(-1, 1, 1))
            layer.areas.bias.grad.mul_(s_N.view(-1, 1))
            if layer.router is not None:
                layer.router.weight.grad.mul_(factor)
        else:
            for p in layer.parameters():
                p.grad.mul_(factor)
    if group.world == 1:
        return
    bucket, size = [], 0
    for g in (p.grad for p in params):
        if g.numel() >= bucket_elems:  # larger than a bucket: reduce it in place
            dist.all_reduce(g)
            continue
        if size + g.numel() > bucket_elems:
            _reduce_flat(bucket)
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel()
    if bucket:
        _reduce_flat(bucket)


def _reduce_flat(grads: list[torch.Tensor]) -> None:
    if len(grads) == 1:
        dist.all_reduce(grads[0])
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for g, piece in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(piece.view_as(g))


def train_step(run: Run, x_BI, y_B, global_n: int, group: Group):
    """The rule on this worker's shard, gradients summed over workers, SGD."""
    if len(y_B):
        loss, logits, areas = run.step(run.net, x_BI, y_B)
    else:  # an empty shard contributes zero gradient (its mean loss would be NaN)
        run.net.zero_grad(set_to_none=True)
        loss, logits, areas = None, None, [None] * len(run.net.layers)
    sync_grads(run, areas, len(y_B), global_n, group)
    run.optimizer.step()
    return loss, logits, areas


@torch.no_grad()
def evaluate(run: Run, x, y, group: Group) -> tuple[float, float]:
    """Mean loss and accuracy, each worker taking a contiguous slice of the split."""
    mine = shard(torch.arange(len(y), device=y.device), group)
    lo, hi = (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)
    n_local = hi - lo
    loss, acc = evaluate_local(run, x[lo:hi], y[lo:hi]) if n_local else (0.0, 0.0)
    sums = torch.tensor([loss * n_local, acc * n_local], dtype=torch.float64, device=run.device)
    all_sum(sums, group)
    n = max(len(y), 1)
    return sums[0].item() / n, sums[1].item() / n


class DataParallel(Layout):
    """The data layout over `group`, for every method (see the module doc)."""

    def __init__(self, group: Group):
        self.group = group

    @property
    def is_main(self) -> bool:
        return self.group.is_main

    def place(self, cfg: Config) -> Config:
        return cfg.replace(device=str(self.group.device))

    def take(self, run: Run, idx_B: torch.Tensor):
        return gather_rows(run.x_train, run.y_train, shard(idx_B, self.group))

    def step(self, run: Run, x_BI, y_B, batch_n: int):
        return train_step(run, x_BI, y_B, batch_n, self.group)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_sum(t, self.group)

    def evaluate(self, run: Run, x, y) -> tuple[float, float]:
        return evaluate(run, x, y, self.group)

    def resume(self, run: Run, folder: str | None) -> tuple[int, list]:
        """Rank 0 reads the checkpoint; everyone gets its epoch, history and
        weights. A refusal is raised on every worker."""
        done, history = on_every_worker(lambda: load_checkpoint(run, folder),
                                        f"resume from {folder}", self.group,
                                        run_here=self.group.is_main and bool(folder),
                                        default=(0, []))[0]
        broadcast_state(run.net, self.group)
        return done, history

    def save(self, run: Run, folder: str, epoch: int, history: list) -> str | None:
        if not self.group.is_main:
            return None
        save_checkpoint(run, folder, epoch, history)
        return folder

    def params(self, run: Run) -> dict[str, Any]:
        return {"num_workers": self.group.world, "layout": "data_parallel"}

    def epoch_fields(self) -> dict[str, float]:
        return {"num_workers": self.group.world}
