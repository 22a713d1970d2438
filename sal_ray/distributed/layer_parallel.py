"""Layer parallelism for SAL: the net cut into contiguous blocks of layers
("stages"), one per worker, in plain torch.distributed (no Ray here).

SAL's update is layer-local: a layer needs its own input, its own pre-activation
and the batch × C output error E_top, nothing from any other layer. So a step is

1. forward: stage r receives the batch's activations (batch × width) from r−1
   (stage 0 reads the data), runs its layers keeping their traces, sends its
   output to r+1;
2. the last stage computes the loss and E_top (batch × C) and broadcasts E_top;
3. every stage fills its own layers' .grad from its traces and E_top, and steps
   its own parameters.

No backward pass crosses a stage boundary and no weight or gradient is ever
all-reduced: each worker holds only its layers' areas, selectors and feedback
matrices. BP and MoE need the full backward pass, so they are refused here.

Every computation is the single-process one: the stage builds its layers with
the same `Layer` constructor and seeds (`seeded(seed, layer index, ...)`), runs
the same `rules.sal_forward` / `sal_error` / `sal_layer_grads`, on the same
global batches (`train.epoch_order`), so weights match the core trainer to
round-off. There is no microbatching: within a step the stages' forward passes
run one after the other; only the updates run concurrently (see docs/scaling.md).

Checkpoints: each stage writes its shard (its layers' state, with the full net's
key names), then rank 0 writes a manifest naming the epoch's shards. Any number
of stages, with any cut points, resumes from a layer-parallel checkpoint or from
a core `checkpoint.pt`; `gather_checkpoint` turns the shards into a core
checkpoint that `train.load_checkpoint` (the single-process trainer) reads.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import data as datasets
from ..config import Config, ConfigError, validate
from ..layers import routed_linear
from ..models import Architecture, Layer, build_net, param_counts
from ..rules import SALRule, sal_error, sal_forward, sal_layer_grads
from ..train import (CHECKPOINT_NAME, DIVERGENCE_CHECK_STEPS, Callback, Run, RunResult,
                     epoch_order, make_optimizer, resolve_device)
from .data_parallel import Group, Report, all_sum, epoch_totals, run_epochs

LAYOUTS = ("data", "layer")
MANIFEST_NAME = "stages.json"


def check_layout(cfg: Config, layout: str, world: int | None = None) -> None:
    """Refuse a layout the method cannot use, before any worker starts."""
    if layout not in LAYOUTS:
        raise ConfigError("layout", f"must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if layout != "layer":
        return
    if cfg.model.method != "sal":
        raise ConfigError("layout", f"layout='layer' needs a layer-local rule; method "
                          f"{cfg.model.method!r} trains by backpropagation through every layer, "
                          "which this layout does not run: use layout='data', or method 'sal'")
    if getattr(cfg.run, "precision", "fp32") != "fp32":
        raise ConfigError("precision", "layout='layer' runs its own step in float32 and does "
                          f"not do {cfg.run.precision} yet: use precision='fp32', or layout='data'")
    if world is not None and world > cfg.model.depth:
        raise ConfigError("layout", f"layout='layer' gives every worker at least one layer; "
                          f"{world} workers for depth {cfg.model.depth}")


# ---- partitioning ---------------------------------------------------------------

def layer_sizes(arch: Architecture, method: str = "sal") -> list[int]:
    """Elements each layer holds: areas and biases, selector and prototypes, feedback."""
    sizes = []
    for s in arch.layers:
        n = s.n_areas * (s.d_in * s.d_out + s.d_out)
        if s.n_areas > 1 and method == "sal":
            n += (s.d_in + s.n_areas) * arch.features(s)
        if method == "sal":
            n += s.d_out * arch.n_classes
        sizes.append(n)
    return sizes


def balanced_bounds(sizes: Sequence[int], world: int) -> list[int]:
    """[0, b_1, …, b_{W−1}, L]: stage r holds layers [b_r, b_{r+1}), contiguous, at
    least one each, with the largest stage as small as possible (exact dynamic
    programme, O(W·L²); among equal optima the same cut every time)."""
    L = len(sizes)
    if not 1 <= world <= L:
        raise ValueError(f"{world} stages for {L} layers: each stage needs at least one layer")
    prefix = [0]
    for n in sizes:
        prefix.append(prefix[-1] + n)
    inf = float("inf")
    # best[k][j]: the smallest largest-stage for layers [0, j) in k stages; cut[k][j] its last cut
    best = [[inf] * (L + 1) for _ in range(world + 1)]
    cut = [[0] * (L + 1) for _ in range(world + 1)]
    best[0][0] = 0
    for k in range(1, world + 1):
        for j in range(k, L - (world - k) + 1):
            for i in range(k - 1, j):
                cost = max(best[k - 1][i], prefix[j] - prefix[i])
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    bounds, j = [L], L
    for k in range(world, 0, -1):
        j = cut[k][j]
        bounds.append(j)
    return bounds[::-1]


def stage_bounds(arch: Architecture, method: str, world: int,
                 boundaries: Sequence[int] | None = None) -> list[int]:
    """The stages' layer ranges as [0, b_1, …, L]: balanced by `layer_sizes`, or
    from `boundaries`, the W−1 indices at which stages 1…W−1 start."""
    L = len(arch.layers)
    if boundaries is None:
        return balanced_bounds(layer_sizes(arch, method), world)
    bounds = [0, *[int(b) for b in boundaries], L]
    if len(bounds) != world + 1 or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"boundaries must be {world - 1} increasing layer indices in 1..{L - 1} "
                         f"(where stages 1..{world - 1} start); got {list(boundaries)}")
    return bounds


# ---- the stage: this worker's layers ---------------------------------------------

class Elsewhere(nn.Module):
    """Stands in for a layer another stage holds. It keeps the full net's layer
    numbering, so a stage's state_dict keys (`layers.<i>.areas.weight`, ...) are
    the single-process net's and shards merge by a plain dict union; it has no
    parameters and no router, so `train.make_optimizer` skips it."""
    router = None


class Stage(nn.Module):
    """Layers [first, stop) of the net `arch` describes, built exactly as `models.Net`
    builds them (same constructor, same per-layer seeds); the rest are `Elsewhere`."""

    def __init__(self, arch: Architecture, method: str, first: int, stop: int, seed: int = 0,
                 area_init: str = "independent", feedback_dist: str = "gaussian",
                 feedback_scale: float = 1.0, kernel: str = "auto", init: str = "kaiming_normal"):
        super().__init__()
        self.arch, self.method, self.kernel = arch, method, kernel
        self.first, self.stop = first, stop
        self.layers = nn.ModuleList(
            Layer(spec, method, arch, i, seed, area_init == "shared", feedback_dist,
                  feedback_scale, init) if first <= i < stop else Elsewhere()
            for i, spec in enumerate(arch.layers))

    @property
    def own(self) -> list[Layer]:
        return [self.layers[i] for i in range(self.first, self.stop)]

    @property
    def d_in(self) -> int:
        return self.arch.layers[self.first].d_in

    def owns(self, key: str) -> bool:
        """Whether a full-net state_dict key belongs to one of this stage's layers."""
        m = re.match(r"layers\.(\d+)\.", key)
        return m is not None and self.first <= int(m.group(1)) < self.stop


