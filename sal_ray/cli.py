"""`sal-ray`: the command line; also how the study scripts in sweeps/ refuse bad input.

    sal-ray train --method sal --dataset digits --n-areas 16 --epochs 25
    sal-ray params --arch residual --depth 64 --width 4096 --n-areas 4 --routed hidden
    sal-ray data list | data prepare NAME...
    sal-ray report ... | ui ...

Bad input never shows a stack trace: every command checks its input before any
work and exits with status 2 and one line, `PROG: error: option 'NAME': ...`.
The package imports nothing from here; sweeps/*.py use `study_args` and `run_main`.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .config import DEFAULTS, HELP, Config, ConfigError, option_type, optional, validate


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One flag per trainer option, named after it (n_areas -> --n-areas)."""
    for name, default in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        kind = option_type(name)
        shown = "auto" if default is None else default
        if kind == "bool":
            parser.add_argument(flag, dest=name, default=None, metavar="{true,false}",
                                help=f"{HELP[name]} (default: {shown})")
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=kind.upper(),
                                help=f"{HELP[name]} (default: {shown})"
                                + ("; 'none' for auto" if optional(name) else ""))


def config_from_args(args: argparse.Namespace) -> Config:
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    return Config.from_flat(given)


def summary_table(result) -> str:
    f, c = result.final, result.config
    rows = [("method", c["method"]), ("dataset", c["dataset"]), ("status", result.status),
            ("epochs run", f"{len(result.history)}/{c['epochs']}")]
    if f:
        best = max(m["val_acc"] for m in result.history)
        rows += [("final train loss", f"{f['train_loss']:.4f}"),
                 ("final val loss", f"{f['val_loss']:.4f}"),
                 ("final val acc", f"{100 * f['val_acc']:.2f}%"),
                 ("best val acc", f"{100 * best:.2f}%"),
                 ("samples/s (last epoch)", f"{f['samples_per_s']:,.0f}"),
                 ("wall time", f"{f['wall_time_s']:.1f} s")]
        rows += [(f"areas used, layer {k.split('.l')[1]}", f"{int(v)}/{c['n_areas']}")
                 for k, v in f.items() if k.startswith("areas_used.")]
    rows += [("params active / total", f"{c['params_active']:,} / {c['params_total']:,}"),
             ("params router / fixed", f"{c['params_router']:,} / {c['params_fixed']:,}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def check_folder(option: str, path: str) -> None:
    """Raise ConfigError unless `path` is, or can be created as, a writable folder.
    Tried with a temporary folder that is removed at once: nothing is left behind."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(option, f"{path} exists and is not a folder")
    probe_in = p if p.is_dir() else p.absolute().parent
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise ConfigError(option, f"cannot create {path}: {probe_in} is not a folder")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".sal-ray-probe-", dir=probe_in))
    except OSError as e:
        raise ConfigError(option, f"cannot write {path}: {e.strerror or e} in {probe_in}") \
            from None


def cmd_train(args) -> int:
    from .train import train
    cfg = validate(config_from_args(args))  # options first, then the folder, then work
    if args.checkpoint_dir is not None:
        check_folder("checkpoint_dir", args.checkpoint_dir)
    result = train(cfg, verbose=True, checkpoint_dir=args.checkpoint_dir)
    print("\n" + summary_table(result))
    return 0 if result.status == "completed" else 3


def cmd_params(args) -> int:
    from .config import validate
    from .data import DATASETS_INFO
    from .models import Architecture, param_counts
    cfg = validate(config_from_args(args))
    info = DATASETS_INFO[cfg.data.dataset]
    validate(cfg, info.n_classes)  # the router checks that need the class count
    arch = Architecture.from_config(cfg, info.input_dim, info.n_classes)
    counts = param_counts(arch, cfg.model.method)
    for k, v in counts.as_dict().items():
        print(f"{k:<14} {v:>16,}")
    print(f"{'fp32 bytes':<14} {4 * (counts.total + counts.router + counts.fixed):>16,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sal-ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one configuration and print a summary")
    add_config_options(p)
    p.add_argument("--checkpoint-dir", default=None,
                   help="write a checkpoint after every epoch; resume from one found there")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("params", help="parameter counts of a configuration, without building it")
    add_config_options(p)
    p.set_defaults(func=cmd_params)
    for module in ("sal_ray.data.cli", "sal_ray.report_cli"):
        # their own heavy imports (mlflow, matplotlib) wait until a command runs
        importlib.import_module(module).register(sub)
    return parser


# ---- the study scripts (sweeps/*.py) --------------------------------------------------

def study_args(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parse a study script's options (`sweep.script_parser`) and refuse, naming the
    flag, values the sweep would otherwise replace by a default or misread."""
    args = parser.parse_args(argv)
    cpus, gpus = args.cpus_per_trial, args.gpus_per_trial
    if cpus is not None and not (math.isfinite(cpus) and cpus > 0):
        raise ConfigError("cpus_per_trial", f"must be a number > 0; got {cpus}")
    if gpus is not None and not (math.isfinite(gpus) and gpus >= 0):
        raise ConfigError("gpus_per_trial", f"must be a number >= 0; got {gpus}")
    if gpus is not None and gpus > 1 and not gpus.is_integer():
        raise ConfigError("gpus_per_trial", f"above 1 must be whole; got {gpus}")
    if args.experiment is not None and not args.experiment.strip():
        raise ConfigError("experiment", f"must be a non-empty name; got {args.experiment!r}")
    if args.name is not None and (not args.name.strip() or "'" in args.name):
        raise ConfigError("name", f"must be a non-empty name without quotes; got {args.name!r}")
    workers = getattr(args, "workers_per_trial", None)
    if workers is not None and workers < 1:
        raise ConfigError("workers_per_trial", f"must be an integer >= 1; got {workers}")
    if args.verbose not in (0, 1, 2):
        raise ConfigError("verbose", f"must be 0, 1 or 2; got {args.verbose}")
    return args


def run_main(main, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run a study script's `main(argv)` as a command: bad input (ConfigError, or
    data that is not on disk) prints one line and returns 2, with no traceback,
    before anything starts; Ctrl-C returns 130. Anything else is a bug: it raises."""
    from .data import DataError
    prog = prog or os.path.basename(sys.argv[0] or "sal-ray")
    try:
        main(argv)
    except (ConfigError, DataError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as err:
        # ConfigError and DataError name the option or dataset; no stack trace for bad input
        print(f"sal-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sal-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
