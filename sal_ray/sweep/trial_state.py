"""What a trial carries: the driver's context, and its progress in one folder that
is also its Tune checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ray import tune as rt

from ..tracking.outbox import Outbox
from ..tracking.weights import LOG_MODEL_MAX_BYTES
from .storage import StorageError

# A fused trial's per-configuration result keys: c<j>/<key> (trial_configs).
MEMBER_KEY = re.compile(r"^c\d+/")
# Final metrics summarised as mean ± std over seeds in the trials table.
FINAL_KEYS = ("val_acc", "val_loss", "train_acc", "train_loss", "wall_time_s", "samples_per_s")


@dataclass
class TrialContext:
    """What every trial needs from the driver (shipped once with tune.with_parameters)."""
    sweep: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    fixed: dict[str, dict]       # study key -> fixed options
    searched: dict[str, tuple]   # study key -> searched option names
    metrics: tuple
    modes: tuple
    seeds: int
    base_seed: int
    log_model: str
    flush_every_s: float
    checkpoint_every: int = 1
    log_model_max_bytes: int | None = LOG_MODEL_MAX_BYTES  # tracking/weights.py
    checkpoint_every_s: float = 0.0  # at most one checkpoint per this many seconds
    workers: int = 1             # > 1: each seed trains on Ray Train workers
    layouts: dict = field(default_factory=dict)  # method -> parallel layout ("data")
    worker_cpu: float = 1.0
    worker_gpu: float = 0.0
    train_storage: str = ""      # where the Train runs of multi-worker trials live
    # the store's secret, if its URI holds one (tracking.store.split_secret): it
    # travels in Ray's object store with this context, never to disk, and goes
    # into the environment of the processes that talk to the store
    store_env: dict = field(default_factory=dict)
    system_metrics_s: float = 0.0  # MLflow system metrics sampled this often; 0: off
    config_stops: bool = False   # fused configurations under ASHA: read sweep/stops' board


def trial_status(result: dict | None, error: bool = False) -> str:
    """completed | diverged | failed | storage_error | stopped | crashed, from a
    trial's last result."""
    if error:
        return "crashed"
    status = (result or {}).get("trial_status")
    if status in ("completed", "diverged", "failed", "storage_error"):
        return status
    return "stopped" if result else "crashed"


def member_result(result: dict, j: int) -> dict:
    """Configuration j's result in a fused trial's: its `c<j>/` keys, bare, over the
    trial's own keys (seed_epochs, epoch, dataset, ...) without the other
    configurations'. The trial's own objectives (`mean_*`: its best configuration's)
    are not configuration j's: a configuration that stopped has none."""
    prefix = f"c{j}/"
    out = {k: v for k, v in result.items()
           if not MEMBER_KEY.match(k) and not k.startswith("mean_")}
    out.update({k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)})
    return out


def interrupted(e: BaseException) -> tuple[str, str]:
    """How a run ends when training was cut short by `e`: (status, message).
    SystemExit is the scheduler stopping the trial inside tune.report."""
    if isinstance(e, SystemExit):
        return "stopped", "stopped by the scheduler"
    return "crashed", f"{type(e).__name__}: {e}"[:500]


