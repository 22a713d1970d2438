"""What the study scripts in sweeps/ share: their options, how they refuse bad input,
and how a parsed command line becomes one `tune()` call.

Here, not in sweeps/: `ray submit` copies only the script itself to the head node,
where the installed package provides this.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from typing import Any, Callable, Sequence

from ..config import DATASETS, ConfigError
from ..data import DataError
from ..tracking.store import redact
from . import checks, record
from .driver import tune
from .storage import StorageError, newest_sweep, storage_path

# Flags of this session only: never stored with a sweep, never restored.
SESSION_FLAGS = ("resume", "dry_run", "verbose", "address", "storage_path", "name",
                 "study_datasets", "study_seeds", "flag_defaults", "progress_every_s")


def script_parser(doc: str, *, datasets: Sequence[str], seeds: int) -> argparse.ArgumentParser:
    """The options every study script takes (its docstring is the help text)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                    help=f"datasets, or 'all' (default: {' '.join(datasets)})")
    ap.set_defaults(study_datasets=list(datasets))
    ap.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                    help="a subset of the study's methods")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials per (dataset, method): a search's budget, or the first N "
                         "configurations of a grid (default: the study's)")
    ap.add_argument("--seeds", type=int, default=None,
                    help=f"seeds per configuration (default {seeds})")
    ap.set_defaults(study_seeds=seeds)
    ap.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    ap.add_argument("--quick", action="store_true",
                    help="a few minutes on a laptop CPU, on Digits (a smoke run, not the "
                         "protocol); options given on the command line still win")
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default sal-STUDY)")
    ap.add_argument("--name", default=None, help="sweep name (parent run, tag 'sweep')")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    ap.add_argument("--address", default=None,
                    help="Ray cluster (default $RAY_ADDRESS, a `ray start` cluster here, or local)")
    ap.add_argument("--cpus-per-trial", type=float, default=None)
    ap.add_argument("--gpus-per-trial", type=float, default=None,
                    help="default: the study's share on a cluster, 0 locally")
    ap.add_argument("--workers-per-trial", type=int, default=None,
                    help="train every seed on this many Ray Train workers (each with "
                         "--cpus-per-trial CPUs and --gpus-per-trial GPUs); default 1")
    ap.add_argument("--layout", choices=["data", "layer"], default="data",
                    help="with workers: 'layer' puts SAL's layers on different workers "
                         "(the other methods stay data parallel); default data")
    ap.add_argument("--max-concurrent", type=int, default=None)
    ap.add_argument("--storage-path", default=None,
                    help="where Tune keeps trial checkpoints (default ./runs/ray)")
    ap.add_argument("--resume", nargs="?", const=True, default=None, metavar="NAME",
                    help="continue an interrupted sweep of this study (default: the newest "
                         "one in --storage-path), with the options it started with")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; start nothing")
    ap.add_argument("-v", "--verbose", type=int, default=1, help="0 quiet, 1 lines, 2 Tune's own")
    ap.add_argument("--progress-every-s", type=float, default=15.0, metavar="S",
                    help="while trials run, print each one's epoch and the sweep's ETA this "
                         "often (default 15; 0: only as trials end)")
    return ap


