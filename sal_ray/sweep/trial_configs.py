"""A Tune trial of several configurations (`fuse_configs` > 1): configurations of
one shape that differ only in per-member scalars (lr, lr_sel, diverge_loss),
every seed of each, trained as one stacked model (`sal_ray.pack.fit_pack`).

Each configuration is a member of the sweep as if it had its own trial: its id
is `<tune trial id>-c<j>` (the `trial` tag of its seed runs, its row in the
trials table), its seed runs have the same names, tags and metrics as a trial's
(`trial_number` `<n>.<j>`), and it gets its own summary (`trial_*` on its runs)
and status. Tune hears one report per epoch for the whole trial, with each
configuration's running means under `c<j>/` (`mean_<metric>` over its seeds
still training), which the searcher hands to each configuration's own Optuna
trial (`searcher.member_result`). A configuration whose seed diverges ends
diverged; the others train on to the end. Under ASHA, each configuration is
stopped on its own (sweep/stops.py): its seeds stop in the pack, and their runs
end stopped, with what they had reached.
"""

from __future__ import annotations

from ray import tune as rt

from ..config import Config
from .costs import CheckpointClock, Costs
from .stops import stopped_configs
from .trial_pack import PackReporter, fit_fused, pack_means
from .trial_runs import keep_seed, log_trial_summary, mark_trial, penalty, seed_sink
from .trial_state import TrialContext, TrialFolder, config_key, run_key, trial_summary

# Per configuration, what each epoch's report carries beside its objectives.
SHOWN = ("val_acc", "val_loss", "train_acc", "train_loss")


class ConfigsReporter(PackReporter):
    """One Tune report per epoch: every configuration's means over its seeds
    (`c<j>/...`); the trial's own `mean_<metric>` is its best configuration's."""

    def __init__(self, ctx: TrialContext, folder: TrialFolder, common: dict, epochs: int,
                 clock: CheckpointClock, costs: Costs, n_configs: int, trial_id: str):
        super().__init__(ctx, folder, common, epochs, clock, costs)
        self.n_configs, self.trial_id = n_configs, trial_id
        self.means: dict[int, dict] = {}  # configuration -> its last mean_<metric>s
        self.stopped: set[int] = set()    # configurations ASHA stopped

    def __call__(self, epoch: int, folder: str | None):
        """Report the epoch; then the members of every configuration ASHA has
        stopped since (sweep/stops.py) stop, as (member, why) for fit_pack."""
        super().__call__(epoch, folder)
        if not self.ctx.config_stops or epoch >= self.epochs:
            return []
        S, out = self.ctx.seeds, []
        for j in stopped_configs(self.ctx.sweep, self.trial_id):
            if j not in self.stopped:
                self.stopped.add(j)
                why = f"stopped by the scheduler (ASHA, per configuration) after epoch {epoch}"
                out += [(m, why) for m in range(j * S, (j + 1) * S)]
        return out

    def payload(self, epoch: int, now: dict[int, dict]) -> dict:
        S, out = self.ctx.seeds, {}
        best = {}
        for j in range(self.n_configs):
            mine = [now[m] for m in range(j * S, (j + 1) * S) if m in now]
            if not mine:
                continue
            means = pack_means(mine)
            out.update({f"c{j}/{k}": means[k] for k in (*SHOWN, *self.ctx.metrics)
                        if k in means})
            self.means[j] = {f"mean_{m}": means[m] for m in self.ctx.metrics if m in means}
            out.update({f"c{j}/{k}": v for k, v in self.means[j].items()})
            out[f"c{j}/members_training"] = len(mine)
            for m, mode in zip(self.ctx.metrics, self.ctx.modes):
                if m in means:
                    pick = max if mode == "max" else min
                    best[m] = pick(best.get(m, means[m]), means[m])
        overall = pack_means(list(now.values()))
        return {**overall, **self.common, **out, "epoch": epoch, "pack_size": self.n_configs * S,
                "pack_configs": self.n_configs, "members_training": len(now),
                "seed_epochs": epoch * S, "trial_status": "running",
                **{f"mean_{m}": v for m, v in best.items()}}