def tune_trial_name(trial) -> str:
    """Tune's name of a trial (TuneConfig.trial_name_creator): `trial-<n>`, `n` its
    number in the sweep, Tune's own count (the head of its `experiment_tag`,
    which a resumed sweep continues)."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return f"trial-{head}" if head.isdigit() else f"trial-{trial.trial_id}"


def trial_number(name: str | None) -> str | None:
    """The number in a `tune_trial_name`; None for a name without one."""
    tail = str(name or "").rsplit("-", 1)[-1]
    return tail if tail.isdigit() else None


def config_key(flat: dict[str, Any]) -> str:
    """A short id of a configuration without its seed: groups the seeds of a trial."""
    text = json.dumps({k: v for k, v in sorted(flat.items()) if k != "seed"}, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_key(sweep: str, trial_id: str, seed: int) -> str:
    """Names one seed's MLflow run across processes (tag `run_key`): a restarted
    trial finds its run by it instead of making a second one."""
    return f"{sweep}/{trial_id}/s{seed}"


def trial_summary(finals: list[dict], metrics: tuple) -> dict[str, float]:
    """Mean and std over seeds of the final metrics, and the objectives' means."""
    out = {}
    for k in FINAL_KEYS:
        values = [f[k] for f in finals if k in f]
        if values:
            out[f"final_{k}_mean"] = statistics.fmean(values)
            out[f"final_{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    for m in metrics:
        out[f"mean_{m}"] = statistics.fmean(f[m] for f in finals)
    return out


class TrialFolder:
    """A trial's progress in one folder, which is also its Tune checkpoint:

        trial.json         seeds done, their final metrics, weights saved
        trainer/           the current seed's trainer checkpoint (train.fit's)
        weights/           state dicts of the seeds done (logged at the end)
        outbox/            MLflow writes not yet delivered (tracking.outbox)

    A trial Tune restarts (its process was killed, or the sweep resumed) starts
    from the folder its last report carried: the seeds done are not run again,
    the current seed continues from its last epoch, its MLflow run is taken up."""

    FILE = "trial.json"

    def __init__(self, ctx: TrialContext, checkpoint=None):
        self.work = Path(tempfile.mkdtemp(prefix="sal-trial-"))
        self.seed_index, self.prior, self.weights = 0, [], []
        self.outbox = Outbox(ctx.tracking_uri, ctx.experiment_id, self.work / "outbox")
        self.fallback = ""  # what an unreadable checkpoint made this trial start over
        self.source = getattr(checkpoint, "path", "")  # the Tune checkpoint it came from
        if checkpoint is not None:
            checkpoint.to_directory(str(self.work))
            try:
                data = json.loads((self.work / self.FILE).read_text())
                self.seed_index, self.prior, self.weights = (
                    int(data["seed_index"]), list(data["prior"]), list(data["weights"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                # the trial's record cannot be read: start it over (its seeds' MLflow
                # runs are taken up again by their keys, nothing is doubled)
                self.fallback = f"trial restarted from scratch: {self.FILE} unreadable ({e})"
                self.seed_index, self.prior, self.weights = 0, [], []
                shutil.rmtree(self.trainer_dir, ignore_errors=True)
            try:
                if Outbox.saved_in(self.work / "outbox"):
                    self.outbox = Outbox.load(ctx.tracking_uri, self.work / "outbox")
            except (OSError, ValueError, KeyError) as e:
                self.fallback = (self.fallback + "; " if self.fallback else "") + \
                    f"its pending MLflow writes were unreadable and are lost ({e})"

    @property
    def trainer_dir(self) -> Path:
        return self.work / "trainer"

    def seed_done(self, final: dict, weights: Any = None, name: str | None = None) -> None:
        """Seed finished: its metrics and weights are kept, its trainer checkpoint goes
        (the next seed starts from scratch in the same folder). `name`: the weights
        file's, where the seed alone does not name it (several configurations)."""
        self.prior.append(final)
        if isinstance(weights, str):  # a checkpoint folder too large to load: referenced
            self.weights.append({"ref": weights})
        elif weights is not None:
            (self.work / "weights").mkdir(exist_ok=True)
            rel = f"weights/state_dict_{name or 's' + str(final.get('seed', self.seed_index))}.pt"
            torch.save(weights, self.work / rel)
            self.weights.append(rel)
        shutil.rmtree(self.trainer_dir, ignore_errors=True)
        self.seed_index += 1

    def checkpoint(self) -> rt.Checkpoint:
        """The folder as a Tune checkpoint (Tune copies it to the sweep's storage)."""
        try:
            self.outbox.save()
            path = self.work / self.FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"seed_index": self.seed_index, "prior": self.prior,
                                       "weights": self.weights}))
            os.replace(tmp, path)
        except OSError as e:
            raise StorageError(f"cannot write the trial's checkpoint in {self.work}: "
                               f"{e.strerror or e}") from e
        return rt.Checkpoint.from_directory(str(self.work))

    def final_checkpoint(self, clock) -> rt.Checkpoint | None:
        """The checkpoint of the trial's last report, where `clock` (a
        `costs.CheckpointClock`) says it needs one."""
        return self.checkpoint() if clock.final(self.outbox.pending > 0) else None

    def discard_trainer_checkpoint(self) -> None:
        shutil.rmtree(self.trainer_dir, ignore_errors=True)

    def start_over(self, what: str, error: Exception) -> str:
        """The trainer checkpoint cannot be read: drop it, so `what` (a seed, the
        pack) trains again from scratch, where Tune would retry the same file until
        it gave up. What to record and print about it."""
        self.discard_trainer_checkpoint()
        copied = f" (Tune's checkpoint {self.source})" if self.source else ""
        return f"{what} restarted from scratch: {error}{copied}"[:500]

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
