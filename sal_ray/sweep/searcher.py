"""The searcher: one Optuna study per (dataset, method), behind one Ray `Searcher`.

It hands out the studies' trials round-robin, so every method gets the same
budget, the studies progress at the same pace, and the workers never idle at the
tail of one study while another waits.

Optuna hears COMPLETE with the mean over seeds; PRUNED for a trial that ASHA
stopped or that diverged (TPE ranks pruned trials below every complete one,
without inventing a value); FAIL for a configuration the trainer rejected or a
crash. (Ray's own OptunaSearch would tell a stopped trial COMPLETE with its
partial value: docs/engines.md.)
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from .plan import Plan
from .space import Choice, Float, Spec
from .trial_state import trial_status

STATES = {"completed": TrialState.COMPLETE, "diverged": TrialState.PRUNED,
          "stopped": TrialState.PRUNED}


def distribution(spec: Spec):
    if isinstance(spec, Choice):
        return CategoricalDistribution(spec.values)
    if isinstance(spec, Float):
        return FloatDistribution(spec.low, spec.high, log=spec.log)
    return IntDistribution(spec.low, spec.high, log=spec.log)


def optuna_sampler(sampler, study_index: int, budget: int, base_seed: int):
    """A fresh sampler per study (studies must not share a sampler's state)."""
    seed = base_seed * 1000 + study_index
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return copy.deepcopy(sampler)
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


class StudySearcher(Searcher):
    """A Ray Searcher over one Optuna study per study of `plan`."""

    def __init__(self, plan: Plan):
        super().__init__(metric=None, mode=None)
        directions = ["maximize" if m == "max" else "minimize" for m in plan.modes]
        self.metrics = plan.metrics
        self.studies_of_plan = plan.studies
        self.dists = {s.key: {k: distribution(v) for k, v in s.space.items()}
                      for s in plan.studies}
        self.studies: dict[str, optuna.Study] = {}
        for i, s in enumerate(plan.studies):
            study = optuna.create_study(
                directions=directions, study_name=f"{plan.name}/{s.key}",
                sampler=optuna_sampler(plan.sampler, i, s.budget, plan.base_seed))
            for point in s.grid or ():
                study.enqueue_trial(point)
            self.studies[s.key] = study
        self.asked = {s.key: 0 for s in plan.studies}
        self.live: dict[str, Any] = {}   # Tune trial id -> Optuna trial
        self.told: dict[str, str] = {}   # Tune trial id -> status told
        self.steps: dict[str, set] = {}  # Tune trial id -> steps reported to Optuna

    def set_search_properties(self, metric, mode, config, **spec):
        return True  # the space and objectives are ours already

    def suggest(self, trial_id):
        open_studies = [s for s in self.studies_of_plan if self.asked[s.key] < s.budget]
        if not open_studies:
            return Searcher.FINISHED
        study = min(open_studies, key=lambda s: self.asked[s.key])  # round-robin: equal pace
        trial = self.studies[study.key].ask(self.dists[study.key])
        trial.set_user_attr("tune_trial_id", trial_id)
        self.asked[study.key] += 1
        self.live[trial_id] = trial
        return {"dataset": study.dataset, "method": study.method, **trial.params}

    def on_trial_result(self, trial_id, result):
        # intermediate values (single objective only, in Optuna) rank pruned trials
        if len(self.metrics) > 1 or trial_id not in self.live or trial_id in self.told:
            return
        value = result.get(f"mean_{self.metrics[0]}")
        step = result.get("training_iteration")
        if isinstance(value, (int, float)) and math.isfinite(value) and step is not None:
            # a trial restarted from a checkpoint repeats the steps after it
            seen = self.steps.setdefault(trial_id, set())
            if int(step) not in seen:
                seen.add(int(step))
                self.live[trial_id].report(float(value), int(step))

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id not in self.live or trial_id in self.told:
            return
        trial = self.live[trial_id]
        status = trial_status(result, error)
        values = None
        if status == "completed":
            values = [result.get(f"mean_{m}") for m in self.metrics]
            if any(not isinstance(v, (int, float)) or math.isnan(v) for v in values):
                status, values = "crashed", None
        trial.set_user_attr("status", status)
        trial.study.tell(trial, values, state=STATES.get(status, TrialState.FAIL))
        self.told[trial_id] = status

    def save(self, checkpoint_path):
        try:
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.__dict__, f)
        except Exception as e:  # noqa: BLE001
            raise NotImplementedError(f"searcher state not picklable: {e}") from None

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
