"""The torch-only launcher (`sal_ray.distributed.spawn`) on 2 gloo workers: a
worker that fails mid-run hands its own traceback to the parent, and a worker
whose work is done cannot lose it in the process's teardown.

The teardown case is the class of fault CI met: a worker aborted with SIGABRT
("terminate called without an active exception") after its work, in interpreter
finalization, where gloo's worker threads still hold their last work. An
`atexit` hook that aborts stands in for it: it runs in the same phase.
"""

import atexit
import os

import pytest
import torch
import torch.distributed as dist

from sal_ray.distributed import WorkerError, spawn


def _sum_then_abort_at_exit(group, aborting_rank):
    t = torch.tensor([float(group.rank + 1)])
    dist.all_reduce(t)
    if group.rank == aborting_rank:
        atexit.register(os.abort)
    return t.item()


def _fail_on_rank_one(group):
    if group.rank == 1:
        raise ValueError("rank one cannot go on")
    t = torch.zeros(1)
    dist.broadcast(t, src=1)  # never matched: the parent must not wait on it
    return t.item()


@pytest.mark.parametrize("aborting_rank", [0, 1])
def test_an_abort_in_teardown_after_the_work_loses_nothing(aborting_rank):
    assert spawn(_sum_then_abort_at_exit, 2, aborting_rank) == 3.0


def test_a_worker_failing_mid_run_names_its_error():
    with pytest.raises(WorkerError, match="(?s)worker 1 failed first:.*rank one cannot go on"):
        spawn(_fail_on_rank_one, 2)
