"""A worker's place in the process group, and the few collectives the layouts
use. Plain torch.distributed: a world of one needs no process group at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This worker's place in the group."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.world - 1

    @classmethod
    def current(cls, device: torch.device | str | None = None) -> Group:
        """From the initialised default process group (one worker if none)."""
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device())
                      if torch.cuda.is_available() and dist.is_initialized()
                      and dist.get_backend() == "nccl" else torch.device("cpu"))
        return cls(rank, world, torch.device(device))


def all_sum(t: torch.Tensor, group: Group) -> torch.Tensor:
    if group.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(group: Group) -> None:
    if group.world > 1:
        dist.barrier()


def broadcast_state(net: torch.nn.Module, group: Group) -> None:
    """Rank 0's parameters and buffers to every worker (after init or a resume
    that only rank 0 could read)."""
    if group.world == 1:
        return
    for t in net.state_dict().values():
        dist.broadcast(t, src=0)


def on_every_worker(fn: Callable[[], Any], where: str, group: Group,
                    run_here: bool = True, default: Any = None) -> list:
    """Run `fn` here (if `run_here`, else take `default`), then return every
    worker's value. If it failed anywhere, raise on every worker: the original
    exception where it happened, a RuntimeError naming the worker elsewhere."""
    value, error = default, None
    if run_here:
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every worker
            error = e
    # every worker's (value, error message), on every worker: a failure on one is
    # raised on all, and none is left waiting in a collective the failed one skips
    mine = (value, None if error is None else f"{type(error).__name__}: {error}")
    outcomes = [mine]
    if group.world > 1:
        outcomes = [None] * group.world
        dist.all_gather_object(outcomes, mine)
    if error is not None:
        raise error
    failed = [(r, msg) for r, (_, msg) in enumerate(outcomes) if msg]
    if failed:
        raise RuntimeError(f"worker {failed[0][0]} could not {where}: {failed[0][1]}")
    return [v for v, _ in outcomes]
