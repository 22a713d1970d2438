"""Packs: runs of one shape (the seeds of a configuration, same-shape configurations
differing only in `build.PER_MEMBER` scalars) trained as one stacked model, each
member exactly as its separate run (`loop.fit_pack`). Imports only torch.

- `build`: check_pack, the stacked modules (PackNet), stacking and unstacking;
- `routing`: the routed kernels (dense, onehot, gather, sorted) over members;
- `step`: the members' rule (SAL closed form, BP/MoE autograd) and PackSGD;
- `state`: the whole pack's checkpoint;
- `loop`: build_pack, the epoch loop, fit_pack (one RunResult per member).
"""

from .build import PER_MEMBER, PackNet, check_pack, member_state
from .loop import Pack, build_pack, fit_pack
from .state import PACK_CHECKPOINT

__all__ = ["PER_MEMBER", "PackNet", "check_pack", "member_state", "Pack", "build_pack",
           "fit_pack", "PACK_CHECKPOINT"]
