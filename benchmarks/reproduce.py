"""The paper's Convergence protocol on one dataset (its Tables 2 and 3), beside
that dataset's published row: BP baseline and SAL-1/2/4/8/16, 5 seeds,
25 epochs, lr 1e-4, batch 16, two layers d_in -> 256 -> C (ReLU), SAL routed on
the first layer.

    python benchmarks/reproduce.py                       # Digits, the protocol, defaults
    python benchmarks/reproduce.py --dataset semeion     # any dataset on disk
    python benchmarks/reproduce.py --set output_local=false --set lr_sel=1e-3
    python benchmarks/reproduce.py --seeds 2 --epochs 5  # quicker

Every `--set` is a trainer option (see `sal-ray train --help`) applied to all
SAL runs, `--set-all` one applied to every run, so each ablation in
docs/reproduction.md is one command line. The dataset, seeds, epochs and
columns have their own flags and cannot be `--set`. The dataset's files must
be on disk (`sal-ray data list`), else the script stops before any run; the
data root and download are the trainer options `data_root` and `download`
(`--set-all data_root=PATH`). The published row comes from sal_ray/paper.py.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sal_ray.config import DATASETS, Config, ConfigError, validate  # noqa: E402
from sal_ray.data import DATASETS_INFO, DataError, check_available, load  # noqa: E402
from sal_ray.data.loading import data_root  # noqa: E402
from sal_ray.paper import PROTOCOL, PROTOCOL_SEEDS, PublishedRow, published_row  # noqa: E402
from sal_ray.trainer import fit  # noqa: E402

COLUMNS = [("Baseline", "bp", 1)] + [(f"SAL-{n}", "sal", n) for n in (1, 2, 4, 8, 16)]
# Options this script sets from its own flags: a --set of one would run
# something other than what the header and the columns say.
OWN_FLAGS = {"dataset": "--dataset", "method": "--columns", "n_areas": "--columns",
             "seed": "--seeds", "epochs": "--epochs"}


class UsageError(ValueError):
    """Bad command line: printed as one line, exit status 2, before any run."""


def one_run(args):
    column, flat = args
    torch_threads = int(os.environ.get("SAL_RAY_THREADS", "1"))
    import torch
    torch.set_num_threads(torch_threads)  # one process per core beats two threads per run
    r = fit(Config.from_flat(flat))
    f = r.final
    return column, r.status, f.get("val_acc", float("nan")), f.get("train_loss", float("nan")), \
        f.get("val_loss", float("nan"))


def stats(xs):
    """(mean, sample std); the std of one seed is nan (printed "—"), not 0."""
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def _pm(mean: float, std: float) -> str:
    return f"{mean:>8.2f} ± " + (f"{std:>5.2f}" if std == std else f"{'—':>5}")


def _overrides(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for kv in items:
        name, sep, value = kv.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} takes OPTION=VALUE; got {kv!r}")
        if name in OWN_FLAGS:
            hint = f" (--dataset {value or 'NAME'})" if name == "dataset" else ""
            raise UsageError(f"option '{name}': choose it with {OWN_FLAGS[name]}{hint}, "
                             f"not {flag}")
        out[name] = value
    return out


def plan(a) -> tuple[list[tuple[str, dict]], dict, dict]:
    """The runs, as (column, flat options), checked before any of them starts."""
    if a.dataset not in DATASETS:
        raise UsageError(f"option '--dataset': unknown dataset {a.dataset!r}; "
                         f"one of {', '.join(DATASETS)}")
    if a.seeds < 1 or a.epochs < 1 or a.workers < 1:
        raise UsageError("options '--seeds', '--epochs' and '--workers' take a positive integer")
    known = [c for c, _, _ in COLUMNS]
    unknown = [c for c in a.columns if c not in known]
    if unknown or not a.columns:
        raise UsageError(f"option '--columns': {', '.join(unknown) or 'none given'}; "
                         f"choose from {','.join(known)}")
    sal_over, all_over = _overrides(a.set, "--set"), _overrides(a.set_all, "--set-all")
    protocol = {k: v for k, v in PROTOCOL.items() if k != "epochs"}
    jobs = []
    for column, method, n in COLUMNS:
        if column not in a.columns:
            continue
        for seed in range(a.seeds):
            flat = {"dataset": a.dataset, "method": method, "n_areas": n, "epochs": a.epochs,
                    **protocol, "seed": seed, **all_over, **(sal_over if method == "sal" else {})}
            validate(Config.from_flat(flat))  # bad --set values fail here, before any run
            jobs.append((column, flat))
    return jobs, sal_over, all_over


def check_data(jobs: list[tuple[str, dict]]) -> None:
    """The dataset is on disk (or downloadable) for every data root the runs
    use, and loads as each run will load it (MD5, sample count, cache), once
    here: a bad file stops the script before any run, and the cache is built
    once rather than by every worker at the same time."""
    wanted = {(c.data.dataset, c.data.data_root, c.data.download)
              for c in (Config.from_flat(flat) for _, flat in jobs)}
    for name, root, download in sorted(wanted, key=str):
        where = data_root(root)
        try:
            check_available(name, root, download)
        except DataError as exc:
            raise UsageError(f"{str(exc).splitlines()[0]} Data root {where}: `sal-ray data list "
                             f"--root {where}` shows what is there and what is missing "
                             "(docs/data.md).") from None
        try:
            load(name, root, download)  # freed before the workers start
        except DataError as exc:
            raise UsageError(" ".join(str(exc).split())) from None


def table(dataset: str, results, columns: list[str], published: PublishedRow | None) -> list[str]:
    """Our mean ± std beside the published row, one line per column."""
    lines = []
    if published is None:
        lines.append(f"published: the paper has no row for {dataset}")
    else:
        lines.append(f"published: the paper's {dataset} row (arXiv 2601.21561 Tables 2 and 3; "
                     "losses are means)")
    lines.append(f"{'':<9} {'val acc % (ours)':>17} {'published':>15} {'train/val loss':>16} "
                 f"{'published':>11}  diverged")
    for column in columns:
        rows = [r for r in results if r[0] == column]
        ok = [r for r in rows if r[1] == "completed"]
        acc = stats([100 * r[2] for r in ok]) if ok else (float("nan"),) * 2
        tl = statistics.mean(r[3] for r in ok) if ok else float("nan")
        vl = statistics.mean(r[4] for r in ok) if ok else float("nan")
        if published is not None:
            (pm, ps), ptl, pvl = (published.accuracy[column], published.train_loss[column][0],
                                  published.val_loss[column][0])
            pub_acc, pub_loss = f"{pm:>7.2f} ± {ps:>4.2f}", f"{ptl:>4.2f} / {pvl:.2f}"
        else:
            pub_acc, pub_loss = f"{'—':>14}", f"{'—':>11}"
        lines.append(f"{column:<9} {_pm(*acc)}  {pub_acc}  "
                     f"{tl:>7.2f} / {vl:>5.2f}  {pub_loss}  {len(rows) - len(ok)}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)} (default digits)")
    p.add_argument("--seeds", type=int, default=PROTOCOL_SEEDS)
    p.add_argument("--epochs", type=int, default=PROTOCOL["epochs"])
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                   help="trainer option for the SAL runs (repeatable)")
    p.add_argument("--set-all", action="append", default=[], metavar="OPTION=VALUE",
                   help="trainer option for every run, the baseline included (repeatable)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--columns", default=",".join(c for c, _, _ in COLUMNS),
                   type=lambda s: [c for c in s.split(",") if c])
    a = p.parse_args(argv)
    try:
        jobs, sal_over, all_over = plan(a)
        check_data(jobs)
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(min(a.workers, len(jobs))) as pool:
        results = pool.map(one_run, jobs)
    elapsed = time.perf_counter() - t0
    print(f"Dataset {a.dataset} ({DATASETS_INFO[a.dataset].title}), Convergence protocol: "
          f"{a.seeds} seeds x {a.epochs} epochs; SAL overrides {sal_over or '-'}; "
          f"all-run overrides {all_over or '-'}; {elapsed:.0f} s")
    print("\n".join(table(a.dataset, results, a.columns, published_row(a.dataset))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
