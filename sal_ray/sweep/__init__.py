"""Sweeps: Ray Tune runs the trials, Optuna proposes them, MLflow records them.

One module per stage (a trial's path: driver -> execute -> searcher -> trial):

    space       search-space entries (loguniform, randint, choice, ...)
    checks      every input check made before Ray starts
    plan        the studies, one per (dataset, method), validated and laid out
    options     where and how a sweep runs (RunOptions)
    storage     Tune's sweep folders
    driver      tune(): checks, plans, then hands over to execute
    runtime     starting the store and Ray; quieting the engines
    ray_compat  the only Ray internals used, each with why
    placement   a trial no node can hold, refused before any run
    signals     SIGTERM and SIGHUP end a sweep as Ctrl-C does
    head        how to open the MLflow UI from a laptop when the driver is on a head
    execute     the Tuner (fresh or restored) and the end of a sweep
    searcher    one Optuna study per (dataset, method) behind one Ray Searcher
    trial       what runs inside a trial; trial_state: its context and folder
    console     the driver's Tune callback: what each trial did, printed
    parent      the sweep's MLflow parent run
    delivery    writes a tracking outage left pending, delivered at the end
    results     SweepResults: the trials table, best and Pareto front
    scripts     what sweeps/*.py share

`import sal_ray.sweep` and `tune(..., dry_run=True)` load no engine: Ray, Optuna
and MLflow load in `driver.tune` once the dry run is past.
"""

from .driver import tune
from .plan import DEFAULT_TRIALS, Plan, Study, plan
from .scripts import run_main, run_script, script_parser, study_args
from .space import DEFAULT_SPACE, Choice, Float, Int, choice, loguniform, randint, uniform

__all__ = ["tune", "plan", "Plan", "Study", "DEFAULT_SPACE", "DEFAULT_TRIALS", "Choice",
           "Float", "Int", "choice", "loguniform", "randint", "uniform", "run_main",
           "run_script", "script_parser", "study_args", "SweepResults"]


def __getattr__(name):
    if name == "SweepResults":  # pandas and the engines load with it
        from .results import SweepResults
        return SweepResults
    raise AttributeError(name)
