"""Memory budgeted before work: what one worker of a configuration needs, from the
same per-layer counts `sal-ray params` prints (`models.param_counts`), checked
against the memory it is given before its net is allocated. Core only (torch).

A worker holds the layers it builds (all of them, or a layer layout's stage) and:

    state        every element of those layers: areas and biases, selectors,
                 SAL's prototypes and feedback matrices (dtype)
    grads        one gradient per trained element (SAL fills .grad in closed
                 form, BP and MoE by autograd); plain SGD keeps no other state
    init         the largest layer's float64 draws while it is initialised
                 (randn, scaled copy, per-area copy: 3 × 8 bytes per element)
    activations  the step's traces, ACT_COPIES batch × width tensors per layer,
                 and one evaluation batch's (EVAL_COPIES per layer, not kept)
    data         the inputs of both splits (the worker that holds layer 0)
    process      the interpreter and torch themselves (PROCESS_BYTES)

Checkpoints add nothing resident that is not reclaimable: `torch.save` writes the
tensors' own storage, and a resume maps the file (`mmap=True`) and copies it into
the parameters before any gradient exists. benchmarks/full_size.py compares this
estimate with each worker's measured peak (docs/scaling.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .config import Config, ConfigError
from .models import Architecture, param_counts

ACT_COPIES = 4          # u, φ(u), h and the layer's error, per layer, kept for the update
EVAL_COPIES = 3         # u, φ(u), h of the layer being evaluated
INIT_BYTES_PER_ELEM = 24  # float64 draw, its scaled copy and the per-area copy
# a worker process itself: a Ray Train worker with torch imported peaked at 0.95 GB
# (VmHWM, benchmarks/full_size.py at width 128); a plain torch process at ~0.35 GB
PROCESS_BYTES = 1 << 30

GB = 1e9


@dataclass(frozen=True)
class Estimate:
    """Bytes one worker needs, by part."""
    state: int
    grads: int
    init: int
    activations: int
    data: int
    process: int = PROCESS_BYTES

    @property
    def total(self) -> int:
        # the init draws are gone before the first step allocates its gradients
        return (self.state + max(self.init, self.grads + self.activations) + self.data
                + self.process)

    def parts(self) -> str:
        return (f"state {self.state / GB:.2f} GB, grads {self.grads / GB:.2f} GB, "
                f"activations {self.activations / GB:.2f} GB, data {self.data / GB:.2f} GB, "
                f"init {self.init / GB:.2f} GB")


def held_layers(layout, cfg: Config, arch: Architecture) -> range:
    """The layers a worker of `layout` builds: a layout that holds only some (the
    layer layout's stage) says so with `held_layers(cfg, arch)`; by default all."""
    fn = getattr(layout, "held_layers", None)
    return fn(cfg, arch) if fn is not None else range(len(arch.layers))


def estimate(cfg: Config, arch: Architecture, layers: range | None = None,
             n_samples: int = 0) -> Estimate:
    """What a worker holding `layers` (default: all) of `arch` needs; `n_samples`
    the rows of both splits it keeps as inputs (only the worker with layer 0)."""
    layers = range(len(arch.layers)) if layers is None else layers
    counts = param_counts(arch, cfg.model.method).per_layer
    s = torch.finfo(getattr(torch, cfg.run.dtype)).bits // 8
    held = [counts[i] for i in layers]
    specs = [arch.layers[i] for i in layers]
    state = sum(c["total"] + c["router"] + c["fixed"] for c in held) * s
    grads = sum(c["total"] + c["router"] for c in held) * s
    draws = max((1 if cfg.model.area_init == "shared" else sp.n_areas) * sp.d_in * sp.d_out
                for sp in specs)
    width = max(max(sp.d_in, sp.d_out) for sp in specs)
    acts = (cfg.optim.batch_size * ACT_COPIES * sum(sp.d_out for sp in specs)
            + min(cfg.run.eval_batch_size, max(n_samples, 1)) * EVAL_COPIES * width) * s
    data = n_samples * arch.layers[0].d_in * s if 0 in layers else 0
    return Estimate(state, grads, draws * INIT_BYTES_PER_ELEM, acts, data)


def available(device: torch.device | None = None) -> int:
    """Bytes free now: a GPU's free memory, else the host's available RAM
    (MemAvailable: free plus reclaimable page cache)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def refuse_if_over(need: int, limit: int, what: str, parts: str, given: bool) -> None:
    if need > limit:
        source = "memory_limit" if given else "available memory (memory_limit unset)"
        raise ConfigError("memory_limit", f"{what} needs about {need / GB:.2f} GB ({parts}) "
                          f"but {source} is {limit / GB:.2f} GB; lower width, depth, n_areas "
                          "or batch_size, use more layer-parallel workers, or raise memory_limit")


def check(cfg: Config, arch: Architecture, layout=None, n_samples: int = 0,
          device: torch.device | None = None) -> Estimate:
    """Refuse (ConfigError on option memory_limit, one line with the estimate and
    the limit) a worker that cannot fit; called by `trainer.build` before the net
    is allocated. Returns the estimate."""
    est = estimate(cfg, arch, held_layers(layout, cfg, arch), n_samples)
    limit = cfg.run.memory_limit
    refuse_if_over(est.total, limit if limit is not None else available(device),
                   f"this worker ({cfg.model.method}, width {cfg.model.width}, depth "
                   f"{cfg.model.depth})", est.parts(), limit is not None)
    return est
