"""What a sweep was started with, stored beside it (`<storage>/.sweeps/<name>.json`)
so that a resume restores it: every `tune()` option that decides what runs, in the
form its first start was given, and a study script's own flags.

On resume an option left at its default takes the stored value; one given again
must equal it, unless it belongs to this session only (how much is printed, where
Ray runs) or to each trial's next start (checkpoint, logging cadence), which the
resumed session sets. Anything else given differently is refused by name: Tune
restores the scheduler, time budget, failure count, concurrency and trial
resources from its own state, and the studies must be the ones that started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..tracking.store import resolve_uri, split_secret
from .space import Choice, Float, Int

FOLDER = ".sweeps"
# The resumed session's value holds (it is read again at every start).
SESSION = ("address", "num_cpus", "verbose", "table_by", "finish_wait_s", "callbacks",
           "log_model", "log_model_max_bytes", "flush_every_s", "checkpoint_every",
           "checkpoint_every_s", "dry_run", "resume", "name", "storage_path", "script",
           "progress_every_s", "system_metrics_s")
WHY_FIXED = {
    "scheduler": "Tune restores its scheduler from the sweep's state",
    "time_budget_s": "Tune restores its time budget from the sweep's state",
    "max_failures": "Tune restores its failure count from the sweep's state",
    "max_concurrent": "Tune restores its concurrency from the sweep's state",
    "resources": "Tune restores each trial's resources from the sweep's state",
    "layout": "a trial's checkpoints are in the layout it started with",
    "tracking_uri": "the sweep's parent run and trial runs are in that store",
    "experiment": "the sweep's runs are in that experiment",
}
WHY_STUDY = "the studies must be the ones the sweep started with"


def public_uri(uri: str | None) -> str:
    """A store URI as the record keeps it: resolved, and without its secret (which
    a resume is given again, in the URI or the environment)."""
    return split_secret(resolve_uri(uri))[0]


def to_json(value: Any) -> Any:
    """A JSON form in which two equal options compare equal."""
    if isinstance(value, Float):
        return {"float": [value.low, value.high, value.log]}
    if isinstance(value, Int):
        return {"int": [value.low, value.high, value.log]}
    if isinstance(value, Choice):
        return {"choice": [to_json(v) for v in value.values]}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"object": type(value).__qualname__}  # a sampler or scheduler object


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"float"}:
            return Float(*value["float"])
        if set(value) == {"int"}:
            return Int(*value["int"])
        if set(value) == {"choice"}:
            return Choice(tuple(from_json(v) for v in value["choice"]))
        if set(value) == {"object"}:
            return value
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def path(storage: str, name: str) -> Path:
    return Path(storage) / FOLDER / f"{name}.json"


def save(storage: str, name: str, options: dict[str, Any], script: dict | None = None) -> None:
    """Atomically, before the sweep's first trial."""
    if "://" in storage:
        return
    target = path(storage, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    options = {**options, "tracking_uri": public_uri(options.get("tracking_uri"))}
    body = {"options": {k: to_json(v) for k, v in options.items() if k not in SESSION},
            "script": to_json(script) if script is not None else None}
    tmp = target.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
    os.replace(tmp, target)


def load(storage: str, name: str) -> dict | None:
    """The stored record, or None (a URI storage, or a sweep from before records)."""
    if "://" in storage or not path(storage, name).is_file():
        return None
    try:
        return json.loads(path(storage, name).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError("resume", f"the record of sweep '{name}' ({path(storage, name)}) "
                          f"cannot be read: {e}") from None


def restore(name: str, stored: dict, given: dict[str, Any], defaults: dict[str, Any],
            flag: str = "{}") -> dict[str, Any]:
    """`given` with every option left at its default replaced by the stored one;
    ConfigError naming the first option given with another value than stored that
    a resume cannot honour. `flag` formats the option's name for the message."""
    out = dict(given)
    for key, was in stored.items():
        if key not in given or key in SESSION:
            continue
        now = to_json(given[key])
        if key == "tracking_uri" and given[key] is not None:
            now = public_uri(given[key])  # the same store, with or without its secret
        stored_object = isinstance(was, dict) and set(was) == {"object"}
        if now == to_json(defaults.get(key)) and now != was:
            if stored_object:
                raise ConfigError(key, f"sweep '{name}' was started with a {was['object']} "
                                  f"object as {flag.format(key)}: pass one again to resume")
            out[key] = from_json(was)
        elif now != was:
            if stored_object:
                continue  # a sampler or scheduler object: nothing to compare it with
            why = WHY_FIXED.get(key, WHY_STUDY)
            raise ConfigError(key, f"sweep '{name}' was started with {flag.format(key)} "
                              f"{_shown(was)}; resuming with {_shown(now)} is refused ({why}): "
                              "leave it out to resume with the stored value")
    return out


def _shown(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