def build_stage(cfg: Config, group: Group, boundaries: Sequence[int] | None = None
                ) -> tuple[Run, list[int]]:
    """`train.build` for one stage: validate, load data, build this stage's layers
    and optimizer. Returns the run (its `net` is the `Stage`) and the stage bounds."""
    validate(cfg)
    check_layout(cfg, "layer", group.world)
    device = resolve_device(cfg.run.device)
    splits = datasets.load(cfg.data.dataset, cfg.data.data_root, cfg.data.download)
    validate(cfg, n_classes=splits.n_classes)
    arch = Architecture.from_config(cfg, splits.input_dim, splits.n_classes)
    bounds = stage_bounds(arch, cfg.model.method, group.world, boundaries)
    first, stop = bounds[group.rank], bounds[group.rank + 1]
    m, s = cfg.model, cfg.sal
    dtype = getattr(torch, cfg.run.dtype)
    stage = Stage(arch, m.method, first, stop, cfg.run.seed, m.area_init, s.feedback_dist,
                  s.feedback_scale, cfg.run.kernel, m.init).to(device=device, dtype=dtype)
    x_train, x_val = splits.x_train.to(dtype), splits.x_val.to(dtype)
    if first > 0:  # later stages get their inputs from the previous stage, never the data
        x_train, x_val = x_train[:0], x_val[:0]
    rule = SALRule(s.lambda_local, s.output_local, s.area_grad_scale)
    run = Run(cfg, stage, make_optimizer(stage, cfg),
              lambda net, x, y: stage_grads(net, x, y, group, rule),
              x_train.to(device), splits.y_train.to(device), x_val.to(device),
              splits.y_val.to(device), counts=param_counts(arch, m.method), device=device)
    return run, bounds


