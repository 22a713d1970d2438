"""The layer layout's checkpoint: one shard per stage and a manifest naming an
epoch's shards, written and read through `sal_ray.checkpoint` (atomic writes,
`weights_only` reads, the configuration check with its defaults merge).

A shard holds its stage's layers under the full net's `state_dict` names
(`layers.<i>.…`), so shards merge by a plain dict union: any number of stages,
with any cut points, resumes from a layer-layout checkpoint or from a core
`checkpoint.pt`, and `gather_checkpoint` turns the shards into a core checkpoint
that the single-process trainer reads.
"""

from __future__ import annotations

import glob
import os
from typing import Callable, Sequence

from .. import checkpoint
from ..checkpoint import CheckpointError
from ..trainer import Run
from .group import Group, barrier

MANIFEST_NAME = "stages.json"
SHARD_KEYS = ("epoch", "history", "config", "bounds", "stage", "net", "optimizer")
MANIFEST_KEYS = ("epoch", "world", "bounds", "files")


def _shard_name(rank: int, world: int, epoch: int) -> str:
    return f"stage-{rank}-of-{world}.e{epoch:05d}.pt"


def save_stage_checkpoint(run: Run, folder: str, epoch: int, history: list,
                          bounds: Sequence[int], group: Group) -> str:
    """Every stage writes its shard; then rank 0 writes the manifest naming the
    epoch's shards. Shards carry their epoch in their name and the manifest is
    replaced atomically, so a crash at any point leaves the previous epoch's
    manifest and shards readable. Older shards go once the new manifest is in."""
    os.makedirs(folder, exist_ok=True)
    name = _shard_name(group.rank, group.world, epoch)
    checkpoint.atomic_save({"epoch": epoch, "history": history, "config": run.cfg.to_flat(),
                            "bounds": list(bounds), "stage": group.rank,
                            "net": run.net.state_dict(),
                            "optimizer": run.optimizer.state_dict()}, os.path.join(folder, name))
    barrier(group)
    files = [_shard_name(r, group.world, epoch) for r in range(group.world)]
    if group.is_main:
        checkpoint.atomic_write_json({"epoch": epoch, "world": group.world,
                                      "bounds": list(bounds), "files": files},
                                     os.path.join(folder, MANIFEST_NAME))
    barrier(group)
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


def _check_optimizer(state: dict, folder: str) -> None:
    # SGD without momentum keeps no per-parameter state; anything else could not
    # be resharded by layer without knowing its layout, so refuse rather than drop it
    if state.get("state"):
        raise ValueError(f"checkpoint in {folder} holds optimizer state, which the layer "
                         "layout cannot reshard (only stateless SGD is supported)")


def _read_shard(folder: str, name: str, epoch: int) -> dict:
    path = os.path.join(folder, name)
    # mmap: a stage reads only its own layers' tensors out of a large file
    shard = checkpoint.read_file(path, mmap=True, required=SHARD_KEYS)
    if shard["epoch"] != epoch:
        raise CheckpointError(path, f"it is from epoch {shard['epoch']}, the manifest "
                              f"from {epoch}")
    return shard


def _manifest(folder: str) -> dict | None:
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.exists(path):
        return None
    manifest = checkpoint.read_json(path)
    if not isinstance(manifest, dict) or any(k not in manifest for k in MANIFEST_KEYS):
        raise CheckpointError(path, f"not a layer-layout manifest (needs {', '.join(MANIFEST_KEYS)})")
    missing = [n for n in manifest["files"] if not os.path.exists(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"layer-parallel checkpoint in {folder} names shards that are "
                                f"not there: {missing} (copy the folder whole)")
    return manifest


def read_checkpoint(folder: str, keep: Callable[[str], bool] = lambda key: True) -> dict | None:
    """The checkpoint in `folder` as {epoch, history, config, net, optimizers}:
    from the shards of a layer-layout checkpoint (only the shards holding a key
    that `keep` accepts are read), or from a core `checkpoint.pt`, whichever is
    the later epoch (a single-process run may have continued in the folder).
    `net` holds the kept keys; `optimizers` each source's optimizer state. None
    if the folder holds neither."""
    manifest = _manifest(folder)
    core = checkpoint.read(folder, mmap=True)
    if core is not None and (manifest is None or core["epoch"] > manifest["epoch"]):
        return {"epoch": core["epoch"], "history": core["history"], "config": core["config"],
                "optimizers": [core["optimizer"]],
                "net": {k: v for k, v in core["net"].items() if keep(k)}}
    if manifest is None:
        return None
    out = {"epoch": manifest["epoch"], "net": {}, "optimizers": []}
    for r, name in enumerate(manifest["files"]):
        lo, hi = manifest["bounds"][r], manifest["bounds"][r + 1]
        if r and not any(keep(f"layers.{i}.") for i in range(lo, hi)):
            continue  # shard 0 is always read: it carries the history and config
        shard = _read_shard(folder, name, manifest["epoch"])
        out.setdefault("history", shard["history"])
        out.setdefault("config", shard["config"])
        out["optimizers"].append(shard["optimizer"])
        out["net"].update({k: v for k, v in shard["net"].items() if keep(k)})
    return out


def load_stage_checkpoint(run: Run, folder: str) -> tuple[int, list]:
    """Restore this stage's layers from `folder` (layer-layout shards written by
    any number of stages, or a core checkpoint); returns (epochs done, history)."""
    stage = run.net
    state = read_checkpoint(folder, stage.owns)
    if state is None:
        return 0, []
    checkpoint.check_config(state["config"], run.cfg, folder)
    for opt in state["optimizers"]:
        _check_optimizer(opt, folder)
    stage.load_state_dict(state["net"])  # strict: every key of this stage must be there
    return state["epoch"], state["history"]


def gather_checkpoint(folder: str, out_folder: str | None = None) -> str:
    """Merge a layer-layout checkpoint's shards into the core single-file format
    (`train.load_checkpoint` and `train.fit(checkpoint_dir=...)` read it), written
    to `out_folder` (default: `folder`). One process, no process group; it holds
    the whole net in memory. Returns the file's path."""
    manifest = _manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"no layer-parallel checkpoint ({MANIFEST_NAME}) in {folder}")
    shards = [_read_shard(folder, name, manifest["epoch"]) for name in manifest["files"]]
    net = {}
    for shard in shards:
        _check_optimizer(shard["optimizer"], folder)
        net.update(shard["net"])
    return checkpoint.save(out_folder or folder, epoch=manifest["epoch"],
                           history=shards[0]["history"], config=shards[0]["config"], net=net,
                           optimizer=_merged_optimizer_state([s["optimizer"] for s in shards]))


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
