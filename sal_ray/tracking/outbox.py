"""MLflow writes that survive a tracking outage: queued, delivered in order, never twice.

    box = Outbox(uri, experiment_id, folder)
    box.create("sweep/trial_00001/s0", name, tags, parent_run_id)
    box.metrics("sweep/trial_00001/s0", metric_list)    # ... per epoch
    box.deliver()                                       # False: some still wait

Every write a training run makes (create the run, params, per-epoch metrics,
tags, artifacts, its end) is an op here. `deliver()` sends the ops in order and
stops at the first one the store does not take; the rest wait for the next call
(after a back-off, so an outage costs training no time). One exception to the
order: a run's params, metrics, tags and end that wait together go as one write,
and its files among them follow that write. The outbox is plain
JSON plus the artifact files in its folder: a sweep trial's checkpoint holds it,
so writes pending when a trial is killed or the server is down are delivered by
the restarted trial, by the driver when the sweep ends, or on resume.

Never twice, although a killed process may have sent anything up to its death:
- runs are created under a `run_key` tag, after looking for one: a run that an
  earlier process created is re-attached, not duplicated;
- a run re-attached, restored from a checkpoint or hit by a write that failed
  midway is "uncertain": its params already in the store are skipped, and each
  metric point is sent only if the store lacks that (key, step).

This module is orchestration, never imported by the core.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from ..fs import disk_failure
from . import writes
from .store import client, redact, with_retry

OUTBOX_FILE = "outbox.json"
# Waits between delivery attempts after a failure: 1, 2, 4 ... capped here (s).
MAX_BACKOFF_S = 60.0
# MLflow error codes that no retry can fix: the op is dropped (and reported).
# Ops that merge into one log_batch (tracking.writes.log_batch).
MERGED = ("params", "metrics", "tags", "end")
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
             "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST"}


def _permanent(err: Exception) -> bool:
    code = getattr(err, "error_code", None)
    return code in PERMANENT


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return redact(text)[:300]


class Outbox:
    """Ordered pending writes to one MLflow store (see the module doc)."""

    def __init__(self, uri: str, experiment_id: str, folder: str | os.PathLike | None = None):
        self.uri, self.experiment_id = uri, experiment_id
        self.folder = Path(folder) if folder is not None else None
        self.ops: list[dict[str, Any]] = []
        self.run_ids: dict[str, str] = {}   # run key -> MLflow run id
        self.uncertain: set[str] = set()    # run keys whose store state must be read first
        self.dropped: list[str] = []        # ops the store refused for good, and why
        self.error = ""                     # why the last delivery stopped
        self.written = 0                    # ops that changed the store (not already there)
        self.disk_full = ""                 # the store's disk is full or failing: why
        self._failures = 0
        self._next_try = 0.0
        self._steps: dict[tuple[str, str], set[int]] = {}  # (run key, metric) -> steps stored

    # ---- queueing -------------------------------------------------------------------
    def knows(self, key: str) -> bool:
        """Whether run `key` exists or its creation is queued."""
        return key in self.run_ids or any(op["op"] == "create" and op["key"] == key
                                          for op in self.ops)

    def create(self, key: str, name: str, tags: dict[str, Any], parent_run_id: str | None):
        self.ops.append({"op": "create", "key": key, "name": name, "parent": parent_run_id,
                         "tags": {k: str(v) for k, v in tags.items()}})

    def reopen(self, key: str) -> None:
        """A run taken up again (a trial restarted): mark it running once more."""
        self.uncertain.add(key)
        self.ops.append({"op": "reopen", "key": key})

    def params(self, key: str, params: dict[str, Any]) -> None:
        self.ops.append({"op": "params", "key": key,
                         "params": {str(k): str(v) for k, v in params.items()}})

    def metrics(self, key: str, metrics: list) -> None:
        """`metrics`: mlflow.entities.Metric objects (stored as plain lists)."""
        rows = [[m.key, m.value, m.timestamp, m.step] for m in metrics]
        last = self.ops[-1] if self.ops else None
        if last is not None and last["op"] == "metrics" and last["key"] == key:
            last["metrics"] += rows  # one write for all the epochs that waited
        elif rows:
            self.ops.append({"op": "metrics", "key": key, "metrics": rows})

    def tags(self, key: str, tags: dict[str, Any]) -> None:
        self.ops.append({"op": "tags", "key": key, "tags": {k: str(v) for k, v in tags.items()}})

    def artifact(self, key: str, path: str, artifact_path: str) -> None:
        """Stages `path` in the outbox folder now (the caller's file may not last):
        a hard link where the folder is on the same filesystem (no bytes copied;
        the caller replacing its file makes a new one), else a copy."""
        staged = self._slot(Path(path).name)
        try:
            os.link(path, staged)
        except OSError:  # another filesystem, or links not allowed there
            shutil.copy2(path, staged)
        self._staged(key, staged, artifact_path)

    def artifact_text(self, key: str, text: str, name: str) -> None:
        """A small text file as an artifact: `name` is "folder/file" in the run."""
        folder, _, file = name.rpartition("/")
        staged = self._slot(file)
        staged.write_text(text)
        self._staged(key, staged, folder)

    def _slot(self, name: str) -> Path:
        if self.folder is None:
            raise ValueError("an Outbox without a folder cannot hold artifacts")
        slot = self.folder / "files" / uuid.uuid4().hex[:12]  # its own folder: the name stays
        slot.mkdir(parents=True)
        return slot / name

    def _staged(self, key: str, staged: Path, artifact_path: str) -> None:
        self.ops.append({"op": "artifact", "key": key,
                         "file": str(staged.relative_to(self.folder)),
                         "artifact_path": artifact_path})

    def end(self, key: str, status: str, message: str = "") -> None:
        self.ops.append({"op": "end", "key": key, "status": status, "message": message})

    def absorb(self, state: dict) -> None:
        """Take over another outbox's undelivered writes (`MLflowSink.state_for_caller`
        of a sink that ran in a worker process); its runs are uncertain here."""
        self.run_ids.update(state.get("run_ids", {}))
        def here(op) -> bool:
            # a worker on another node wrote its artifact (area_usage.json) there: the
            # op could never be sent and would hold up every write after it
            return op["op"] != "artifact" or bool(
                self.folder is not None and (self.folder / op["file"]).is_file())

        ops = state.get("ops", [])
        self.dropped += [f"artifact {op['file']} for {op['key']}: written on another node"
                         for op in ops if not here(op)]
        self.ops += [op for op in ops if here(op)]
        self.uncertain |= set(state.get("run_ids", {})) | {op["key"] for op in state.get("ops", [])}

    # ---- delivery ---------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self.ops)

    def deliver(self, force: bool = False) -> bool:
        """Send what waits, in order; True when nothing is left. Never raises for an
        unreachable store: the ops stay, `error` says why, the next call (after a
        back-off unless `force`) tries again. The params, metrics, tags and end of
        one run the store is known to hold nothing of, waiting together, go as one
        log_batch (its files among them after it): each write costs a SQLite store
        ~4 ms of CPU before its first row."""
        if not self.ops:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        while self.ops:
            op = self.ops[0]
            merged = self._mergeable()
            try:
                if len(merged) > 1:
                    self._send_merged([self.ops[i] for i in merged])
                    self.written += len(merged)
                    for i in reversed(merged):
                        del self.ops[i]
                    continue
                self.written += bool(self._send(op))
            except Exception as e:  # noqa: BLE001 - any failure: keep the op for later
                if _permanent(e) and len(merged) > 1:
                    # one of them is bad: the run is uncertain now (the store may have
                    # taken some), so they go one at a time and only that one drops
                    self.uncertain.add(op["key"])
                    continue
                if _permanent(e):
                    self.dropped.append(f"{op['op']} for {op['key']}: {_reason(e)}")
                    self.ops.pop(0)
                    self._drop_file(op)
                    continue
                self.error = _reason(e)
                self.disk_full = disk_failure(e) or ""
                self.uncertain.add(op["key"])  # the store may have taken part of it
                self._steps = {k: v for k, v in self._steps.items() if k[0] != op["key"]}
                self._failures += 1
                self._next_try = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
                return False
            self.ops.pop(0)
            self._drop_file(op)
        self._failures, self.error, self.disk_full = 0, "", ""
        return True

    def _mergeable(self) -> list[int]:
        """Which ops, from the first, go in one log_batch: the writes of one run that
        exists and holds nothing uncertain, within MLflow's batch limits. The run's
        files among them are passed over and go after it: a file between two writes
        split them in two (a trial's area usage matrix sat between its last metrics
        and its end, each write ~8 ms of a SQLite store's CPU)."""
        key = self.ops[0]["key"]
        if key not in self.run_ids or key in self.uncertain:
            return []
        counts = {"params": 0, "metrics": 0, "tags": 0}
        merged = []
        for i, op in enumerate(self.ops):
            if op["key"] != key:
                break
            if op["op"] == "artifact":
                continue
            if op["op"] not in MERGED:
                break
            size = {"params": len(op.get("params", ())), "metrics": len(op.get("metrics", ())),
                    "tags": len(op.get("tags", ())) + (2 if op["op"] == "end" else 0)}
            after = {k: counts[k] + size[k] for k in counts}
            if after["params"] > writes.PARAMS_PER_BATCH or after["tags"] > \
                    writes.PARAMS_PER_BATCH or sum(after.values()) > writes.METRICS_PER_BATCH:
                break
            counts = after
            merged.append(i)
        return merged

    def _send_merged(self, ops: list[dict]) -> None:
        """One log_batch for `ops` (later values win, as sent one by one), then the
        run's end if they hold one."""
        params, tags, rows, end = {}, {}, [], None
        for op in ops:
            kind = op["op"]
            if kind == "params":
                params.update(op["params"])
            elif kind == "tags":
                tags.update(op["tags"])
            elif kind == "metrics":
                rows += op["metrics"]
            else:  # end
                end = op
                tags.update(writes.status_tags(op["status"], op["message"]))
        run_id = self.run_ids[ops[0]["key"]]
        writes.log_batch(run_id, self.uri, params=params, tags=tags,
                         metrics=[Metric(k, float(v), int(t), int(st)) for k, v, t, st in rows])
        if end is not None:
            writes.terminate(run_id, end["status"], self.uri)

    def _drop_file(self, op: dict) -> None:
        if op["op"] == "artifact" and self.folder is not None:
            shutil.rmtree((self.folder / op["file"]).parent, ignore_errors=True)

    def _send(self, op: dict) -> bool:
        """Deliver one op; whether it changed the store. For an uncertain run what
        the store already holds is skipped, so a checkpoint's copy of writes the
        live process delivered later is neither sent twice nor counted."""
        key, kind = op["key"], op["op"]
        if kind == "create":
            return key not in self.run_ids and self._create(op)
        run_id = self.run_ids[key]  # its create op came first
        c = client(self.uri)
        held = with_retry(c.get_run, run_id) \
            if key in self.uncertain and kind in ("params", "tags", "artifact", "end") else None
        if kind == "reopen":
            writes.log_tags(run_id, {"status": "running"}, self.uri)
            with_retry(c.update_run, run_id, status="RUNNING")
            return True
        if kind == "params":
            params = op["params"] if held is None else \
                {k: v for k, v in op["params"].items() if k not in held.data.params}
            writes.log_params(run_id, params, self.uri)
            return bool(params)
        if kind == "metrics":
            return self._send_metrics(key, run_id, op["metrics"])
        if kind == "tags":
            tags = op["tags"] if held is None else \
                {k: v for k, v in op["tags"].items() if held.data.tags.get(k) != v}
            writes.log_tags(run_id, tags, self.uri)
            return bool(tags)
        if kind == "artifact":
            name = Path(op["file"]).name
            if held is not None and any(Path(f.path).name == name for f in with_retry(
                    c.list_artifacts, run_id, op["artifact_path"])):
                return False
            with_retry(c.log_artifact, run_id, str(self.folder / op["file"]),
                       op["artifact_path"])
            return True
        if kind == "end":
            if held is not None and held.info.status != "RUNNING" \
                    and held.data.tags.get("status") == op["status"]:
                return False
            writes.set_status(run_id, op["status"], self.uri, op["message"])
            return True
        raise ValueError(f"unknown outbox op {kind!r}")

    def _create(self, op: dict) -> bool:
        found = with_retry(client(self.uri).search_runs, [self.experiment_id],
                           filter_string=f"tags.run_key = '{op['key']}'", max_results=1)
        if found:  # an earlier process created it: take it up, never make a second one
            self.run_ids[op["key"]] = found[0].info.run_id
            self.uncertain.add(op["key"])
            return False
        self.run_ids[op["key"]] = writes.start_run(
            self.uri, self.experiment_id, op["name"], {**op["tags"], "run_key": op["key"]},
            op["parent"])
        return True

    def _send_metrics(self, key: str, run_id: str, rows: list) -> bool:
        if key in self.uncertain:
            c = client(self.uri)
            for name in {r[0] for r in rows}:
                if (key, name) not in self._steps:
                    history = with_retry(c.get_metric_history, run_id, name)
                    self._steps[(key, name)] = {m.step for m in history}
            rows = [r for r in rows if r[3] not in self._steps[(key, r[0])]]
        writes.log_metrics(run_id, [Metric(k, float(v), int(t), int(s)) for k, v, t, s in rows],
                           self.uri)
        for k, _, _, s in rows:
            if (key, k) in self._steps:
                self._steps[(key, k)].add(int(s))
        return bool(rows)

    # ---- on disk ------------------------------------------------------------------------
    def save(self) -> None:
        """Write the pending ops into the folder, atomically (a checkpoint copies it)."""
        if self.folder is None:
            raise ValueError("an Outbox without a folder cannot be saved")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / OUTBOX_FILE
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"experiment_id": self.experiment_id, "ops": self.ops,
                                   "run_ids": self.run_ids, "dropped": self.dropped}))
        os.replace(tmp, path)

    @classmethod
    def load(cls, uri: str, folder: str | os.PathLike) -> "Outbox":
        """The outbox saved in `folder`. Every run it knows is uncertain: the process
        that saved it may have sent more before it ended."""
        data = json.loads((Path(folder) / OUTBOX_FILE).read_text())
        box = cls(uri, data["experiment_id"], folder)
        box.ops, box.run_ids, box.dropped = data["ops"], data["run_ids"], data.get("dropped", [])
        box.uncertain = set(box.run_ids) | {op["key"] for op in box.ops}
        return box

    @staticmethod
    def saved_in(folder: str | os.PathLike) -> bool:
        return (Path(folder) / OUTBOX_FILE).is_file()
