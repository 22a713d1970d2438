"""Data parallelism in plain torch.distributed: no Ray here, so the GPU machines
(which have no Ray) and the tests (`spawn`, gloo on CPU) use it directly.

Every worker holds the whole net and the whole dataset. Each step, the global
batch that the single-process trainer would use (`epoch_order`, `batch_size`)
is cut into `world` contiguous shards; every worker runs the method's rule on
its shard, and the gradients are summed over workers. No DDP: SAL fills `.grad`
in closed form without any backward pass for DDP to hook, so one explicit
all-reduce serves SAL, BP and MoE alike.

Why a sum gives the single-process step: the rules return gradients that are
sums over samples divided by the *local* batch (`rules._class_error`). Scaling
each worker's gradient by local / global batch before summing turns them into
sums divided by the global batch, i.e. the single-process gradient up to float
round-off. SAL's `area_grad_scale="area"` divides each area by its local sample
count instead; there the factor is local count / global count of that area.
Not exact: MoE's Switch balance loss (moe_balance > 0) is a product of two batch
means, so each worker computes it on its own shard (as Switch does per device).

The state is replicated, so a checkpoint is the core's single-file format,
written by rank 0 with `save_checkpoint`; any number of workers resumes it.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..config import Config
from ..train import (DIVERGENCE_CHECK_STEPS, Callback, Run, RunResult, build, epoch_metrics,
                     epoch_order, load_checkpoint, save_checkpoint)
from ..train import evaluate as evaluate_local

# Gradients are all-reduced in flat buckets of at most this many elements: few
# collective calls at small shapes, bounded extra memory at the 4B-parameter one.
BUCKET_ELEMS = 1 << 25


@dataclass(frozen=True)
class Group:
    """This worker's place in the data-parallel group."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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


# ---- collectives ---------------------------------------------------------------

def all_sum(t: torch.Tensor, group: Group) -> torch.Tensor:
    if group.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_state(net: torch.nn.Module, group: Group) -> None:
    """Rank 0's parameters and buffers to every worker (after init or a resume
    that only rank 0 could read)."""
    if group.world == 1:
        return
    for t in net.state_dict().values():
        dist.broadcast(t, src=0)


def broadcast_object(obj: Any, group: Group) -> Any:
    if group.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=group.device
                               if dist.get_backend() == "nccl" else None)
    return box[0]


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


# ---- one step, one epoch, evaluation -------------------------------------------

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


def train_epoch(run: Run, epoch: int, group: Group) -> dict[str, Any]:
    """The core's `train_epoch` over the same global batches, sharded."""
    bs, n = run.cfg.optim.batch_size, len(run.y_train)
    order = epoch_order(run.cfg.run.seed, epoch, n, run.device)
    dev = run.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.float64, device=dev)
    usage = {i: torch.zeros(run.net.arch.layers[i].n_areas, dtype=torch.float64, device=dev)
             for i in run.routed_layers}
    for step, start in enumerate(range(0, n, bs)):
        idx = order[start:start + bs]
        mine = shard(idx, group)
        x, y = run.x_train[mine], run.y_train[mine]
        loss, logits, areas = train_step(run, x, y, len(idx), group)
        if len(mine):
            loss_sum += loss.double() * len(mine)
            correct += (logits.argmax(1) == y).sum()
            for i, counts in usage.items():
                counts.index_add_(0, areas[i], torch.ones_like(areas[i], dtype=torch.float64))
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0:
            # every worker must take the same branch, so decide on the global sum
            if not torch.isfinite(all_sum(loss_sum.clone(), group)):
                return {"finite": False}
    return epoch_totals(loss_sum, correct, usage, n, group)


def epoch_totals(loss_sum, correct, usage: dict, n: int, group: Group) -> dict[str, Any]:
    """The epoch's train loss, accuracy and area usage, summed over workers (one
    all-reduce); the sums are float64, exact for the integer counts."""
    totals = all_sum(torch.cat([loss_sum.view(1), correct.view(1), *usage.values()]), group)
    train_loss = totals[0].item() / n
    sizes = [c.numel() for c in usage.values()]
    per_layer = totals[2:].split(sizes) if sizes else []
    return {"finite": math.isfinite(train_loss), "train_loss": train_loss,
            "train_acc": totals[1].item() / n,
            "usage": {i: [int(v) for v in c.tolist()] for i, c in zip(usage, per_layer)}}


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


# ---- the whole run ---------------------------------------------------------------

Report = Callable[[dict, "str | None"], None]


def _resume(run: Run, resume_dir: str | None, group: Group) -> tuple[int, list]:
    """Rank 0 reads the checkpoint; everyone gets its epoch, history and weights.
    A refusal (another configuration) is raised on every worker, not just rank 0,
    so nobody is left waiting in a collective."""
    state, error = (0, []), None
    if group.is_main and resume_dir:
        try:
            state = load_checkpoint(run, resume_dir)
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    state, message = broadcast_object((state, None if error is None else str(error)), group)
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 could not resume from {resume_dir}: {message}")
    done, history = state
    broadcast_state(run.net, group)
    return done, history


