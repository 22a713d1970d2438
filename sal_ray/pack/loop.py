"""fit_pack: train a pack's members to the end, each reported as its own run.

    results = fit_pack([cfg.replace(seed=s) for s in range(5)])   # one RunResult each

Each member sees its own data order `epoch_order(seed, epoch)`, gets its own
verdict every epoch (`trainer.divergence`), and a member that diverges stops
alone: its weights at that point become its result, its rate is set to 0 and its
slice of the stack zeroed, while the others go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .. import data as datasets
from ..config import Config, ConfigError, validate
from ..data.batches import epoch_order
from ..models import Architecture, build_net, param_counts
from ..rules import autocast, full_precision, make_optimizer
from ..trainer import (ONE_PROCESS, Callback, Layout, Run, RunResult, check_folder,
                       divergence, fit, resolve_device, usage_metrics)
from .build import PackNet, check_pack, stack_nets, unstack_into, zero_member
from .state import ENDED_EARLY, load_pack, save_pack
from .step import PackSGD, make_pack_rule, member_losses


@dataclass
class Member:
    run: Run                     # its own Run and Net (the result's net)
    history: list = field(default_factory=list)
    status: str = "running"      # running | completed | diverged
    message: str = ""


@dataclass
class Pack:
    configs: list[Config]
    net: PackNet
    optimizer: PackSGD
    step: Callable
    members: list[Member]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    device: torch.device


def build_pack(configs: Sequence[Config], layout: Layout | None = None) -> Pack:
    """Validate every member, load the data once, build each member's net as its
    separate run would, and stack them. All input errors surface here."""
    configs = list(configs)
    if layout is not None and layout is not ONE_PROCESS:
        raise ConfigError("fuse", f"the {type(layout).__name__} layout cannot run a pack "
                          f"({len(configs)} runs fused as one stacked model): set fuse=false")
    check_pack(configs)
    for c in configs:
        validate(c)
    cfg = configs[0]
    device = resolve_device(cfg.run.device)
    splits = datasets.load(cfg.data.dataset, cfg.data.data_root, cfg.data.download)
    for c in configs:
        validate(c, n_classes=splits.n_classes)
    dtype = getattr(torch, cfg.run.dtype)
    arch = Architecture.from_config(cfg, splits.input_dim, splits.n_classes)
    x_train, x_val = (x.to(dtype).to(device) for x in (splits.x_train, splits.x_val))
    y_train, y_val = splits.y_train.to(device), splits.y_val.to(device)
    members = []
    for c in configs:
        net = build_net(c, splits.input_dim, splits.n_classes).to(device=device, dtype=dtype)
        members.append(Member(Run(c, net, make_optimizer(net, c), None, x_train, y_train,
                                  x_val, y_val, param_counts(arch, c.model.method), device)))
    net = stack_nets([m.run.net for m in members])
    return Pack(configs, net, PackSGD(net, configs), make_pack_rule(cfg), members,
                x_train, y_train, x_val, y_val, device)


def train_pack_epoch(pack: Pack, epoch: int) -> dict:
    """One pass per member over the training split in its own order: (M,) sums."""
    M, n, dev = len(pack.members), len(pack.y_train), pack.device
    bs = pack.configs[0].optim.batch_size
    loss_sum = torch.zeros(M, dtype=torch.float64, device=dev)
    correct = torch.zeros(M, dtype=torch.float64, device=dev)
    routed = [i for i, s in enumerate(pack.net.arch.layers) if s.n_areas > 1]
    usage = {i: torch.zeros(M * pack.net.arch.layers[i].n_areas, dtype=torch.float64,
                            device=dev) for i in routed}
    orders_Mn = torch.stack([epoch_order(c.run.seed, epoch, n, dev) for c in pack.configs])
    for start in range(0, n, bs):
        idx = orders_Mn[:, start:start + bs].reshape(-1)
        B = idx.numel() // M
        x = pack.x_train.index_select(0, idx).view(M, B, -1)
        y = pack.y_train.index_select(0, idx).view(M, B)
        loss_M, logits, areas = pack.step(pack.net, x, y)
        pack.optimizer.step()
        loss_sum += loss_M.double() * B
        correct += (logits.argmax(-1) == y).sum(1)
        for i, counts in usage.items():
            N = pack.net.arch.layers[i].n_areas
            flat = areas[i] + torch.arange(M, device=dev).unsqueeze(1) * N
            counts.index_add_(0, flat.reshape(-1), torch.ones(M * B, dtype=torch.float64,
                                                               device=dev))
    per_layer = {i: u.view(M, -1).tolist() for i, u in usage.items()}
    return {"train_loss": (loss_sum / n).tolist(), "train_acc": (correct / n).tolist(),
            "usage": [{i: [int(v) for v in per_layer[i][m]] for i in routed}
                      for m in range(M)]}


@torch.no_grad()
def evaluate_pack(pack: Pack, x, y) -> tuple[list[float], list[float]]:
    """Each member's mean cross-entropy and accuracy over a split."""
    M, cfg = len(pack.members), pack.configs[0]
    loss_sum = torch.zeros(M, dtype=torch.float64, device=pack.device)
    correct = torch.zeros(M, dtype=torch.long, device=pack.device)
    for i in range(0, len(y), cfg.run.eval_batch_size):
        xb, yb = x[i:i + cfg.run.eval_batch_size], y[i:i + cfg.run.eval_batch_size]
        xb_M, yb_M = xb.expand(M, *xb.shape), yb.expand(M, *yb.shape)
        with autocast(cfg, pack.device.type):
            logits, _ = pack.net(xb_M)
        logits = full_precision(logits)
        loss_sum += member_losses(logits, yb_M).double() * len(yb)
        correct += (logits.argmax(-1) == yb_M).sum(1)
    n = max(len(y), 1)
    return (loss_sum / n).tolist(), (correct.double() / n).tolist()


