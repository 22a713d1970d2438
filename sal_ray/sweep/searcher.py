"""The searcher: one Optuna study per (dataset, method), behind one Ray `Searcher`.

It hands out the studies' trials round-robin, so every method gets the same
budget, the studies progress at the same pace, and the workers never idle at the
tail of one study while another waits.

Optuna hears COMPLETE with the mean over seeds; PRUNED for a trial that ASHA
stopped or that diverged (TPE ranks pruned trials below every complete one,
without inventing a value); FAIL for a configuration the trainer rejected or a
crash. (Ray's own OptunaSearch would tell a stopped trial COMPLETE with its
partial value: docs/engines.md.)

With `fuse_configs` k > 1, one Tune trial carries k configurations of one study
(`{"configs": [params, ...]}`), each its own Optuna trial: the trial reports each
one's objective under `c<j>/` (`trial_configs`), and each Optuna trial hears its
own values, steps and end. Every configuration is a "member", `<tune id>-c<j>`.
Under ASHA, each member's results also go to Ray's ASHA, which stops members
alone (`stops.ConfigASHA`: Tune itself then runs no scheduler).

The studies live in Optuna's RDB storage, one SQLite file per sweep beside Tune's
(storage.optuna_db): `optuna-dashboard sqlite:///...` watches a running sweep, and
a resumed sweep continues them with `optuna.load_study`. A grid's points wait in
its study's queue (`enqueue_trial`), the next `GRID_AHEAD` of them at a time.
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from ..config import ConfigError
from .plan import Plan, Study
from .space import Choice, Float, Spec
from .stops import ConfigASHA
from .trial_state import member_result, trial_status

# How many grid points wait in a study's queue ahead of its asks (the dashboard
# shows them WAITING). Each `ask` reads every waiting trial, so a whole grid
# queued at once made a sweep of N points cost O(N^2): 27 ms per ask at N = 200.
GRID_AHEAD = 16

STATES = {"completed": TrialState.COMPLETE, "diverged": TrialState.PRUNED,
          "stopped": TrialState.PRUNED}


def distribution(spec: Spec):
    if isinstance(spec, Choice):
        return CategoricalDistribution(spec.values)
    if isinstance(spec, Float):
        return FloatDistribution(spec.low, spec.high, log=spec.log)
    return IntDistribution(spec.low, spec.high, log=spec.log)


def optuna_sampler(sampler, study_index: int, budget: int, base_seed: int, restart: int = 0):
    """A fresh sampler per study (studies must not share a sampler's state). A
    resumed study's sampler (`restart`: the trials it holds) draws another random
    stream than the first one, which would propose its first points again."""
    seed = base_seed * 1000 + study_index + 7919 * restart
    if isinstance(sampler, optuna.samplers.BaseSampler):
        fresh = copy.deepcopy(sampler)
        if restart:
            fresh.reseed_rng()
        return fresh
    if callable(sampler):
        return sampler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "tpe":
            # a third of the budget (3 to 10 trials) explores at random first;
            # constant_liar keeps parallel asks from proposing the same point
            return optuna.samplers.TPESampler(n_startup_trials=max(3, min(10, budget // 3)),
                                              multivariate=True, constant_liar=True, seed=seed)
        if sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed,
                                                 population_size=max(4, min(50, budget // 2)))
        return optuna.samplers.RandomSampler(seed=seed)  # random; grid points are enqueued


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the sweep's SQLite file. Only the driver writes;
    optuna-dashboard reads it meanwhile: a writer waits out a reader's lock
    (timeout) instead of failing."""
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def stored_trial(study: optuna.Study, storage: optuna.storages.BaseStorage,
                 number: int) -> optuna.trial.Trial:
    """The Optuna trial `number` of a stored study, to report to and tell (what
    `study.ask()` returned before the driver restarted)."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
    return optuna.trial.Trial(study, trial_id)


class StudySearcher(Searcher):
    """A Ray Searcher over one Optuna study per study of `plan`, kept in Optuna's
    RDB storage at `storage_url` (one SQLite file per sweep: storage.optuna_url).

    What it pickles (Tune's tuner.pkl and its searcher checkpoints) is only which
    Optuna trial each member is, and which members each Tune trial holds: the
    studies themselves are Optuna's, loaded back with `optuna.load_study` on
    resume (`_load`)."""

    def __init__(self, plan: Plan, storage_url: str):
        super().__init__(metric=None, mode=None)
        self.plan, self.storage_url = plan, storage_url
        directions = ["maximize" if m == "max" else "minimize" for m in plan.modes]
        self.rdb = rdb_storage(storage_url)
        self.studies: dict[str, optuna.Study] = {}
        for i, s in enumerate(plan.studies):
            study = optuna.create_study(
                storage=self.rdb, directions=directions, study_name=f"{plan.name}/{s.key}",
                sampler=optuna_sampler(plan.sampler, i, s.budget, plan.base_seed))
            study.set_user_attr("sweep", plan.name)
            self.studies[s.key] = study
        self.queued = {s.key: list(s.grid) for s in plan.studies if s.grid}
        for key in self.queued:
            self._top_up(key, GRID_AHEAD)
        self.known: dict[str, tuple[str, int]] = {}  # member -> (study, trial number)
        self.members: dict[str, list[str]] = {}  # Tune trial id -> its members
        # fused configurations under ASHA: Ray's ASHA decides for each one (stops)
        self.config_asha = ConfigASHA(plan) if plan.asha_per_config else None
        self._index()

    def _index(self) -> None:
        """What the studies say of the Tune trials known: the live Optuna trials,
        what each was told, the steps it has reported."""
        self.dists = {s.key: {k: distribution(v) for k, v in s.space.items()}
                      for s in self.plan.studies}
        self.asked = {s.key: 0 for s in self.plan.studies}
        self.live: dict[str, Any] = {}   # member -> Optuna trial
        self.told: dict[str, str] = {}   # member -> status told
        self.steps: dict[str, set] = {}  # member -> steps reported to Optuna
        stored = {key: {t.number: t for t in study.get_trials(deepcopy=False)}
                  for key, study in self.studies.items()}
        for tid, (key, number) in self.known.items():
            frozen = stored[key][number]
            self.asked[key] += 1
            self.live[tid] = stored_trial(self.studies[key], self.rdb, number)
            self.steps[tid] = set(frozen.intermediate_values)
            if frozen.state.is_finished():
                self.told[tid] = frozen.user_attrs.get("status", frozen.state.name.lower())

    def _top_up(self, key: str, n: int = 1) -> None:
        """Queue the next `n` grid points of study `key` (as many as are left)."""
        for point in self.queued[key][:n]:
            self.studies[key].enqueue_trial(point)
        del self.queued[key][:n]

    def _unqueued(self, spec: Study) -> list[dict]:
        """The points of `spec`'s grid that no trial stored in its study holds yet,
        in grid order. A trial holds the point it was given (where Optuna's own
        `enqueue_trial(..., skip_if_exists=True)` looks), except one told "lost",
        whose point was queued again as a trial of its own. Values compare as the
        study's distributions store them (an lr of 1 is the float 1.0 asked)."""
        dists = {k: distribution(v) for k, v in spec.space.items()}

        def held_key(point: dict) -> str:
            def stored(name, value):
                try:
                    return dists[name].to_internal_repr(value)
                except (KeyError, ValueError, TypeError):
                    return repr(value)
            return repr(sorted((k, stored(k, v)) for k, v in point.items()))

        held = Counter(held_key(t.system_attrs.get("fixed_params", t.params))
                       for t in self.studies[spec.key].get_trials(deepcopy=False)
                       if t.user_attrs.get("status") != "lost")
        left = []
        for point in spec.grid:
            k = held_key(point)
            if held[k] > 0:
                held[k] -= 1
            else:
                left.append(point)
        return left

    def _load(self, known: dict[str, tuple[str, int]],
              members: dict[str, list[str]] | None = None) -> None:
        """Continue the stored studies (`optuna.load_study`, with fresh samplers: a
        sampler is not stored)."""
        db = self.storage_url.removeprefix("sqlite:///")
        if db != self.storage_url and not Path(db).is_file():
            raise ConfigError("resume", f"the Optuna studies of sweep '{self.plan.name}' are "
                              f"not at {db} (moved or deleted?): it cannot be continued")
        self.rdb = rdb_storage(self.storage_url)
        self.studies, self.known = {}, dict(known)
        # (pickled before configurations fused: every Tune trial is its own member)
        self.members = dict(members) if members is not None else {t: [t] for t in known}
        for i, s in enumerate(self.plan.studies):
            name = f"{self.plan.name}/{s.key}"
            held = len(optuna.load_study(study_name=name, storage=self.rdb).get_trials(
                deepcopy=False))
            self.studies[s.key] = optuna.load_study(
                study_name=name, storage=self.rdb,
                sampler=optuna_sampler(self.plan.sampler, i, s.budget, self.plan.base_seed,
                                       restart=held))
        self.queued = {s.key: self._unqueued(s)
                       for s in self.plan.studies if s.grid}
        self._index()
        # Tune unpickles this searcher, then restores its last checkpoint (`restore`):
        # which trials are lost is known only after both, at the next suggest
        self.unreconciled = True

    def _reconcile(self) -> None:
        """A trial Optuna handed out after Tune's last checkpoint is one Tune never
        heard of: it is told FAIL (status "lost") and, in a grid, its point goes back
        in the queue, so the budget and the grid stay whole."""
        self.unreconciled = False
        mine = set(self.known.values())
        for s in self.plan.studies:
            study = self.studies[s.key]
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if (s.key, t.number) not in mine:
                    lost = stored_trial(study, self.rdb, t.number)
                    lost.set_user_attr("status", "lost")
                    study.tell(lost, state=TrialState.FAIL)
                    if s.grid:
                        study.enqueue_trial(t.params)

    def __getstate__(self):
        # Searcher's own state (_metric, _mode), and which trial is which: no study
        return {"plan": self.plan, "storage_url": self.storage_url, "known": dict(self.known),
                "members": dict(self.members), "config_asha": self.config_asha,
                "_metric": self._metric, "_mode": self._mode}

    def __setstate__(self, state):
        if "known" not in state:  # pickled before the studies were stored: they are in it
            self.__dict__.update(state)
            self.plan = state.get("plan") or self.__dict__.get("plan")
            self.__dict__.setdefault("queued", {})  # its grids were queued whole
            return
        known, members = state.pop("known"), state.pop("members", None)
        self.config_asha = None  # pickled before configurations had their own ASHA
        self.__dict__.update(state)
        self._load(known, members)

    def set_search_properties(self, metric, mode, config, **spec):
        return True  # the space and objectives are ours already

    def suggest(self, trial_id):
        if getattr(self, "unreconciled", False):
            self._reconcile()
        open_studies = [s for s in self.plan.studies if self.asked[s.key] < s.budget]
        if not open_studies:
            return Searcher.FINISHED
        study = min(open_studies, key=lambda s: self.asked[s.key])  # round-robin: equal pace
        k = self.plan.fuse_configs
        fused = k > 1
        n = min(k, study.budget - self.asked[study.key])
        mids = [f"{trial_id}-c{j}" for j in range(n)] if fused else [trial_id]
        params = []
        for mid in mids:
            if study.key in self.queued:
                self._top_up(study.key)  # one in, one out: the queue keeps its length
            trial = self.studies[study.key].ask(self.dists[study.key])
            trial.set_user_attr("tune_trial_id", mid)
            self.asked[study.key] += 1
            self.live[mid] = trial
            self.known[mid] = (study.key, trial.number)
            params.append(trial.params)
            if self.config_asha is not None:
                self.config_asha.add(mid)
        self.members[trial_id] = mids
        common = {"dataset": study.dataset, "method": study.method}
        return {**common, "configs": params} if fused else {**common, **params[0]}

    def _member_results(self, trial_id, result):
        """(member, its result) for each configuration of Tune trial `trial_id`: a
        fused trial's `c<j>/` keys over the trial's own."""
        mids = self.members.get(trial_id, [trial_id])
        if len(mids) == 1 and mids[0] == trial_id:
            return [(trial_id, result)]
        return [(mid, member_result(result, j)) for j, mid in enumerate(mids)]

    def on_trial_result(self, trial_id, result):
        members = [(j, mid, r) for j, (mid, r) in enumerate(self._member_results(trial_id, result))
                   if mid in self.live and mid not in self.told]
        if self.config_asha is not None:
            for j, mid, r in members:
                if f"mean_{self.plan.metrics[0]}" in r:  # it trained this epoch
                    self.config_asha.result(trial_id, j, mid, r)
        # intermediate values (single objective only, in Optuna) rank pruned trials
        if len(self.plan.metrics) > 1:
            return
        for _, mid, r in members:
            value = r.get(f"mean_{self.plan.metrics[0]}")
            step = r.get("seed_epochs", r.get("training_iteration"))
            if isinstance(value, (int, float)) and math.isfinite(value) and step is not None:
                # a trial restarted from a checkpoint repeats the steps after it
                seen = self.steps.setdefault(mid, set())
                if int(step) not in seen:
                    seen.add(int(step))
                    self.live[mid].report(float(value), int(step))

    def on_trial_complete(self, trial_id, result=None, error=False):
        for mid, r in self._member_results(trial_id, result or {}):
            if mid not in self.live or mid in self.told:
                continue
            trial = self.live[mid]
            status = trial_status(r, error)
            values = None
            if status == "completed":
                values = [r.get(f"mean_{m}") for m in self.plan.metrics]
                if any(not isinstance(v, (int, float)) or math.isnan(v) for v in values):
                    status, values = "crashed", None
            trial.set_user_attr("status", status)
            trial.study.tell(trial, values, state=STATES.get(status, TrialState.FAIL))
            self.told[mid] = status
            if self.config_asha is not None:
                self.config_asha.complete(mid, r, status)

    def save(self, checkpoint_path):
        try:
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.__getstate__(), f)
        except Exception as e:  # noqa: BLE001 - e.g. a sampler given as a lambda
            raise NotImplementedError(f"searcher state not picklable: {e}") from None

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
