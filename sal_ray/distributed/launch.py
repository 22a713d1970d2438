"""What every worker runs (`fit`: `train.fit` with the layout asked for), and the
torch-only launcher: N local processes for the tests, the benchmarks and one
multi-GPU box without Ray (`spawn`, `spawn_fit`)."""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
import tempfile
import time
import traceback
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..config import Config
from ..trainer import Callback, RunResult
from ..trainer import fit as fit_core
from . import layer_parallel
from .data_parallel import DataParallel
from .group import Group, barrier
from .layouts import check_layout


def fit(cfg: Config, group: Group, checkpoint_dir: str | None = None,
        callbacks: Sequence[Callback] = (),
        on_epoch_end: Callable[[dict, str | None], None] | None = None,
        resume_dir: str | None = None, layout: str = "data",
        boundaries: Sequence[int] | None = None) -> RunResult:
    """`sal_ray.trainer.fit` over the initialised process group; call it on every
    worker. `layout`: "data" (`data_parallel`, every method) or "layer" (SAL
    only: `layer_parallel`, with optional stage `boundaries`). `checkpoint_dir`:
    the layout's checkpoint is written there after every epoch (data: by rank 0,
    the core file; layer: a shard per stage) and resumed from, unless
    `resume_dir` names another folder. `callbacks` run on rank 0 only;
    `on_epoch_end(metrics, folder)` on every worker after every epoch, `folder`
    being what that worker checkpointed (None if nothing): the hook the Ray
    wrapper uses. The result's `net` is this worker's (a layer layout's `Stage`).
    """
    check_layout(cfg, layout, group.world)
    if layout == "layer":
        return layer_parallel.fit(cfg, group, checkpoint_dir, callbacks, on_epoch_end,
                                  resume_dir, boundaries)
    return fit_core(cfg, callbacks, checkpoint_dir, layout=DataParallel(group),
                    resume_dir=resume_dir, on_epoch_end=on_epoch_end)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerError(RuntimeError):
    """A spawned worker raised: the message is the first failure's traceback (a
    worker that failed only because a peer left names that after it)."""


def _worker(rank, world, port, use_gpu, threads, fn, args, out, errors):
    # a C++ abort (gloo, nccl) then prints every thread's Python stack, not just
    # "terminate called": the parent sees only the signal
    faulthandler.enable()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if use_gpu:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(threads)
    dist.init_process_group("nccl" if use_gpu else "gloo", rank=rank, world_size=world)
    # On failure the group is left as it is (destroying it while a peer is still
    # in a collective can hang or abort before the error is reported).
    group = Group.current(torch.device("cuda", rank) if use_gpu else "cpu")
    try:
        value = fn(group, *args)
    except Exception:
        # stamped, so that the parent names the first failure, not the peer that
        # then lost its connection to it
        record = os.path.join(errors, f"worker-{rank}.txt")
        with open(record + ".tmp", "w") as f:  # whole or absent: the parent may
            f.write(f"{time.time()!r}\n{traceback.format_exc()}")  # stop us mid-write
        os.replace(record + ".tmp", record)
        raise
    if group.is_main:
        torch.save(value, out)
    # No worker tears down while another is still in a collective with it; then
    # the process ends without interpreter finalization, where gloo's worker
    # threads, still holding their last work, can abort the process
    # (SIGABRT, "terminate called without an active exception") after the work
    # is done. That is how a forked multiprocessing child ends too.
    barrier(group)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable, world: int, *args, use_gpu: bool = False, threads: int = 1):
    """Run `fn(group, *args)` in `world` fresh processes (gloo on CPU, nccl on
    GPUs, one GPU each) and return rank 0's return value. `fn` must be importable
    by name (a module-level function)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        try:
            mp.spawn(_worker, args=(world, free_port(), use_gpu, threads, fn, args, out, tmp),
                     nprocs=world, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            raise _first_failure(tmp, e) from e
        # not a checkpoint: the return value (e.g. RunResults with their nets) that
        # our own child process just wrote to our private temporary folder
        return torch.load(out, weights_only=False)


def _first_failure(folder: str, error: Exception) -> Exception:
    failed = []
    for name in os.listdir(folder):
        if name.startswith("worker-") and name.endswith(".txt"):
            with open(os.path.join(folder, name)) as f:
                stamp, _, text = f.read().partition("\n")
            failed.append((float(stamp), name[len("worker-"):-len(".txt")], text))
    if not failed:  # killed by a signal: faulthandler printed its stack on stderr
        return WorkerError(f"{error} (its Python stack, if it aborted in C++, is in "
                           "the worker's stderr above)")
    failed.sort()
    _, rank, text = failed[0]
    after = "".join(f"\nworker {r} failed after it: {t.strip().splitlines()[-1]}"
                    for _, r, t in failed[1:])
    return WorkerError(f"worker {rank} failed first:\n{text.rstrip()}{after}")


def _fit_jobs(group: Group, jobs: list[dict]) -> list[RunResult]:
    results = []
    for job in jobs:
        cfg = Config.from_flat(job["config"])
        if job.get("layout", "data") == "layer":  # the whole net on rank 0, as "data" returns
            r = layer_parallel.fit(cfg, group, job.get("checkpoint_dir"),
                                   resume_dir=job.get("resume_dir"),
                                   boundaries=job.get("boundaries"), gather_net=True)
        else:
            r = fit(cfg, group, job.get("checkpoint_dir"), resume_dir=job.get("resume_dir"))
        results.append(r)
    return results


def spawn_fit(cfg: Config | Sequence[Config], world: int, checkpoint_dir=None,
              use_gpu: bool = False, threads: int = 1, layout: str = "data",
              boundaries: Sequence[int] | None = None):
    """`fit` on `world` spawned workers. Several configs (with a list of
    checkpoint folders) run one after the other in the same process group, which
    saves the start-up of fresh processes. Returns RunResult(s) with rank 0's net;
    with layout="layer" that is the whole net, gathered from every stage (so it
    must fit one process). The layout is checked before any process starts."""
    many = not isinstance(cfg, Config)
    cfgs = list(cfg) if many else [cfg]
    for c in cfgs:
        check_layout(c, layout, world)
    dirs = checkpoint_dir if isinstance(checkpoint_dir, (list, tuple)) else [checkpoint_dir] * len(cfgs)
    jobs = [{"config": c.to_flat(), "checkpoint_dir": d, "layout": layout,
             "boundaries": boundaries} for c, d in zip(cfgs, dirs)]
    results = spawn(_fit_jobs, world, jobs, use_gpu=use_gpu, threads=threads)
    return results if many else results[0]
