"""Where the layer layout cuts the net: stage r holds the contiguous layers
[b_r, b_{r+1}), balanced by the elements each layer holds, or cut where asked."""

from __future__ import annotations

from typing import Sequence

from ..models import Architecture


def layer_sizes(arch: Architecture, method: str = "sal") -> list[int]:
    """Elements each layer holds: areas and biases, selector and prototypes, feedback."""
    sizes = []
    for s in arch.layers:
        n = s.n_areas * (s.d_in * s.d_out + s.d_out)
        if s.n_areas > 1 and method == "sal":
            n += (s.d_in + s.n_areas) * arch.features(s)
        if method == "sal":
            n += s.d_out * arch.n_classes
        sizes.append(n)
    return sizes


def balanced_bounds(sizes: Sequence[int], world: int) -> list[int]:
    """[0, b_1, …, b_{W−1}, L]: stage r holds layers [b_r, b_{r+1}), contiguous, at
    least one each, with the largest stage as small as possible (exact dynamic
    programme, O(W·L²); among equal optima the same cut every time)."""
    L = len(sizes)
    if not 1 <= world <= L:
        raise ValueError(f"{world} stages for {L} layers: each stage needs at least one layer")
    prefix = [0]
    for n in sizes:
        prefix.append(prefix[-1] + n)
    inf = float("inf")
    # best[k][j]: the smallest largest-stage for layers [0, j) in k stages; cut[k][j] its last cut
    best = [[inf] * (L + 1) for _ in range(world + 1)]
    cut = [[0] * (L + 1) for _ in range(world + 1)]
    best[0][0] = 0
    for k in range(1, world + 1):
        for j in range(k, L - (world - k) + 1):
            for i in range(k - 1, j):
                cost = max(best[k - 1][i], prefix[j] - prefix[i])
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    bounds, j = [L], L
    for k in range(world, 0, -1):
        j = cut[k][j]
        bounds.append(j)
    return bounds[::-1]


def stage_bounds(arch: Architecture, method: str, world: int,
                 boundaries: Sequence[int] | None = None) -> list[int]:
    """The stages' layer ranges as [0, b_1, …, L]: balanced by `layer_sizes`, or
    from `boundaries`, the W−1 indices at which stages 1…W−1 start."""
    L = len(arch.layers)
    if boundaries is None:
        return balanced_bounds(layer_sizes(arch, method), world)
    bounds = [0, *[int(b) for b in boundaries], L]
    if len(bounds) != world + 1 or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"boundaries must be {world - 1} increasing layer indices in 1..{L - 1} "
                         f"(where stages 1..{world - 1} start); got {list(boundaries)}")
    return bounds