# ---- one step, one epoch, evaluation -------------------------------------------

def _from_previous(shape, group: Group, dtype) -> torch.Tensor:
    h = torch.empty(shape, dtype=dtype, device=group.device)
    dist.recv(h, src=group.rank - 1)
    return h


def _is_last(group: Group) -> bool:
    return group.rank == group.world - 1


@torch.no_grad()
def stage_grads(stage: Stage, x_BI, y_B, group: Group, rule: SALRule = SALRule()):
    """This stage's share of `rules.sal_grads`: forward its block, get E_top, fill
    its layers' .grad. Returns (loss, logits) on the last stage, (None, None)
    elsewhere, and {layer index: area choice} for this stage's layers."""
    dtype = stage.own[0].areas.weight.dtype
    B, C = y_B.shape[0], stage.arch.n_classes
    h = x_BI if stage.first == 0 else _from_previous((B, stage.d_in), group, dtype)
    h, traces, areas = sal_forward(stage.own, h, stage.kernel)
    if _is_last(group):
        loss, E_top_BC, onehot_BC = sal_error(h, y_B, C)
    else:
        dist.send(h.contiguous(), dst=group.rank + 1)
        loss, h = None, None
        E_top_BC = torch.empty(B, C, dtype=dtype, device=group.device)
        onehot_BC = F.one_hot(y_B, C).to(dtype)  # as sal_error makes it
    if group.world > 1:
        dist.broadcast(E_top_BC, src=group.world - 1)
    for layer, trace in zip(stage.own, traces):
        sal_layer_grads(layer, trace, E_top_BC, onehot_BC, rule)
    return loss, h, dict(zip(range(stage.first, stage.stop), areas))


def train_step(run: Run, x_BI, y_B):
    """One batch on this stage: its layers' grads (`run.step`), then SGD on them."""
    loss, logits, areas = run.step(run.net, x_BI, y_B)
    run.optimizer.step()
    return loss, logits, areas


def train_epoch(run: Run, epoch: int, group: Group) -> dict[str, Any]:
    """The core's `train_epoch`: the same global batches on every stage; the loss
    and accuracy come from the last stage, each layer's usage from its stage."""
    stage, bs, n, dev = run.net, run.cfg.optim.batch_size, len(run.y_train), run.device
    order = epoch_order(run.cfg.run.seed, epoch, n, dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.float64, device=dev)
    # every routed layer's row, zero where another stage counts it, so one sum
    # over stages gives the totals
    usage = {i: torch.zeros(stage.arch.layers[i].n_areas, dtype=torch.float64, device=dev)
             for i in run.routed_layers}
    for step, start in enumerate(range(0, n, bs)):
        idx = order[start:start + bs]
        y = run.y_train[idx]
        x = run.x_train[idx] if stage.first == 0 else None
        loss, logits, areas = train_step(run, x, y)
        if loss is not None:
            loss_sum += loss.double() * len(idx)
            correct += (logits.argmax(1) == y).sum()
        for i, areas_B in areas.items():
            if i in usage:
                usage[i].index_add_(0, areas_B, torch.ones_like(areas_B, dtype=torch.float64))
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0:
            # every stage must take the same branch: decide on the last stage's sum
            if not torch.isfinite(all_sum(loss_sum.clone(), group)):
                return {"finite": False}
    return epoch_totals(loss_sum, correct, usage, n, group)


@torch.no_grad()
def stage_forward(stage: Stage, h):
    """`models.Net.forward` over this stage's layers, without keeping traces."""
    for layer in stage.own:
        areas_B = layer.router(h)[1] if layer.router is not None else None
        u_BO = routed_linear(h, layer.areas.weight, layer.areas.bias, areas_B, stage.kernel)
        h, _ = layer.finish(h, u_BO)
    return h