def _stop(pack: Pack, m: int, why: str, status: str = "diverged") -> None:
    """Member m trains no more (diverged, or stopped by its sweep's scheduler): its
    weights as they are now are its result, and the pack stops updating it."""
    member = pack.members[m]
    member.status, member.message = status, why
    unstack_into(pack.net, m, member.run.net)  # the weights it stopped with
    pack.optimizer.freeze(m)
    zero_member(pack.net, m)


def fit_pack(configs: Sequence[Config], callbacks: Sequence[Sequence[Callback]] = (),
             checkpoint_dir: str | None = None, checkpoint_every: int = 1, *,
             layout: Layout | None = None,
             on_epoch_end: Callable[[int, dict, str | None], None] | None = None,
             save_due: Callable[[int], bool] | None = None,
             after_epoch: Callable[[int, str | None], None] | None = None
             ) -> list[RunResult]:
    """Train every member of `configs` (one shape: `check_pack`) to the end or its
    divergence; one RunResult per member, as its separate `trainer.fit` reports.

    fuse=false (recorded with each run): the members run one after another with
    `trainer.fit` instead. `callbacks[m]`: member m's callbacks. With
    `checkpoint_dir` the whole pack is checkpointed there (`state.PACK_CHECKPOINT`)
    every `checkpoint_every` epochs (or when `save_due(epoch)` says so: a sweep's
    trial saves by the clock) and after the last, and resumed from.
    `on_epoch_end(m, metrics, folder)` runs after each epoch of each live member,
    `after_epoch(epoch, folder)` once per epoch after every member's callbacks (a
    sweep's trial reports the pack to Tune there); it may return `(m, why)` pairs:
    those members stop there, with status "stopped" (a scheduler's decision).
    """
    configs = list(configs)
    cbs = [list(c) for c in callbacks] or [[] for _ in configs]
    if len(cbs) != len(configs):
        raise ConfigError("callbacks", f"one list per member: {len(configs)} members, "
                          f"{len(cbs)} lists")
    if configs and not configs[0].run.fuse:
        check_pack(configs)
        return [fit(c, cb, layout=layout) for c, cb in zip(configs, cbs)]
    if checkpoint_dir:
        check_folder(checkpoint_dir)
    pack = build_pack(configs, layout)
    done = load_pack(pack, checkpoint_dir) if checkpoint_dir else 0
    last = configs[0].optim.epochs
    if done > last:
        raise ConfigError("epochs", f"the checkpoint in {checkpoint_dir} has {done} epochs "
                          f"done, more than the {last} asked for")
    M = len(configs)
    extra = [{"pack_size": M, "pack_member": m} for m in range(M)]
    results = []
    for m, member in enumerate(pack.members):
        member.run.history = list(member.history)
        for cb in cbs[m]:
            cb.on_start(member.run)
        results.append(RunResult("completed", {**member.run.params(), **extra[m]},
                                 member.history, counts=member.run.counts.as_dict(),
                                 net=member.run.net))
    wall0 = [time.perf_counter() - (m.history[-1]["wall_time_s"] if m.history else 0.0)
             for m in pack.members]
    for epoch in range(done + 1, last + 1):
        live = [m for m, mem in enumerate(pack.members) if mem.status == "running"]
        if not live:
            break
        t0 = time.perf_counter()
        stats = train_pack_epoch(pack, epoch)
        if pack.device.type == "cuda":
            torch.cuda.synchronize(pack.device)
        train_time = time.perf_counter() - t0
        for m in live:
            why = divergence(configs[m], epoch, "training", stats["train_loss"][m])
            if why:
                _stop(pack, m, why)
        val_loss, val_acc = evaluate_pack(pack, pack.x_val, pack.y_val)
        reports = []
        for m in live:
            member = pack.members[m]
            if member.status != "running":
                continue
            why = divergence(configs[m], epoch, "validation", val_loss[m])
            if why:
                _stop(pack, m, why)
                continue
            metrics = {"epoch": epoch, "train_loss": stats["train_loss"][m],
                       "train_acc": stats["train_acc"][m], "val_loss": val_loss[m],
                       "val_acc": val_acc[m], "samples_per_s": len(pack.y_train) / train_time,
                       "epoch_time_s": train_time,
                       "wall_time_s": time.perf_counter() - wall0[m],
                       **usage_metrics(stats["usage"][m])}
            member.history.append(metrics)
            reports.append((m, metrics))
        if epoch == last:
            for mem in pack.members:
                if mem.status == "running":
                    mem.status = "completed"
        folder = None
        if checkpoint_dir and (epoch == last or (
                save_due(epoch) if save_due is not None else epoch % checkpoint_every == 0)):
            folder = save_pack(pack, checkpoint_dir, epoch)
        for m, metrics in reports:
            for cb in cbs[m]:
                cb.on_epoch(metrics)
            if on_epoch_end is not None:
                on_epoch_end(m, {**metrics, **results[m].counts}, folder)
        if after_epoch is not None:
            for m, why in after_epoch(epoch, folder) or ():
                if pack.members[m].status == "running":
                    _stop(pack, m, why, "stopped")
    for m, (member, result) in enumerate(zip(pack.members, results)):
        if member.status not in ENDED_EARLY:
            unstack_into(pack.net, m, member.run.net)
            member.status = "completed"
        result.status, result.message, result.history = member.status, member.message, \
            member.history
        for cb in cbs[m]:
            cb.on_end(result)
    return results
