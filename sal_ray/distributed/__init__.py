"""Multi-worker layouts, applied from outside the model (the core stays single-device).

- `data_parallel`: pure torch.distributed (no Ray): sharded batches, all-reduced
  gradients, rank-0 checkpoints in the core format. Every method. Used by the
  tests, the benchmarks and any machine without Ray.
- `layer_parallel`: SAL only, pure torch.distributed: each worker holds a
  contiguous block of layers; activations go forward stage to stage, the
  batch × C output error comes back by broadcast, no weight is all-reduced.
  Per-stage checkpoint shards; `gather_checkpoint` makes a core file of them.
- `ray_train`: `fit_distributed(..., layout="data"|"layer")`, the same loops on
  Ray Train's `TorchTrainer`; what `sal_ray.sweep` calls for a trial that asks
  for more than one worker.

Ray loads only when `fit_distributed` is first used. docs/scaling.md says which
layout serves which method, and what has been measured where.
"""

from .data_parallel import Group, fit, spawn, spawn_fit
from .layer_parallel import check_layout, gather_checkpoint

__all__ = ["Group", "check_layout", "fit", "spawn", "spawn_fit", "gather_checkpoint", "fit_distributed",
           "DistributedRunResult"]


def __getattr__(name):  # deferred: Ray loads only here
    if name in ("fit_distributed", "DistributedRunResult"):
        from . import ray_train
        return getattr(ray_train, name)
    raise AttributeError(name)
