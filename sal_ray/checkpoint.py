"""Checkpoint files for every layout: atomic writes, reads that never run code,
and the check that a checkpoint belongs to the configuration resuming it.

The core's single-file format (`checkpoint.pt`, one process or the data layout's
rank 0) is defined here; the layer layout's per-stage shards and manifest
(`sal_ray.distributed.layer_checkpoint`) are written and read through the same
functions. What a checkpoint holds is plain: tensors, dicts, lists, numbers,
strings and None (the RNG states are tensors, the history a list of dicts of
floats), so `torch.load(weights_only=True)` reads it and a file that holds
anything else is refused instead of unpickled.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from .config import DEFAULTS, Config, ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
# options that may differ between the run that wrote a checkpoint and the one
# resuming it: more epochs continue a run, another device reads the same state,
# and a machine with other memory may hold it
RESUMABLE_CHANGES = ("epochs", "device", "memory_limit")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; `path` names it."""

    def __init__(self, path: str, why: str):
        super().__init__(f"cannot read checkpoint {path}: {why}")
        self.path = path


# ---- files -------------------------------------------------------------------------

def atomic_save(obj: Any, path: str) -> str:
    """torch.save to a temporary name, then rename: a crash mid-write leaves the
    previous file at `path` readable."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def atomic_write_json(obj: Any, path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
    return path


def read_file(path: str, map_location: Any = "cpu", mmap: bool = False,
              required: tuple[str, ...] = ()) -> dict:
    """A checkpoint file's dict, read with `weights_only=True` (nothing in it is
    executed). Any failure, or a missing `required` key, is one CheckpointError
    naming the file. `mmap`: tensors stay on disk until used (a layer-layout stage
    reads only its own layers out of a large file)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - every way a file can be unreadable
        raise CheckpointError(path, _reason(e)) from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"it holds a {type(state).__name__}, not a checkpoint's dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(path, f"not a sal_ray checkpoint: it lacks {', '.join(missing)}")
    return state


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"{type(e).__name__}: {e}") from None


def _reason(e: Exception) -> str:
    """torch.load's error in one line, without its advice to load unsafely."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        if "Unsupported global" in detail:
            return ("it holds objects other than tensors and plain values, so it was not "
                    f"loaded (loading it could run code): {detail.split(' was not')[0]}")
        return f"not a file torch.save wrote ({detail})"
    if "mmap can only be used" in text:
        return "not a zip-format file torch.save wrote"
    if isinstance(e, EOFError) or not text:
        return "the file is empty or cut short"
    return f"{type(e).__name__}: {text.splitlines()[0].split('. ')[0]}"


# ---- the configuration check -------------------------------------------------------

def check_config(saved: dict, cfg: Config, where: str) -> None:
    """Refuse a checkpoint written by another configuration (ConfigError naming
    the first option that differs). An option newer than the checkpoint counts as
    its default there, so a checkpoint of an older version resumes."""
    saved = {**DEFAULTS, **saved}
    differ = {k: (saved.get(k), v) for k, v in cfg.to_flat().items()
              if k not in RESUMABLE_CHANGES and saved.get(k) != v}
    if differ:
        raise ConfigError(next(iter(differ)), f"checkpoint in {where} was written by a "
                          f"different configuration: {differ}")


# ---- the core single-file format ---------------------------------------------------

def rng_state(device: torch.device) -> dict:
    """Nothing in a step draws from the global RNGs today, but a rule that does
    must resume exactly; the data order needs none (it depends on (seed, epoch))."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}


def restore_rng(rng: dict | None, device: torch.device) -> None:
    rng = rng or {}
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def save(folder: str, *, epoch: int, history: list, config: dict, net: dict,
         optimizer: dict, rng: dict | None = None) -> str:
    """Write the core checkpoint (`folder/checkpoint.pt`) atomically; its path."""
    os.makedirs(folder, exist_ok=True)
    return atomic_save({"epoch": epoch, "history": history, "config": config, "net": net,
                        "optimizer": optimizer, "rng": rng},
                       os.path.join(folder, CHECKPOINT_NAME))


def read(folder: str, map_location: Any = "cpu", mmap: bool = False) -> dict | None:
    """The core checkpoint in `folder` as saved (`save`'s keys), or None if there is
    none. A file that is there but unreadable raises CheckpointError."""
    path = os.path.join(folder, CHECKPOINT_NAME)
    if not os.path.exists(path):
        return None
    return read_file(path, map_location, mmap,
                     required=("epoch", "history", "config", "net", "optimizer"))