@torch.no_grad()
def evaluate(run: Run, x, y, group: Group) -> tuple[float, float]:
    """`train.evaluate` through the stages: the last one sums loss and correct
    predictions, then broadcasts them so every stage returns the same metrics."""
    stage, ebs = run.net, run.cfg.run.eval_batch_size
    dtype = stage.own[0].areas.weight.dtype
    sums = torch.zeros(2, dtype=torch.float64, device=run.device)  # loss sum, correct
    for i in range(0, len(y), ebs):
        yb = y[i:i + ebs]
        h = x[i:i + ebs] if stage.first == 0 else \
            _from_previous((len(yb), stage.d_in), group, dtype)
        h = stage_forward(stage, h)
        if _is_last(group):
            sums[0] += F.cross_entropy(h, yb, reduction="sum").double()
            sums[1] += (h.argmax(1) == yb).sum()
        else:
            dist.send(h.contiguous(), dst=group.rank + 1)
    if group.world > 1:
        dist.broadcast(sums, src=group.world - 1)
    n = max(len(y), 1)
    return sums[0].item() / n, sums[1].item() / n


# ---- checkpoints -----------------------------------------------------------------

def _shard_name(rank: int, world: int, epoch: int) -> str:
    return f"stage-{rank}-of-{world}.e{epoch:05d}.pt"


def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_stage_checkpoint(run: Run, folder: str, epoch: int, history: list,
                          bounds: Sequence[int], group: Group) -> str:
    """Every stage writes its shard; then rank 0 writes the manifest naming the
    epoch's shards. Shards carry their epoch in their name and the manifest is
    replaced atomically, so a crash at any point leaves the previous epoch's
    manifest and shards readable. Older shards go once the new manifest is in."""
    os.makedirs(folder, exist_ok=True)
    name = _shard_name(group.rank, group.world, epoch)
    _atomic_save({"epoch": epoch, "history": history, "config": run.cfg.to_flat(),
                  "bounds": list(bounds), "stage": group.rank, "net": run.net.state_dict(),
                  "optimizer": run.optimizer.state_dict()}, os.path.join(folder, name))
    _barrier(group)
    files = [_shard_name(r, group.world, epoch) for r in range(group.world)]
    if group.is_main:
        manifest = os.path.join(folder, MANIFEST_NAME)
        tmp = f"{manifest}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"epoch": epoch, "world": group.world, "bounds": list(bounds),
                       "files": files}, f)
        os.replace(tmp, manifest)
    _barrier(group)
    # every stage removes its own stale shards (its folder may be private, as under
    # Ray); rank 0 also any other stale shard in a shared folder (an earlier world)
    pattern = "stage-*-of-*.e*.pt" if group.is_main else f"stage-{group.rank}-of-*.e*.pt"
    for path in glob.glob(os.path.join(folder, pattern)):
        if os.path.basename(path) not in files:
            try:
                os.remove(path)
            except FileNotFoundError:  # another stage removed it first
                pass
    return folder


def _barrier(group: Group) -> None:
    if group.world > 1:
        dist.barrier()


def _check_config(saved: dict, cfg: Config, folder: str) -> None:
    """As `train.load_checkpoint`: refuse a checkpoint of another configuration."""
    differ = {k: (saved.get(k), v) for k, v in cfg.to_flat().items()
              if k not in ("epochs", "device") and saved.get(k) != v}
    if differ:
        raise ConfigError(next(iter(differ)), f"checkpoint in {folder} was written by a "
                          f"different configuration: {differ}")


def _check_optimizer(state: dict, folder: str) -> None:
    # SGD without momentum keeps no per-parameter state; anything else could not
    # be resharded by layer without knowing its layout, so refuse rather than drop it
    if state.get("state"):
        raise ValueError(f"checkpoint in {folder} holds optimizer state, which the layer "
                         "layout cannot reshard (only stateless SGD is supported)")