def run_configs(config: dict, ctx: TrialContext, folder: TrialFolder, trial_id: str,
                costs: Costs, number: str | None = None) -> None:
    """The Tune trial `config` = {dataset, method, configs: [params, ...]}: every
    configuration's seeds as one pack, from its last checkpoint if Tune restarted it."""
    dataset, method = config["dataset"], config["method"]
    study = f"{dataset}/{method}"
    common = {"dataset": dataset, "method": method}
    flats = [{**ctx.fixed[study], **params} for params in config["configs"]]
    K, S = len(flats), ctx.seeds
    ids = [f"{trial_id}-c{j}" for j in range(K)]
    numbers = [f"{number}.{j}" if number is not None else None for j in range(K)]
    keys = [[run_key(ctx.sweep, ids[j], ctx.base_seed + i) for i in range(S)] for j in range(K)]
    cfg_keys = [config_key(f) for f in flats]
    members = [{**flats[m // S], "seed": ctx.base_seed + m % S} for m in range(K * S)]
    clock = CheckpointClock(ctx.checkpoint_every, ctx.checkpoint_every_s)

    def make_sink(m: int, cfg_flat: dict, fallback: str):
        j, i = divmod(m, S)
        sink = seed_sink(ctx, folder, ids[j], study, cfg_flat, cfg_keys[j], i, keys[j][i],
                         fallback, numbers[j])
        sink.tags["pack_configs"] = K
        return sink

    def reporter(said: dict) -> ConfigsReporter:
        return ConfigsReporter(ctx, folder, said, Config.from_flat(members[0]).optim.epochs,
                               clock, costs, K, trial_id)

    results, rep, why = fit_fused(ctx, folder, members, common, costs, make_sink, reporter,
                                  trial_id, f"the pack of {K} configurations x {S} seeds",
                                  speaks=tuple(j * S for j in range(K)))

    def run_ids(j: int) -> str:
        return ",".join(folder.outbox.run_ids.get(k, "") for k in keys[j])

    if why is not None:  # the trainer refused them: every configuration failed
        mark_trial(folder, [k for mine in keys for k in mine], "failed")
        rt.report({**common, "trial_status": "failed", "message": why[:500],
                   **{f"c{j}/trial_status": "failed" for j in range(K)},
                   **{f"c{j}/mlflow_run_ids": run_ids(j) for j in range(K)}},
                  checkpoint=folder.checkpoint())
        return
    ends, finals, weights = {}, {}, {}
    for j in range(K):
        mine = results[j * S:(j + 1) * S]
        bad = next(((i, r) for i, r in enumerate(mine) if r.status != "completed"), None)
        if bad is not None:  # its other seeds trained on: their runs are whole
            i, r = bad
            mark_trial(folder, keys[j], r.status, deliver=False)
            ends[j] = {"trial_status": r.status,
                       "message": f"seed {ctx.base_seed + i}: {r.message}"[:500],
                       **{f"mean_{m}": penalty(mo) for m, mo in zip(ctx.metrics, ctx.modes)}}
            ends[j]["seed_epochs"] = sum(len(x.history) for x in mine)  # its own, not the trial's
            if r.status == "stopped":  # by ASHA, all its seeds: what it had reached
                ends[j].update(message=r.message, **rep.means.get(j, {}))
            continue
        saved = len(folder.weights)
        for i, r in enumerate(mine):
            keep_seed(ctx, folder, r, ctx.base_seed + i, costs, name=f"c{j}_s{ctx.base_seed + i}")
        finals[j], weights[j] = trial_summary(folder.prior[-S:], ctx.metrics), \
            folder.weights[saved:]
        ends[j] = {**finals[j], "trial_status": "completed"}
    with costs.timed("summary"):
        log_summaries(ctx, folder, keys, finals, weights, common)
        folder.outbox.deliver(force=True)
    last = rep.last or {}
    with costs.timed("checkpoint"):
        kept = folder.final_checkpoint(clock)
    said = {f"c{j}/{k}": v for j, end in ends.items() for k, v in end.items()}
    said.update({f"c{j}/mlflow_run_ids": run_ids(j) for j in range(K)})
    rt.report({**last, **common, **said, "trial_status": "completed",
               "mlflow_run_ids": ",".join(run_ids(j) for j in range(K)), **costs.report()},
              checkpoint=kept)


def log_summaries(ctx: TrialContext, folder: TrialFolder, keys: list[list[str]],
                  finals: dict[int, dict], weights: dict[int, list], common: dict) -> None:
    """Each completed configuration's summary on its seed runs. Its weights, with
    log_model 'best', only for the trial's best configuration (the others'
    summaries are not in the store yet, so the store could not rank them)."""
    m0, sign = ctx.metrics[0], 1 if ctx.modes[0] == "max" else -1
    best = max(finals, key=lambda j: sign * finals[j][f"mean_{m0}"], default=None)
    for j, final in sorted(finals.items()):
        kept = weights[j] if ctx.log_model != "best" or j == best else []
        log_trial_summary(ctx, folder, keys[j], final, common, weights=kept)
