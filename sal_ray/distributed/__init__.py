"""Multi-worker layouts, applied from outside the model (the core stays
single-device): each is a `train.Layout` that the core's one epoch loop and fit
loop (`train.fit`) run, so no layout copies the loop.

- `group`: a worker's place in the process group, and the collectives.
- `data_parallel`: `DataParallel`, pure torch.distributed (no Ray): sharded
  batches, all-reduced gradients, rank-0 checkpoints in the core format. Every
  method.
- `layer_parallel`: `LayerParallel`, SAL only, pure torch.distributed: each
  worker holds a contiguous block of layers (`partition` says which);
  activations go forward stage to stage, the batch × C output error comes back
  by broadcast, no weight is all-reduced. Per-stage checkpoint shards
  (`layer_checkpoint`); `gather_checkpoint` makes a core file of them.
- `layouts`: `check_layout`, which layout serves which method (no Ray, no layout).
- `launch`: `fit` (what every worker runs) and `spawn`/`spawn_fit` (N local
  processes: tests, benchmarks, one multi-GPU box without Ray; a failing worker
  is raised as `WorkerError`).
- `ray_train`: `fit_distributed(..., layout="data"|"layer")`, the same `fit` on
  Ray Train's `TorchTrainer`; what `sal_ray.sweep` calls for a trial that asks
  for more than one worker.

Ray loads only when `fit_distributed` is first used. docs/scaling.md says which
layout serves which method, and what has been measured where.
"""

from .group import Group
from .launch import WorkerError, fit, spawn, spawn_fit
from .layer_checkpoint import gather_checkpoint
from .layouts import check_layout

__all__ = ["Group", "fit", "spawn", "spawn_fit", "WorkerError", "gather_checkpoint",
           "check_layout", "fit_distributed", "DistributedRunResult"]


def __getattr__(name):
    if name in ("fit_distributed", "DistributedRunResult"):
        from . import ray_train  # Ray Train loads here: the layouts run without Ray
        return getattr(ray_train, name)
    raise AttributeError(name)