def _load(path: str):
    # mmap: a stage reads only its own layers' tensors out of a large file
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _manifest(folder: str) -> dict | None:
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        manifest = json.load(f)
    missing = [n for n in manifest["files"] if not os.path.exists(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"layer-parallel checkpoint in {folder} names shards that are "
                                f"not there: {missing} (copy the folder whole)")
    return manifest


def read_checkpoint(folder: str, keep=lambda key: True) -> dict | None:
    """The checkpoint in `folder` as {epoch, history, config, net, optimizers}:
    from the shards of a layer-parallel checkpoint (only the shards holding a
    key that `keep` accepts are read), or from a core `checkpoint.pt`, whichever
    is the later epoch (a single-process run may have continued in the folder).
    `net` holds the kept keys; `optimizers` each source's optimizer state. None
    if the folder holds neither."""
    manifest = _manifest(folder)
    core = os.path.join(folder, CHECKPOINT_NAME)
    core_state = _load(core) if os.path.exists(core) else None
    if core_state is not None and (manifest is None or core_state["epoch"] > manifest["epoch"]):
        return {"epoch": core_state["epoch"], "history": core_state["history"],
                "config": core_state["config"], "optimizers": [core_state["optimizer"]],
                "net": {k: v for k, v in core_state["net"].items() if keep(k)}}
    if manifest is None:
        return None
    out = {"epoch": manifest["epoch"], "net": {}, "optimizers": []}
    for r, name in enumerate(manifest["files"]):
        lo, hi = manifest["bounds"][r], manifest["bounds"][r + 1]
        if r and not any(keep(f"layers.{i}.") for i in range(lo, hi)):
            continue  # shard 0 is always read: it carries the history and config
        shard = _load(os.path.join(folder, name))
        if shard["epoch"] != manifest["epoch"]:
            raise ValueError(f"{name} in {folder} is from epoch {shard['epoch']}, the manifest "
                             f"from {manifest['epoch']}")
        out.setdefault("history", shard["history"])
        out.setdefault("config", shard["config"])
        out["optimizers"].append(shard["optimizer"])
        out["net"].update({k: v for k, v in shard["net"].items() if keep(k)})
    return out


def load_stage_checkpoint(run: Run, folder: str) -> tuple[int, list]:
    """Restore this stage's layers from `folder` (layer-parallel shards written by
    any number of stages, or a core checkpoint); returns (epochs done, history)."""
    stage = run.net
    state = read_checkpoint(folder, lambda key: stage.owns(key))
    if state is None:
        return 0, []
    _check_config(state["config"], run.cfg, folder)
    for opt in state["optimizers"]:
        _check_optimizer(opt, folder)
    stage.load_state_dict(state["net"])  # strict: every key of this stage must be there
    return state["epoch"], state["history"]


def _resume(run: Run, folder: str | None, group: Group) -> tuple[int, list]:
    """Every stage reads its own layers. A failure on any stage is raised on all
    of them (nobody is left waiting in a collective), and all must agree on the
    epoch they resume from."""
    state, error = (0, []), None
    if folder:
        try:
            state = load_stage_checkpoint(run, folder)
        except Exception as e:  # noqa: BLE001 - re-raised below, on every stage
            error = e
    mine = (state[0], None if error is None else f"{type(error).__name__}: {error}")
    outcomes = [mine]
    if group.world > 1:
        outcomes = [None] * group.world
        dist.all_gather_object(outcomes, mine)
    if error is not None:
        raise error
    failed = [(r, msg) for r, (_, msg) in enumerate(outcomes) if msg]
    if failed:
        raise RuntimeError(f"stage {failed[0][0]} could not resume from {folder}: {failed[0][1]}")
    epochs = {e for e, _ in outcomes}
    if len(epochs) > 1:
        raise RuntimeError(f"stages found different epochs in {folder}: {sorted(epochs)}")
    return state


def gather_checkpoint(folder: str, out_folder: str | None = None) -> str:
    """Merge a layer-parallel checkpoint's shards into the core single-file format
    (`train.load_checkpoint` and `train.fit(checkpoint_dir=...)` read it), written
    to `out_folder` (default: `folder`). One process, no process group; it holds
    the whole net in memory. Returns the file's path."""
    manifest = _manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"no layer-parallel checkpoint ({MANIFEST_NAME}) in {folder}")
    shards = [_load(os.path.join(folder, name)) for name in manifest["files"]]
    net, optimizers = {}, []
    for name, shard in zip(manifest["files"], shards):
        if shard["epoch"] != manifest["epoch"]:
            raise ValueError(f"{name} in {folder} is from epoch {shard['epoch']}, the manifest "
                             f"from {manifest['epoch']}")
        _check_optimizer(shard["optimizer"], folder)
        net.update(shard["net"])
        optimizers.append(shard["optimizer"])
    state = {"epoch": manifest["epoch"], "history": shards[0]["history"],
             "config": shards[0]["config"], "net": net,
             "optimizer": _merged_optimizer_state(optimizers)}
    out_folder = out_folder or folder
    os.makedirs(out_folder, exist_ok=True)
    path = os.path.join(out_folder, CHECKPOINT_NAME)
    _atomic_save(state, path)
    return path


