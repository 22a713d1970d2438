"""Multi-worker layouts, applied from outside the model (the core stays single-device).

- `data_parallel`: pure torch.distributed (no Ray): sharded batches, all-reduced
  gradients, rank-0 checkpoints in the core format. Used by the tests, the
  benchmarks and any machine without Ray.
- `ray_train`: `fit_distributed`, the same loop on Ray Train's `TorchTrainer`;
  what `sal_ray.sweep` calls for a trial that asks for more than one worker.

Ray loads only when `fit_distributed` is first used. docs/scaling.md says which
layout serves which method, and what has been measured where.
"""

from .data_parallel import Group, fit, spawn, spawn_fit

__all__ = ["Group", "fit", "spawn", "spawn_fit", "fit_distributed", "DistributedRunResult"]


def __getattr__(name):  # deferred: Ray loads only here
    if name in ("fit_distributed", "DistributedRunResult"):
        from . import ray_train
        return getattr(ray_train, name)
    raise AttributeError(name)
