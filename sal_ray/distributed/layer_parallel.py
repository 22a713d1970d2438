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

`LayerParallel` is a `train.Layout`: `train.build` builds this worker's `Stage`
and `train.fit` runs the core's one epoch loop over it, on the same global
batches (`epoch_order`). The stage builds its layers with the same `Layer`
constructor and seeds (`seeded(seed, layer index, ...)`) and runs the same
`rules.sal_forward` / `sal_error` / `sal_layer_grads`, so weights match the core
trainer to round-off. There is no microbatching: within a step the stages'
forward passes run one after the other; only the updates run concurrently (see
docs/scaling.md). Cut points: `partition`; checkpoint shards: `layer_checkpoint`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..layers import routed_linear
from ..models import Architecture, Layer, build_net, net_options
from ..rules import SALRule, sal_error, sal_forward, sal_layer_grads
from ..trainer import Callback, Layout, Run, RunResult
from ..trainer import fit as fit_core
from .group import Group, all_sum, on_every_worker
from .layer_checkpoint import load_stage_checkpoint, save_stage_checkpoint
from .layouts import check_layout
from .partition import stage_bounds


class Elsewhere(nn.Module):
    """Stands in for a layer another stage holds. It keeps the full net's layer
    numbering, so a stage's state_dict keys (`layers.<i>.areas.weight`, ...) are
    the single-process net's and shards merge by a plain dict union; it has no
    parameters and no router, so `rules.make_optimizer` skips it."""
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


def _from_previous(shape, group: Group, dtype) -> torch.Tensor:
    h = torch.empty(shape, dtype=dtype, device=group.device)
    dist.recv(h, src=group.rank - 1)
    return h


@torch.no_grad()
def stage_grads(stage: Stage, x_BI, y_B, group: Group, rule: SALRule = SALRule()):
    """This stage's share of `rules.sal_grads`: forward its block, get E_top, fill
    its layers' .grad. Returns (loss, logits) on the last stage, (None, None)
    elsewhere, and each layer's area choice (None for other stages' layers)."""
    dtype = stage.own[0].areas.weight.dtype
    B, C = y_B.shape[0], stage.arch.n_classes
    h = x_BI if stage.first == 0 else _from_previous((B, stage.d_in), group, dtype)
    h, traces, areas = sal_forward(stage.own, h, stage.kernel)
    if group.is_last:
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
    all_areas = [None] * len(stage.layers)
    all_areas[stage.first:stage.stop] = areas
    return loss, h, all_areas


@torch.no_grad()
def stage_forward(stage: Stage, h):
    """`models.Net.forward` over this stage's layers, without keeping traces."""
    for layer in stage.own:
        areas_B = layer.router(h)[1] if layer.router is not None else None
        u_BO = routed_linear(h, layer.areas.weight, layer.areas.bias, areas_B, stage.kernel)
        h, _ = layer.activate_and_skip(h, u_BO)
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
        if group.is_last:
            sums[0] += F.cross_entropy(h, yb, reduction="sum").double()
            sums[1] += (h.argmax(1) == yb).sum()
        else:
            dist.send(h.contiguous(), dst=group.rank + 1)
    if group.world > 1:
        dist.broadcast(sums, src=group.world - 1)
    n = max(len(y), 1)
    return sums[0].item() / n, sums[1].item() / n


