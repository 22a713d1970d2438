"""`sal-ray train` (one run, with a summary) and `sal-ray params` (parameter
counts of a configuration, without building it)."""

from __future__ import annotations

from ..config import validate
from ..data import DATASETS_INFO
from ..models import Architecture, param_counts
from ..trainer import train
from .options import add_config_options, check_folder, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train one configuration and print a summary")
    add_config_options(p)
    p.add_argument("--checkpoint-dir", default=None,
                   help="write a checkpoint after every epoch; resume from one found there")
    p.set_defaults(func=cmd_train)
    p = subparsers.add_parser("params", help="parameter counts of a configuration, "
                              "without building it")
    add_config_options(p)
    p.set_defaults(func=cmd_params)


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


def cmd_train(args) -> int:
    cfg = validate(config_from_args(args))  # options first, then the folder, then work
    if args.checkpoint_dir is not None:
        check_folder("checkpoint_dir", args.checkpoint_dir)
    result = train(cfg, verbose=True, checkpoint_dir=args.checkpoint_dir)
    print("\n" + summary_table(result))
    return 0 if result.status == "completed" else 3


def cmd_params(args) -> int:
    cfg = validate(config_from_args(args))
    info = DATASETS_INFO[cfg.data.dataset]
    validate(cfg, info.n_classes)  # the router checks that need the class count
    arch = Architecture.from_config(cfg, info.input_dim, info.n_classes)
    counts = param_counts(arch, cfg.model.method)
    for k, v in counts.as_dict().items():
        print(f"{k:<14} {v:>16,}")
    print(f"{'fp32 bytes':<14} {4 * (counts.total + counts.router + counts.fixed):>16,}")
    return 0
