"""At a sweep's end: wait for a tracking store that is away, and deliver the MLflow
writes that trials left in their last checkpoints while it was."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..tracking import store
from ..tracking.outbox import OUTBOX_FILE, Outbox


def wait_for_store(uri: str, experiment_id: str, wait_s: float, echo: Callable) -> bool:
    """Whether the store answers, waiting up to `wait_s` for it to come back."""
    deadline, delay, told = time.monotonic() + wait_s, 1.0, False
    while True:
        try:
            with store.quick_http(uri):
                store.client(uri).get_experiment(experiment_id)
            if told:
                echo("MLflow store is back.")
            return True
        except Exception as e:  # noqa: BLE001
            if time.monotonic() + delay > deadline:
                return False
            if not told:
                reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
                echo(f"MLflow store {store.redact(uri)} is not answering "
                     f"({store.redact(reason)}); waiting up to {wait_s:.0f} s for it")
                told = True
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def deliver_pending(records: list[dict], uri: str) -> tuple[int, int]:
    """MLflow writes trials left in their last checkpoints, delivered now. A
    checkpoint also holds writes that were only buffered when it was taken (a
    trial the scheduler stopped takes no later one) and that the trial delivered
    itself afterwards: those are skipped, not counted. Returns (writes the store
    did not have, writes still pending)."""
    done = left = 0
    for rec in records:
        ck = rec.get("checkpoint")
        if ck is None:
            continue
        try:  # read just the outbox first: most checkpoints have nothing pending
            with ck.filesystem.open_input_file(f"{ck.path}/outbox/{OUTBOX_FILE}") as f:
                if not json.loads(f.readall()).get("ops"):
                    continue
        except (FileNotFoundError, OSError):
            continue
        with tempfile.TemporaryDirectory(prefix="sal-outbox-") as tmp:
            ck.to_directory(tmp)
            box = Outbox.load(uri, Path(tmp) / "outbox")
            box.deliver(force=True)
            done, left = done + box.written, left + box.pending
    return done, left
