"""Which multi-worker layout serves which run, and whether its workers fit the
memory they are given (`sal_ray.budget`), checked before any worker starts (and
again inside each worker): imports neither Ray nor a layout module, so the
sweep's checks made before Ray starts can use it."""

from __future__ import annotations

from typing import Sequence

from ..budget import GB, available, estimate, refuse_if_over
from ..config import Config, ConfigError
from ..data import DATASETS_INFO
from ..models import Architecture
from .partition import stage_bounds

LAYOUTS = ("data", "layer")


def check_layout(cfg: Config, layout: str, world: int | None = None, pack: int = 1) -> None:
    """Refuse a layout the method cannot use, before any worker starts. `pack`:
    how many runs would train fused as one stacked model (`sal_ray.pack`)."""
    if layout not in LAYOUTS:
        raise ConfigError("layout", f"must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if pack > 1 and cfg.run.fuse:
        # a layout splits one model's batches or layers over workers; a pack's
        # stacked tensors and per-member verdicts are not split by either
        raise ConfigError("fuse", f"layout={layout!r} cannot run a pack ({pack} runs fused "
                          "as one stacked model): set fuse=false to run them one by one, "
                          "each over the workers, or run the pack in one process")
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


def worker_estimates(cfg: Config, layout: str, world: int,
                     boundaries: Sequence[int] | None = None) -> list:
    """`budget.Estimate` of every worker of a run in `layout` over `world` workers,
    from the dataset's recorded sizes and the parameter counts alone (nothing is
    loaded or allocated): the data layout replicates the net, the layer layout
    gives worker r its stage (`partition.stage_bounds`)."""
    info = DATASETS_INFO[cfg.data.dataset]
    n = info.n_samples if cfg.data.max_samples is None else min(info.n_samples,
                                                                2 * cfg.data.max_samples)
    arch = Architecture.from_config(cfg, info.input_dim, info.n_classes)
    if layout != "layer":
        return [estimate(cfg, arch, None, n)] * world
    bounds = stage_bounds(arch, cfg.model.method, world, boundaries)
    return [estimate(cfg, arch, range(bounds[r], bounds[r + 1]), n) for r in range(world)]


def check_memory(cfg: Config, layout: str, world: int, boundaries: Sequence[int] | None = None,
                 shared_host: bool = True) -> list:
    """Refuse, before any worker starts, a run whose workers cannot fit: with
    `shared_host` (CPU workers on this machine) their sum against memory_limit
    (default: this machine's available memory), else each worker against it
    (a GPU each: checked again inside the worker, against its device, by
    `trainer.build`). One ConfigError line, estimate and limit."""
    ests = worker_estimates(cfg, layout, world, boundaries)
    limit = cfg.run.memory_limit
    if limit is None and not shared_host:
        return ests  # the driver cannot see the workers' devices
    limit = limit if limit is not None else available()
    if shared_host:
        need = sum(e.total for e in ests)
        per = ", ".join(f"{e.total / GB:.2f}" for e in ests)
        refuse_if_over(need, limit, f"{world} {layout}-layout workers on this machine",
                       f"per worker {per} GB; worker 0: {ests[0].parts()}",
                       cfg.run.memory_limit is not None)
    else:
        worst = max(ests, key=lambda e: e.total)
        refuse_if_over(worst.total, limit, f"the largest {layout}-layout worker", worst.parts(), True)
    return ests
