"""Which runs share a protocol, so that no figure or table row pools two.

A sweep (the runs of one `sweep` tag; runs without one: those of their
experiment) fixes some options and varies others. Its *axes* are the options
it varies: those its runs tag as `searched`, and any option whose value differs
between its runs. Its *fixed settings* are the options constant over all its
runs. Sweeps with the same axes and the same fixed settings share a protocol
(the Convergence study run on Digits one day and on USPS the next); any other
difference is another protocol: an lr of 1e-4 is never drawn beside an lr of
1e-2 in one panel, nor 25 epochs beside 5.

The options are the configuration params of tables.config_params: everything
but the table's own keys (dataset, method, n_areas), the seed, what changes
speed but not results, and derived counts.

A protocol's name is its study (the sweep name without its timestamp, else the
experiment) and what sets it apart: its axes ("lr sweep"), its epochs and lr,
and every fixed setting in which it differs from another protocol on the page,
e.g. "convergence: 25 epochs, lr 0.0001".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from . import paper
from .tables import config_params

# A sweep name ends in its start time (sal_ray.sweep.scripts): the study is the rest.
_STAMP = re.compile(r"-\d{8}-\d{6}$")
# Named in every protocol's name when fixed, different or not: what a reader asks first.
ALWAYS_NAMED = ("epochs", "lr")
PROTOCOL_COLUMN = "protocol"


@dataclass
class Protocol:
    name: str                       # unique on the page, e.g. "convergence: 25 epochs, lr 0.0001"
    slug: str                       # file-name form of the name
    axes: list[str]                 # the options its sweeps vary
    fixed: dict                     # option -> the value every run has
    studies: list[str]
    sweeps: list[str]
    experiments: list[str]
    n_runs: int = 0
    differences: list[str] = field(default_factory=list)  # from the paper's protocol


def study_of(sweep, experiment) -> str:
    if isinstance(sweep, str) and sweep:
        return _STAMP.sub("", sweep)
    return str(experiment)


def _value(v):
    if hasattr(v, "item"):  # numpy scalars: compare and print as Python values
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _show(v) -> str:
    return "unset" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _setting(option: str, value) -> str:
    if option == "epochs" and value is not None:
        return f"{_show(value)} epochs"
    return f"{option} {_show(value)}"


def _safe(text: str) -> str:
    return re.sub(r"_+", "_", "".join(ch if ch.isalnum() or ch in "-" else "_"
                                      for ch in text)).strip("_")


def assign(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[Protocol]]:
    """`runs` with a `protocol` column (the protocol's name), and the protocols in
    the order the page lists them (by name)."""
    if runs.empty:
        return runs.assign(**{PROTOCOL_COLUMN: pd.Series(dtype=object)}), []
    options = config_params(runs.drop(columns=[PROTOCOL_COLUMN], errors="ignore"))
    sweep = runs["sweep"] if "sweep" in runs else pd.Series(None, index=runs.index, dtype=object)
    unit = [(e, s if isinstance(s, str) and s else None)
            for e, s in zip(runs["experiment"], sweep)]
    units: dict[tuple, list] = {}
    for i, u in zip(runs.index, unit):
        units.setdefault(u, []).append(i)

    groups: dict[tuple, dict] = {}  # key -> {axes, fixed, units, index}
    key_of_unit = {}
    for u, idx in units.items():
        g = runs.loc[idx]
        tagged = set()
        if "searched" in g:
            for text in g["searched"].dropna():
                tagged |= {t.strip() for t in str(text).split(",") if t.strip()}
        axes, fixed = [], {}
        for opt in options:
            values = {repr(_value(v)) for v in g[opt]}
            if opt in tagged or len(values) > 1:
                axes.append(opt)
            else:
                fixed[opt] = _value(g[opt].iloc[0])
        key = (tuple(sorted(axes)), tuple(sorted((k, repr(v)) for k, v in fixed.items())))
        entry = groups.setdefault(key, {"axes": sorted(axes), "fixed": fixed, "units": [],
                                        "index": []})
        entry["units"].append(u)
        entry["index"] += idx
        key_of_unit[u] = key

    # what sets each protocol apart from the others on the page
    # (an option some protocol varies is named there as "X sweep"; unset ones are not named)
    all_opts = sorted({o for e in groups.values() for o in e["fixed"]})
    apart = [o for o in all_opts
             if len({repr(e["fixed"][o]) for e in groups.values() if o in e["fixed"]}) > 1]
    protocols, names = [], {}
    for key, e in groups.items():
        studies = sorted({study_of(s, x) for x, s in e["units"]})
        parts = [f"{a} sweep" for a in e["axes"]]
        named = [o for o in ALWAYS_NAMED + tuple(apart) if e["fixed"].get(o) is not None]
        named = list(dict.fromkeys(named))
        parts += [_setting(o, e["fixed"][o]) for o in named]
        name = ", ".join(studies) + (": " + ", ".join(parts) if parts else "")
        n = 2
        base = name
        while name in names.values():  # identical names only when they differ in nothing named
            name, n = f"{base} ({n})", n + 1
        names[key] = name
        sub = runs.loc[e["index"]]
        protocols.append(Protocol(
            name=name, slug="", axes=e["axes"], fixed=e["fixed"], studies=studies,
            sweeps=sorted({s for _, s in e["units"] if s}),
            experiments=sorted({str(x) for x, _ in e["units"]}),
            n_runs=len(sub), differences=paper_differences(e["fixed"], e["axes"])))
    protocols.sort(key=lambda p: p.name)
    slugs = set()
    for p in protocols:
        slug, n = _safe(p.name)[:80] or "protocol", 2
        while slug in slugs:
            slug, n = f"{_safe(p.name)[:76]}_{n}", n + 1
        slugs.add(slug)
        p.slug = slug
    out = runs.copy()
    out[PROTOCOL_COLUMN] = [names[key_of_unit[u]] for u in unit]
    return out, protocols


def paper_differences(fixed: dict, axes: list[str]) -> list[str]:
    """How a protocol's fixed settings and axes depart from the published one."""
    out = []
    for key, value in paper.PROTOCOL.items():
        if key in axes:
            out.append(f"{key} varied (paper {value})")
        elif key in fixed and fixed[key] is not None and fixed[key] != value:
            out.append(f"{key} {_show(fixed[key])} (paper {value})")
    return out