class LayerParallel(Layout):
    """The layer layout over `group`, SAL only: stage r = rank r holds layers
    [bounds[r], bounds[r+1]), balanced by parameter count or starting stages
    1…W−1 at `boundaries`. `bounds` is set when the stage is built."""

    def __init__(self, group: Group, boundaries: Sequence[int] | None = None):
        self.group, self.boundaries = group, boundaries
        self.bounds: list[int] | None = None
        self.first = 0  # this stage's first layer: only stage 0 reads the inputs

    @property
    def is_main(self) -> bool:
        return self.group.is_main

    def place(self, cfg: Config) -> Config:
        return cfg.replace(device=str(self.group.device))

    def check(self, cfg: Config) -> None:
        check_layout(cfg, "layer", self.group.world)

    def held_layers(self, cfg: Config, arch: Architecture) -> range:
        """This stage's layers (`budget` estimates its memory from them)."""
        bounds = stage_bounds(arch, cfg.model.method, self.group.world, self.boundaries)
        return range(bounds[self.group.rank], bounds[self.group.rank + 1])

    def make_net(self, cfg: Config, arch: Architecture) -> Stage:
        self.bounds = stage_bounds(arch, cfg.model.method, self.group.world, self.boundaries)
        self.first, stop = self.bounds[self.group.rank], self.bounds[self.group.rank + 1]
        return Stage(arch, cfg.model.method, self.first, stop, **net_options(cfg))

    def make_rule(self, cfg: Config) -> Callable:
        rule, group = SALRule(cfg.sal.lambda_local, cfg.sal.output_local,
                              cfg.sal.area_grad_scale), self.group
        return lambda stage, x, y: stage_grads(stage, x, y, group, rule)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        # later stages get their inputs from the previous stage, never the data
        return x if self.first == 0 else x[:0]

    def take(self, run: Run, idx_B: torch.Tensor):
        x = run.x_train.index_select(0, idx_B) if self.first == 0 else None
        return x, run.y_train.index_select(0, idx_B)  # every stage has the labels

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_sum(t, self.group)

    def evaluate(self, run: Run, x, y) -> tuple[float, float]:
        return evaluate(run, x, y, self.group)

    def resume(self, run: Run, folder: str | None) -> tuple[int, list]:
        """Every stage reads its own layers. A failure on any stage is raised on
        all of them, and all must agree on the epoch they resume from."""
        states = on_every_worker(lambda: load_stage_checkpoint(run, folder),
                                 f"resume from {folder}", self.group, run_here=bool(folder),
                                 default=(0, []))
        epochs = {done for done, _ in states}
        if len(epochs) > 1:
            raise RuntimeError(f"stages found different epochs in {folder}: {sorted(epochs)}")
        return states[self.group.rank]

    def save(self, run: Run, folder: str, epoch: int, history: list) -> str:
        return save_stage_checkpoint(run, folder, epoch, history, self.bounds, self.group)

    def params(self, run: Run) -> dict[str, Any]:
        return {"num_workers": self.group.world, "layout": "layer_parallel",
                "stage_bounds": ",".join(map(str, self.bounds))}

    def epoch_fields(self) -> dict[str, float]:
        return {"num_workers": self.group.world}


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


def fit(cfg: Config, group: Group, checkpoint_dir: str | None = None,
        callbacks: Sequence[Callback] = (),
        on_epoch_end: Callable[[dict, str | None], None] | None = None,
        resume_dir: str | None = None, boundaries: Sequence[int] | None = None,
        gather_net: bool = False) -> RunResult:
    """`train.fit` in the layer layout over the initialised process group; call it
    on every worker. `boundaries`: the W−1 layer indices where stages 1…W−1 start
    (default: balanced by parameter count). `checkpoint_dir`: every stage writes
    its shard there after every epoch (and resumes from it, unless `resume_dir`
    names another folder, which may also hold a core checkpoint). The result's
    `net` is this worker's `Stage`, or with `gather_net` the whole `models.Net`
    on rank 0."""
    layout = LayerParallel(group, boundaries)
    result = fit_core(cfg, callbacks, checkpoint_dir, layout=layout, resume_dir=resume_dir,
                      on_epoch_end=on_epoch_end)
    if gather_net:
        state = gather_state(result.net, group)
        if group.is_main:
            stage = result.net
            net = build_net(cfg, stage.arch.layers[0].d_in, stage.arch.n_classes)
            dtype = stage.own[0].areas.weight.dtype
            result.net = net.to(device=stage.own[0].areas.weight.device, dtype=dtype)
            result.net.load_state_dict(state)
    return result
