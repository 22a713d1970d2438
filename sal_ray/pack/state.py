"""A pack's checkpoint: the whole pack in one file, `pack.pt`, written atomically
and read with `weights_only=True` (`sal_ray.checkpoint`).

It holds the epochs done, the stacked net, and per member its flat config, its
history, its status and message, and (a member that stopped) the weights it
stopped with: a frozen member's slice of the stack is zeros, so its own weights
travel beside it. Resuming checks every member's config against the one asking
(`checkpoint.check_config`), so a pack resumes only as the same pack.
"""

from __future__ import annotations

import os

from .. import checkpoint
from ..config import ConfigError

PACK_CHECKPOINT = "pack.pt"
# members that stopped before the last epoch, with the weights they stopped with
ENDED_EARLY = ("diverged", "stopped")


def save_pack(pack, folder: str, epoch: int) -> str:
    """Checkpoint `pack` (a `loop.Pack`) after `epoch`; the file's path."""
    os.makedirs(folder, exist_ok=True)
    members = [{"config": m.run.cfg.to_flat(), "history": m.history, "status": m.status,
                "message": m.message,
                "stopped_net": m.run.net.state_dict() if m.status in ENDED_EARLY else None}
               for m in pack.members]
    return checkpoint.atomic_save({"epoch": epoch, "members": members,
                                   "net": pack.net.state_dict(),
                                   "rng": checkpoint.rng_state(pack.device)},
                                  os.path.join(folder, PACK_CHECKPOINT))


def load_pack(pack, folder: str) -> int:
    """Restore `pack` from `folder`; the epochs done (0 if there is no checkpoint).
    Another pack's checkpoint is refused (ConfigError), an unreadable one raises
    `checkpoint.CheckpointError` naming the file."""
    path = os.path.join(folder, PACK_CHECKPOINT)
    if not os.path.exists(path):
        return 0
    state = checkpoint.read_file(path, map_location=pack.device,
                                 required=("epoch", "members", "net"))
    saved = state["members"]
    if len(saved) != len(pack.members):
        raise ConfigError("fuse", f"checkpoint in {folder} holds a pack of {len(saved)} "
                          f"members, not the {len(pack.members)} asked for: start in "
                          "another folder")
    for m, s in zip(pack.members, saved):
        checkpoint.check_config(s["config"], m.run.cfg, folder)
    pack.net.load_state_dict(state["net"])
    for i, (m, s) in enumerate(zip(pack.members, saved)):
        # a completed member goes on when more epochs are asked for; one that diverged
        # or was stopped stays so
        m.history, m.message = list(s["history"]), s["message"]
        m.status = s["status"] if s["status"] in ENDED_EARLY else "running"
        if s["status"] in ENDED_EARLY:
            m.run.net.load_state_dict(s["stopped_net"])
            pack.optimizer.freeze(i)
    checkpoint.restore_rng(state.get("rng"), pack.device)
    return state["epoch"]