def _merged_optimizer_state(stage_states: list[dict]) -> dict:
    """The state_dict `train.make_optimizer` gives the whole net: group 0 every
    area weight and bias, group 1 (if any layer is routed) every selector. A
    stage's groups are the same two restricted to its layers (a stage with no
    routed layer has only group 0), so the group sizes add up; SGD keeps no
    per-parameter state, so only the sizes and hyperparameters matter."""
    groups: list[dict] = []
    for st in stage_states:
        for g, group in enumerate(st["param_groups"]):
            if len(groups) <= g:
                groups.append({**{k: v for k, v in group.items() if k != "params"}, "n": 0})
            groups[g]["n"] += len(group["params"])
    start, out = 0, []
    for g in groups:
        n = g.pop("n")
        out.append({**g, "params": list(range(start, start + n))})
        start += n
    return {"state": {}, "param_groups": out}


def gather_state(stage: Stage, group: Group) -> dict | None:
    """The whole net's state_dict on rank 0 (None elsewhere): for tests and small
    nets; a large net goes through the shards and `gather_checkpoint`."""
    mine = {k: v.detach().cpu() for k, v in stage.state_dict().items()}
    if group.world == 1:
        return mine
    parts = [None] * group.world if group.is_main else None
    dist.gather_object(mine, parts, dst=0)
    if not group.is_main:
        return None
    full = {}
    for part in parts:
        full.update(part)
    return full


# ---- the whole run ---------------------------------------------------------------

def fit(cfg: Config, group: Group, checkpoint_dir: str | None = None,
        callbacks: Sequence[Callback] = (), report: Report | None = None,
        resume_dir: str | None = None, boundaries: Sequence[int] | None = None,
        gather_net: bool = False) -> RunResult:
    """`sal_ray.train.fit` for SAL, layer parallel over the initialised process
    group: stage r = rank r holds layers [bounds[r], bounds[r+1]).

    Call it on every worker. `boundaries`: the W−1 layer indices where stages
    1…W−1 start (default: balanced by parameter count). `checkpoint_dir`: every
    stage writes its shard there after every epoch (and resumes from it, unless
    `resume_dir` names another folder, which may also hold a core checkpoint).
    `callbacks` run on rank 0; `report(metrics, folder)` on every worker, with
    its own checkpoint folder. The result's `net` is this worker's `Stage`, or
    with `gather_net` the whole `models.Net` on rank 0.
    """
    run, bounds = build_stage(cfg.replace(device=str(group.device)), group, boundaries)
    done, history = _resume(run, resume_dir or checkpoint_dir, group)

    def save(epoch: int, history: list) -> str | None:
        if not checkpoint_dir:
            return None
        return save_stage_checkpoint(run, checkpoint_dir, epoch, history, bounds, group)

    params = {**run.params(), "num_workers": group.world, "layout": "layer_parallel",
              "stage_bounds": ",".join(map(str, bounds))}
    result = run_epochs(run, group, done, history, params,
                        lambda r, e: train_epoch(r, e, group),
                        lambda r, x, y: evaluate(r, x, y, group), save, callbacks, report)
    if gather_net:
        state = gather_state(run.net, group)
        if group.is_main:
            arch = run.net.arch
            net = build_net(run.cfg, arch.layers[0].d_in, arch.n_classes)
            result.net = net.to(device=run.device, dtype=getattr(torch, cfg.run.dtype))
            result.net.load_state_dict(state)
    return result