def study_args(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parse a study script's options and refuse, naming the flag, values the sweep
    would otherwise replace by a default or misread."""
    args = parser.parse_args(argv)
    args.flag_defaults = vars(parser.parse_args([]))  # what "not given" looks like
    cpus, gpus = args.cpus_per_trial, args.gpus_per_trial
    if cpus is not None and not (math.isfinite(cpus) and cpus > 0):
        raise ConfigError("cpus_per_trial", f"must be a number > 0; got {cpus}")
    if gpus is not None and not (math.isfinite(gpus) and gpus >= 0):
        raise ConfigError("gpus_per_trial", f"must be a number >= 0; got {gpus}")
    if gpus is not None and gpus > 1 and not gpus.is_integer():
        raise ConfigError("gpus_per_trial", f"above 1 must be whole; got {gpus}")
    if args.experiment is not None:
        checks.experiment_name(args.experiment)
    if args.name is not None:
        checks.sweep_name(args.name)
    if isinstance(args.resume, str):
        checks.sweep_name(args.resume, "resume")
    workers = getattr(args, "workers_per_trial", None)
    if workers is not None and workers < 1:
        raise ConfigError("workers_per_trial", f"must be an integer >= 1; got {workers}")
    if args.verbose not in (0, 1, 2):
        raise ConfigError("verbose", f"must be 0, 1 or 2; got {args.verbose}")
    return args


def run_main(main: Callable, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run a study script's `main(argv)` as a command: bad input (ConfigError, or
    data that is not on disk) prints one line and returns 2, with no traceback,
    before anything starts; a full or failing disk one line and 1; Ctrl-C returns
    130. Anything else is a bug: it raises."""
    prog = prog or os.path.basename(sys.argv[0] or "sal-ray")
    try:
        main(argv)
    except (ConfigError, DataError) as err:
        print(f"{prog}: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except StorageError as err:  # a full or failing disk stopped it: no traceback either
        print(f"{prog}: error: {redact(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def script_flags(args) -> dict[str, Any]:
    """The flags a sweep is stored with (to be restored on --resume)."""
    return {k: v for k, v in vars(args).items() if k not in SESSION_FLAGS}


def restore_flags(args, name: str):
    """--resume NAME: every flag left out takes the value the sweep started with; one
    given again with another value is refused, by name. A sweep stored without its
    flags (an older version, or started from Python) resumes with the flags given."""
    stored = record.load(storage_path(args.storage_path), name)
    if stored is None or not stored.get("script"):
        return args
    defaults = getattr(args, "flag_defaults", {})
    given = {k: getattr(args, k, None) for k in stored["script"]}
    restored = record.restore(name, stored["script"], given, defaults, flag="--{}")
    for k, v in restored.items():
        setattr(args, k, v)
    return args


def _on_cluster(address: str | None) -> bool:
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    # Ray loads here (it knows whether `ray start` runs a cluster on this machine),
    # for the scripts' resource defaults; `tune(dry_run=True)` itself never loads it
    from .runtime import on_cluster
    return on_cluster(None)


def run_script(args, *, study: str, methods: Sequence[str], space: dict[str, Any],
               fixed: dict[str, Any], sampler: Any = "grid", scheduler: Any = None,
               trials: int | None = None, quick: dict[str, Any] | None = None,
               gpus: float = 0.0, cpus: float = 1.0,
               by: Sequence[str] | None = None, method_spaces: dict | None = None,
               metric: Any = "val_acc", mode: Any = "max"):
    """Run one study from its parsed options; prints the protocol table (`by`) after
    the comparison table (both also go to the sweep's parent run). `quick` overrides
    apply with --quick: datasets, seeds, trials, fixed, space, scheduler; options
    given on the command line (--datasets, --seeds, --trials, --epochs) win over
    both. On a cluster each trial takes `gpus` GPUs."""
    resume = args.resume is not None
    if resume:
        prefix = f"{study}{'-quick' if args.quick else ''}-"
        name = args.resume if isinstance(args.resume, str) else \
            args.name or newest_sweep(storage_path(args.storage_path), prefix)
        args = restore_flags(args, name)
    datasets, seeds = list(args.study_datasets), args.study_seeds
    space, fixed = dict(space), dict(fixed)
    if args.quick:
        q = quick or {}
        datasets = list(q.get("datasets", ["digits"]))
        seeds = q.get("seeds", seeds)
        trials = q.get("trials", trials)
        fixed.update(q.get("fixed", {}))
        space.update(q.get("space", {}))
        scheduler = q.get("scheduler", scheduler)
    if args.datasets is not None:
        datasets = list(DATASETS) if args.datasets == ["all"] else list(args.datasets)
    if args.seeds is not None:
        seeds = args.seeds
    if args.trials is not None:
        trials = args.trials
    if args.epochs is not None:
        fixed["epochs"] = args.epochs
    on_cluster = _on_cluster(args.address)
    resources = {"cpu": args.cpus_per_trial if args.cpus_per_trial is not None
                 else (2.0 * cpus if on_cluster and gpus else cpus),
                 "gpu": args.gpus_per_trial if args.gpus_per_trial is not None
                 else (gpus if on_cluster else 0.0)}
    if not resume:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = args.name or f"{study}{'-quick' if args.quick else ''}-{stamp}"
    workers = getattr(args, "workers_per_trial", None)
    if workers is not None:
        resources["workers"] = workers
    layout = {"sal": "layer"} if getattr(args, "layout", "data") == "layer" else "data"
    if isinstance(layout, dict) and "sal" not in (args.methods or list(methods)):
        layout = "layer"  # no SAL here: let the check name the method it refuses
    return tune(datasets, args.methods or list(methods), space, fixed=fixed,
                method_spaces=method_spaces, trials=trials, sampler=sampler,
                scheduler=scheduler, seeds=seeds, resources=resources, metric=metric, mode=mode,
                experiment=args.experiment if args.experiment is not None else f"sal-{study}",
                name=name, tracking_uri=args.tracking_uri, address=args.address,
                max_concurrent=args.max_concurrent, verbose=args.verbose, table_by=by,
                dry_run=args.dry_run, storage_path=args.storage_path, resume=resume,
                layout=layout, script=script_flags(args),
                progress_every_s=args.progress_every_s)
