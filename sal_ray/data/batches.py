"""Device-resident mini-batches: the whole split lives on the device and an
epoch is one `torch.randperm` plus one `index_select` per batch (airbench's
layout). No DataLoader, no worker processes, no per-sample Python.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_permutation(n: int, epoch_seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The epoch's sample order. Drawn on the CPU from a generator seeded with
    `epoch_seed`, so the order is the same on every device, then moved once."""
    g = torch.Generator(device="cpu").manual_seed(int(epoch_seed))
    return torch.randperm(n, generator=g).to(device, non_blocking=True)


def epoch_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, epoch_seed: int,
                  drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x_BD, y_B) for one shuffled epoch, gathered on x's device.

    The last batch is smaller unless `drop_last`. Batches are fresh tensors
    (index_select), so the caller may keep or modify them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    n = len(x)
    order_N = epoch_permutation(n, epoch_seed, x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx_B = order_N[start:start + batch_size]
        yield x.index_select(0, idx_B), y.index_select(0, idx_B)


class DeviceBatches:
    """A split moved to `device` once; `batches(epoch_seed)` iterates an epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 device: torch.device | str | None = None, drop_last: bool = False):
        device = x.device if device is None else torch.device(device)
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.drop_last = batch_size, drop_last

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def batches(self, epoch_seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return epoch_batches(self.x, self.y, self.batch_size, epoch_seed, self.drop_last)

    def in_order(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Unshuffled views (slices, no copy), e.g. for evaluation."""
        b = batch_size or self.batch_size
        for start in range(0, len(self.x), b):
            yield self.x[start:start + b], self.y[start:start + b]
