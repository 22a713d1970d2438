"""Per-area usage as MLflow sees it: a compact per-layer summary per epoch, and
the whole matrix as one artifact.

The trainer reports `area_share.l<layer>.a<area>` every epoch: at 16 areas and
128 layers that is 2048 metric keys, each a chart in the MLflow UI. The sink
logs instead, per routed layer, `area_entropy_bits.l<layer>` (the entropy of
the share, in bits: log2(n_areas) is an even split, 0 a single area) and
`area_max_share.l<layer>` (the largest share), beside the trainer's
`areas_used.l<layer>`; the shares themselves go to `area_usage.json`:

    {"layers": [0, 1], "n_areas": 4,
     "epochs": [{"epoch": 1, "share": [[0.25, ...], [...]]}, ...]}

`share[i][a]` is the share of training samples layer `layers[i]` routed to
area `a` in that epoch.
"""

from __future__ import annotations

import json
import math
import re

SHARE_PREFIX = "area_share."
ARTIFACT = "area_usage.json"
_KEY = re.compile(r"area_share\.l(\d+)\.a(\d+)$")


def shares(metrics: dict[str, float]) -> dict[int, dict[int, float]]:
    """layer -> area -> share, from one epoch's metrics."""
    out: dict[int, dict[int, float]] = {}
    for k, v in metrics.items():
        m = _KEY.match(k)
        if m:
            out.setdefault(int(m.group(1)), {})[int(m.group(2))] = float(v)
    return out


def entropy_bits(p: list[float]) -> float:
    return -sum(x * math.log2(x) for x in p if x > 0) + 0.0


def compact(metrics: dict[str, float]) -> dict[str, float]:
    """One epoch's metrics with the per-area shares replaced by their per-layer summary."""
    out = {k: v for k, v in metrics.items() if not k.startswith(SHARE_PREFIX)}
    for layer, by_area in shares(metrics).items():
        p = list(by_area.values())
        out[f"area_entropy_bits.l{layer}"] = entropy_bits(p)
        out[f"area_max_share.l{layer}"] = max(p)
    return out


def matrix(history: list[dict[str, float]]) -> dict | None:
    """The whole usage matrix per epoch (the artifact's content); None if no layer routes."""
    epochs, layers, n_areas = [], set(), 0
    for row in history:
        by_layer = shares(row)
        if not by_layer:
            continue
        layers |= set(by_layer)
        n_areas = max(n_areas, *(max(a) + 1 for a in by_layer.values()))
        epochs.append((int(row.get("epoch", len(epochs) + 1)), by_layer))
    if not epochs:
        return None
    order = sorted(layers)
    return {"layers": order, "n_areas": n_areas, "epochs": [
        {"epoch": e, "share": [[by_layer.get(l, {}).get(a, 0.0) for a in range(n_areas)]
                               for l in order]} for e, by_layer in epochs]}


def write(history: list[dict[str, float]], path: str) -> bool:
    """Write `area_usage.json` to `path`; False (nothing written) if no layer routes."""
    data = matrix(history)
    if data is None:
        return False
    with open(path, "w") as f:
        json.dump(data, f)
    return True

