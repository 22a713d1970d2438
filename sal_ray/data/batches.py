"""The data path training takes (and `benchmarks/data_path.py` measures): the
whole split lives on the device; an epoch is one permutation drawn from
(seed, epoch) and one `index_select` of x and of y per batch (airbench's
layout). No DataLoader, no worker processes, no per-sample Python.

    order_N = epoch_order(seed, epoch, len(y), device)
    for idx_B in batch_indices(order_N, batch_size):
        x_BD, y_B = gather_rows(x, y, idx_B)

A multi-worker layout takes its part of each global batch `idx_B` before the
gather (`sal_ray.distributed`), so every layout sees the single process's batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_order(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    """The epoch's sample order. It depends only on (seed, epoch), so a run resumed
    from an epoch's checkpoint sees exactly the batches an unbroken run would; it
    is drawn on the CPU, so the order is the same on every device, then moved once."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


def batch_indices(order_N: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """The epoch's batches as views of `order_N`, in order; the last one is smaller
    when `batch_size` does not divide the split."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(order_N), batch_size):
        yield order_N[start:start + batch_size]


def gather_rows(x: torch.Tensor, y: torch.Tensor, idx_B: torch.Tensor):
    """Rows `idx_B` of x and y, gathered on their device (fresh tensors)."""
    return x.index_select(0, idx_B), y.index_select(0, idx_B)
