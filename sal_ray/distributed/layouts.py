"""Which multi-worker layout serves which run, checked before any worker starts
(and again inside each worker): imports neither Ray nor a layout module, so the
sweep's checks made before Ray starts can use it."""

from __future__ import annotations

from ..config import Config, ConfigError

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
