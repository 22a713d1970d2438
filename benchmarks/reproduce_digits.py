"""The Convergence protocol on Digits (SAL_SPEC section 5, Table 2), beside the
published row: BP baseline and SAL-1/2/4/8/16, 5 seeds, 25 epochs, lr 1e-4,
batch 16, two layers 64 -> 256 -> 10 (ReLU), SAL routed on the first layer.

    python benchmarks/reproduce_digits.py                      # the protocol, defaults
    python benchmarks/reproduce_digits.py --set output_local=false --set lr_sel=1e-3
    python benchmarks/reproduce_digits.py --seeds 2 --epochs 5 # quicker

Every `--set` is a trainer option (see `sal-ray train --help`) applied to all
SAL runs, so each ablation in docs/reproduction.md is one command line.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sal_ray.config import Config  # noqa: E402
from sal_ray.train import fit  # noqa: E402

PUBLISHED = {  # SAL_SPEC section 5: val acc % (mean, std), final train / val loss
    "Baseline": (38.53, 5.78, 1.81, 1.81), "SAL-1": (36.36, 3.04, 2.22, 2.22),
    "SAL-2": (35.11, 8.05, 2.19, 2.20), "SAL-4": (53.59, 8.37, 2.06, 2.07),
    "SAL-8": (65.65, 4.92, 1.84, 1.85), "SAL-16": (71.63, 5.75, 1.57, 1.63),
}
COLUMNS = [("Baseline", "bp", 1)] + [(f"SAL-{n}", "sal", n) for n in (1, 2, 4, 8, 16)]


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
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                   help="trainer option for the SAL runs (repeatable)")
    p.add_argument("--set-all", action="append", default=[], metavar="OPTION=VALUE",
                   help="trainer option for every run, the baseline included (repeatable)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--columns", default=",".join(c for c, _, _ in COLUMNS))
    a = p.parse_args(argv)
    sal_over = dict(kv.split("=", 1) for kv in a.set)
    all_over = dict(kv.split("=", 1) for kv in a.set_all)
    wanted = a.columns.split(",")
    jobs = []
    for column, method, n in COLUMNS:
        if column not in wanted:
            continue
        for seed in range(a.seeds):
            flat = {"dataset": "digits", "method": method, "n_areas": n, "epochs": a.epochs,
                    "lr": 1e-4, "batch_size": 16, "width": 256, "depth": 2, "seed": seed,
                    **all_over, **(sal_over if method == "sal" else {})}
            Config.from_flat(flat)  # bad --set values fail here, before any run
            jobs.append((column, flat))
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(a.workers) as pool:
        results = pool.map(one_run, jobs)
    elapsed = time.perf_counter() - t0
    print(f"Digits, Convergence protocol: {a.seeds} seeds x {a.epochs} epochs; "
          f"SAL overrides {sal_over or '-'}; all-run overrides {all_over or '-'}; {elapsed:.0f} s")
    print(f"{'':<9} {'val acc % (ours)':>17} {'published':>15} {'train/val loss':>16} "
          f"{'published':>11}  diverged")
    for column in wanted:
        rows = [r for r in results if r[0] == column]
        ok = [r for r in rows if r[1] == "completed"]
        acc = stats([100 * r[2] for r in ok]) if ok else (float("nan"),) * 2
        tl = statistics.mean(r[3] for r in ok) if ok else float("nan")
        vl = statistics.mean(r[4] for r in ok) if ok else float("nan")
        pm, ps, ptl, pvl = PUBLISHED[column]
        print(f"{column:<9} {acc[0]:>8.2f} ± {acc[1]:>5.2f}  {pm:>7.2f} ± {ps:>4.2f}  "
              f"{tl:>7.2f} / {vl:>5.2f}  {ptl:>4.2f} / {pvl:.2f}  {len(rows) - len(ok)}")


if __name__ == "__main__":
    main()