def fit(cfg: Config, group: Group, checkpoint_dir: str | None = None,
        callbacks: Sequence[Callback] = (), report: Report | None = None,
        resume_dir: str | None = None, layout: str = "data",
        boundaries: Sequence[int] | None = None) -> RunResult:
    """`sal_ray.train.fit` over the initialised process group.

    Call it on every worker. `layout`: "data" (this module) or "layer" (SAL only:
    `layer_parallel.fit`, with optional stage `boundaries`). `checkpoint_dir`:
    rank 0 writes the core checkpoint there after every epoch (and resumes from
    it, unless `resume_dir` names another folder). `callbacks` run on rank 0
    only; `report(metrics, folder)` runs on every worker after every epoch,
    `folder` being rank 0's fresh checkpoint (None elsewhere): the hook the Ray
    wrapper uses. Returns rank 0's result on every worker.
    """
    from .layer_parallel import check_layout
    check_layout(cfg, layout, group.world)
    if layout == "layer":
        from . import layer_parallel
        return layer_parallel.fit(cfg, group, checkpoint_dir, callbacks, report, resume_dir,
                                  boundaries)
    run = build(cfg.replace(device=str(group.device)))
    done, history = _resume(run, resume_dir or checkpoint_dir, group)

    def save(epoch: int, history: list) -> str | None:
        if group.is_main and checkpoint_dir:
            save_checkpoint(run, checkpoint_dir, epoch, history)
            return checkpoint_dir
        return None

    params = {**run.params(), "num_workers": group.world, "layout": "data_parallel"}
    return run_epochs(run, group, done, history, params,
                      lambda r, e: train_epoch(r, e, group),
                      lambda r, x, y: evaluate(r, x, y, group), save, callbacks, report)


def run_epochs(run: Run, group: Group, done: int, history: list, params: dict,
               train_fn: Callable, eval_fn: Callable, save: Callable, callbacks, report):
    """The epochs after `done`, as `sal_ray.train.fit` runs them, with this
    layout's train/eval functions; `save(epoch, history)` checkpoints and returns
    the folder to report (or None). Callbacks run on rank 0 only."""
    callbacks = callbacks if group.is_main else ()
    for cb in callbacks:
        cb.on_start(run)
    result = RunResult("completed", params, history, counts=run.counts.as_dict(), net=run.net)
    wall0 = time.perf_counter() - (history[-1]["wall_time_s"] if history else 0.0)
    for epoch in range(done + 1, run.cfg.optim.epochs + 1):
        metrics, why = epoch_metrics(run, epoch, wall0, train_fn, eval_fn)
        if metrics is None:
            result.status, result.message = "diverged", why
            break
        metrics["num_workers"] = group.world
        history.append(metrics)
        folder = save(epoch, history)
        for cb in callbacks:
            cb.on_epoch(metrics)
        if report is not None:  # reported metrics also carry the parameter counts
            report({**metrics, **result.counts}, folder)
    for cb in callbacks:
        cb.on_end(result)
    return result


# ---- torch-only launcher (tests, benchmarks, one multi-GPU box without Ray) -------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, use_gpu, threads, fn, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if use_gpu:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(threads)
    dist.init_process_group("nccl" if use_gpu else "gloo", rank=rank, world_size=world)
    try:
        group = Group.current(torch.device("cuda", rank) if use_gpu else "cpu")
        value = fn(group, *args)
        if group.is_main:
            torch.save(value, out)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world: int, *args, use_gpu: bool = False, threads: int = 1):
    """Run `fn(group, *args)` in `world` fresh processes (gloo on CPU, nccl on
    GPUs, one GPU each) and return rank 0's return value. `fn` must be importable
    by name (a module-level function)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_worker, args=(world, free_port(), use_gpu, threads, fn, args, out),
                 nprocs=world, join=True)
        return torch.load(out, weights_only=False)


def _fit_jobs(group: Group, jobs: list[dict]) -> list[RunResult]:
    results = []
    for job in jobs:
        cfg = Config.from_flat(job["config"])
        layout = job.get("layout", "data")
        if layout == "layer":  # the whole net gathered on rank 0, as the data layout returns
            from . import layer_parallel
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
    from .layer_parallel import check_layout
    many = not isinstance(cfg, Config)
    cfgs = list(cfg) if many else [cfg]
    for c in cfgs:
        check_layout(c, layout, world)
    dirs = checkpoint_dir if isinstance(checkpoint_dir, (list, tuple)) else [checkpoint_dir] * len(cfgs)
    jobs = [{"config": c.to_flat(), "checkpoint_dir": d, "layout": layout,
             "boundaries": boundaries} for c, d in zip(cfgs, dirs)]
    results = spawn(_fit_jobs, world, jobs, use_gpu=use_gpu, threads=threads)
    return results if many else results[0]
