"""A trial's seeds trained as one stacked model (`sal_ray.pack.fit_pack`): the
one-process path of a trial with several seeds and `fuse` on (the default).

Each seed keeps its own MLflow run (same key, name, tags and metrics as when the
seeds run one after another, plus `pack_size`). Tune hears one report per epoch
for the whole pack: each metric's mean over the seeds still training, and
`mean_<metric>`, the same mean, which the scheduler and Optuna read. Its time is
`seed_epochs` (epoch × seeds), the unit a trial that runs its seeds in turn
reports too, so ASHA's rungs mean the same work either way.

A seed that diverges stops alone; the others train to the end, and the trial
then ends diverged, as a trial whose seed diverged does when they run in turn.
The pack's checkpoint (`pack.pt`) lives in the trial folder's trainer/ and is
shipped to Tune by the trial's clock; a restarted trial resumes the whole pack.
"""

from __future__ import annotations

import statistics

from ray import tune as rt

from ..checkpoint import CheckpointError
from ..config import Config, ConfigError
from ..data import DataError
from ..pack import fit_pack
from ..trainer import Callback
from .costs import CheckpointClock, Costs, Timed
from .storage import StorageError
from .trial_state import TrialContext, TrialFolder, interrupted


def fuses(ctx: TrialContext, cfg: Config, folder: TrialFolder) -> bool:
    """Whether this trial trains its seeds as one pack: several seeds in one
    process, `fuse` on, and no seed already done one at a time (a trial folder
    from a run that did not fuse goes on as it began)."""
    return ctx.workers == 1 and ctx.seeds > 1 and folder.seed_index == 0 and cfg.run.fuse


def pack_means(now: list[dict]) -> dict[str, float]:
    """Each scalar metric's mean over members' epochs (the per-area shares stay in
    MLflow)."""
    return {k: statistics.fmean(m[k] for m in now) for k in now[0]
            if not k.startswith("area_share.") and isinstance(now[0][k], (int, float))}


class MemberTap(Callback):
    """Keeps member `m`'s latest epoch, with its parameter counts, for the pack's
    report."""

    def __init__(self, latest: dict, m: int):
        self.latest, self.m = latest, m
        self.counts: dict = {}

    def on_start(self, run) -> None:
        # parameter counts, as a trial of seeds in turn reports them (an objective
        # such as params_active reads them)
        self.counts = run.counts.as_dict()

    def on_epoch(self, metrics: dict) -> None:
        self.latest[self.m] = {**self.counts, **metrics}


class PackReporter:
    """`fit_pack`'s after_epoch: one Tune report for the pack per epoch, with a
    checkpoint when the trial's clock says so."""

    def __init__(self, ctx: TrialContext, folder: TrialFolder, common: dict, epochs: int,
                 clock: CheckpointClock, costs: Costs):
        self.ctx, self.folder, self.common, self.epochs = ctx, folder, common, epochs
        self.clock, self.costs = clock, costs
        self.latest: dict[int, dict] = {}
        self.last: dict | None = None

    def payload(self, epoch: int, now: dict[int, dict]) -> dict:
        """The report for `epoch` from the members that trained it (`now`, by index)."""
        means = pack_means(list(now.values()))
        return {**means, **self.common, "epoch": epoch, "pack_size": self.ctx.seeds,
                "members_training": len(now), "seed_epochs": epoch * self.ctx.seeds,
                "trial_status": "running",
                **{f"mean_{m}": means[m] for m in self.ctx.metrics if m in means}}

    def __call__(self, epoch: int, folder: str | None) -> None:
        now = {m: x for m, x in self.latest.items() if int(x["epoch"]) == epoch}
        if not now:
            return  # every member stopped this epoch: the trial ends without a report
        self.last = self.payload(epoch, now)
        if epoch >= self.epochs:
            return  # the trial reports its last epoch itself, after the models are logged
        if self.clock.ship(epoch, last=False):
            with self.costs.timed("checkpoint"):
                kept = self.folder.checkpoint()
            with self.costs.timed("report_checkpoint"):
                rt.report(self.last, checkpoint=kept)
        else:
            with self.costs.timed("report"):
                rt.report(self.last)
        if self.folder.outbox.disk_full:
            raise StorageError(f"the MLflow store {self.ctx.tracking_uri} cannot be "
                               f"written: {self.folder.outbox.disk_full}")


def fit_seeds_fused(ctx: TrialContext, folder: TrialFolder, flat: dict, common: dict,
                    clock: CheckpointClock, costs: Costs, make_sink, trial_id: str):
    """Every seed of the trial as one pack: (one RunResult per seed, the reporter,
    None), or (None, None, why) when the trainer refused the configuration (the
    first seed's run is then closed as failed). `make_sink(i, cfg_flat, fallback)` is the
    trial's MLflow sink for seed i."""
    configs = [{**flat, "seed": ctx.base_seed + i} for i in range(ctx.seeds)]

    def reporter(said: dict) -> PackReporter:
        return PackReporter(ctx, folder, said, Config.from_flat(flat).optim.epochs, clock,
                            costs)
    return fit_fused(ctx, folder, configs, common, costs, make_sink, reporter, trial_id,
                     f"the pack of {ctx.seeds} seeds", speaks=(0,))


def fit_fused(ctx: TrialContext, folder: TrialFolder, configs: list[dict], common: dict,
              costs: Costs, make_sink, make_reporter, trial_id: str, what: str,
              speaks: tuple[int, ...]):
    """Members `configs` (flat, seeds set) as one pack, each into its MLflow sink
    (`make_sink(m, flat, fallback)`), the pack reported by `make_reporter(said)`
    (`said`: what every report carries): (results, reporter, None), or (None,
    None, why) when the trainer refused them, the runs of members `speaks` then
    closed as failed with why. An unreadable pack checkpoint (`what`) is dropped
    and the pack starts over."""
    members = [Config.from_flat(c) for c in configs]
    fallback = folder.fallback
    while True:
        sinks = [make_sink(i, c, fallback) for i, c in enumerate(configs)]
        for sink in sinks:
            sink.hold_end = True  # every member's end goes with the trial's summary
            sink.tags["pack_size"] = len(configs)
        said = {**common, **({"checkpoint_fallback": fallback} if fallback else {})}
        reporter = make_reporter(said)
        callbacks = [[Timed(s, costs, "mlflow"), MemberTap(reporter.latest, i)]
                     for i, s in enumerate(sinks)]
        try:
            with costs.timed("fit"):
                results = fit_pack(members, callbacks,
                                   checkpoint_dir=str(folder.trainer_dir)
                                   if ctx.checkpoint_every > 0 else None,
                                   save_due=reporter.clock.due, after_epoch=reporter)
            return results, reporter, None
        except CheckpointError as e:
            if not folder.trainer_dir.exists():
                raise
            fallback = folder.start_over(what, e)
            print(f"[checkpoint] trial {trial_id}: {fallback}", flush=True)
        except (ConfigError, DataError) as e:
            # refused before training: the first seed's run says why, as when the
            # seeds run in turn (the others never started)
            for i, (sink, c) in enumerate(zip(sinks, configs)):
                if i in speaks and not sink.opened:
                    sink.open(dict(c))
                if sink.opened:
                    sink.close("failed", str(e))
            return None, None, str(e)
        except BaseException as e:
            for sink in sinks:
                if sink.opened and sink.status is None:
                    sink.close(*interrupted(e))
            raise
