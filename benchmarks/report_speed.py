"""How fast `sal-ray report` builds a 100-run page, stage by stage.

Writes 100 runs into a fresh temporary SQLite MLflow store through MLflow's own
client, in the layout a sweep writes (docs/dashboards.md): one parent run per
sweep (tags sweep/kind/status, params `fixed.*` and `space.*`), one child run
per seed with every trainer option as a param (`Config.to_flat()`), the derived
facts, the sweep's tags (sweep, trial, config, seed_index, searched, dataset,
method, status), per-epoch metrics at step = epoch (losses, accuracies,
throughput, `area_share.l0.a*`, `areas_used.l0`) and `final_*` metrics. The
values are synthetic (smooth curves plus seeded noise): no training runs, so
the benchmark times the report alone. Six sweeps, six protocols:

    convergence  25 epochs, lr 1e-4: digits and usps, Baseline + SAL-1/4/16, 3 seeds  24
    convergence  5 epochs (a --quick run): digits, Baseline + SAL-1/4, 2 seeds            6
    moe          25 epochs, lr 1e-2: digits, SAL and MoE at 2/4/8 areas, 3 seeds       18
    width        width 64..512 searched: digits, Baseline and SAL-4, 2 seeds           16
    depth        depth 2..4 searched: digits, Baseline and SAL-4, 2 seeds              12
    search       lr and lr_sel searched (Optuna-like): digits SAL-4, 1 seed            24

Then builds the report over all six experiments `--rounds` times (a fresh
output folder each time, logging into the parents as the CLI does) and prints
each stage's seconds per round, the spread, and the total beside the goal
(GOAL_S) and beside the baseline: reading the histories one run and one metric
at a time (`MlflowClient.get_metric_history`), as the report did before,
measured in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/report_speed.py [--rounds 3]

A benchmark, not a test: exits 1 only when the best round misses the goal.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_S = 20.0
EPOCHS = 25
DIGITS = dict(n_train=1437, n_val=360, input_dim=64, n_classes=10)
USPS = dict(n_train=7291, n_val=2007, input_dim=256, n_classes=10)


def sweeps() -> list[dict]:
    """(experiment, sweep name, fixed options, searched, runs) for the six sweeps."""
    conv = dict(arch="mlp", depth=2, width=256, routed="first", lr=1e-4, batch_size=16)
    cols = [("bp", 1), ("sal", 1), ("sal", 4), ("sal", 16)]
    out = [
        dict(exp="sal-convergence", sweep="convergence-20261201-090000", searched=["n_areas"],
             fixed={**conv, "epochs": EPOCHS},
             runs=[dict(dataset=d, method=m, n_areas=n, seed=s) for d in ("digits", "usps")
                   for m, n in cols for s in range(3)]),
        dict(exp="sal-convergence", sweep="convergence-quick-20261201-100000",
             searched=["n_areas"], fixed={**conv, "epochs": 5},
             runs=[dict(dataset="digits", method=m, n_areas=n, seed=s) for m, n in cols[:3]
                   for s in range(2)]),
        dict(exp="sal-moe", sweep="moe-20261201-110000", searched=["n_areas"],
             fixed={**conv, "lr": 1e-2, "epochs": EPOCHS},
             runs=[dict(dataset="digits", method=m, n_areas=n, seed=s) for m in ("sal", "moe")
                   for n in (2, 4, 8) for s in range(3)]),
        dict(exp="sal-width", sweep="width-20261201-120000", searched=["width"],
             fixed={**{k: v for k, v in conv.items() if k != "width"}, "epochs": EPOCHS},
             runs=[dict(dataset="digits", method=m, n_areas=n, width=w, seed=s)
                   for m, n in (("bp", 1), ("sal", 4)) for w in (64, 128, 256, 512)
                   for s in range(2)]),
        dict(exp="sal-depth", sweep="depth-20261201-130000", searched=["depth"],
             fixed={**{k: v for k, v in conv.items() if k != "depth"}, "epochs": EPOCHS},
             runs=[dict(dataset="digits", method=m, n_areas=n, depth=d, seed=s)
                   for m, n in (("bp", 1), ("sal", 4)) for d in (2, 3, 4) for s in range(2)]),
    ]
    grid = [(lr, ls) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
            for ls in (1e-4, 1e-3, 1e-2, 1e-1)]
    out.append(dict(exp="sal-search", sweep="search-20261201-140000", searched=["lr", "lr_sel"],
                    fixed={k: v for k, v in conv.items() if k != "lr"} | {"epochs": EPOCHS},
                    runs=[dict(dataset="digits", method="sal", n_areas=4, lr=lr, lr_sel=ls,
                               seed=0) for lr, ls in grid]))
    return out


def curves(rng, options: dict, epochs: int) -> list[dict]:
    """Per-epoch metrics of the trainer's names, smooth and seeded."""
    import numpy as np
    n = int(options["n_areas"])
    top = 0.35 + 0.08 * np.log2(n + 1) + 0.05 * rng.standard_normal()
    rows = []
    for e in range(1, epochs + 1):
        frac = 1 - np.exp(-e / 6)
        acc = float(np.clip(top * frac + 0.1 + 0.01 * rng.standard_normal(), 0, 1))
        loss = float(2.3 - 1.2 * frac + 0.02 * rng.standard_normal())
        row = {"train_loss": loss - 0.05, "train_acc": acc + 0.02, "val_loss": loss,
               "val_acc": acc, "samples_per_s": 9000 + 100 * rng.standard_normal(),
               "epoch_time_s": 0.16, "wall_time_s": 0.16 * e}
        if options["method"] != "bp":
            share = rng.dirichlet(np.ones(n))
            row.update({f"area_share.l0.a{a}": float(share[a]) for a in range(n)})
            row["areas_used.l0"] = float((share > 0).sum())
        rows.append(row)
    return rows


def write_store(root: Path) -> tuple[str, list[str], int]:
    """The 100 runs; returns (uri, experiment names, runs written)."""
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from sal_ray.config import Config

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    rng = np.random.default_rng(0)
    exps, n_runs, t0 = {}, 0, 1_764_000_000_000
    for sw in sweeps():
        if sw["exp"] not in exps:
            exps[sw["exp"]] = client.create_experiment(
                sw["exp"], artifact_location=(root / "artifacts" / sw["exp"]).as_uri())
        exp_id = exps[sw["exp"]]
        fixed = sw["fixed"]
        parent = client.create_run(exp_id, run_name=sw["sweep"], tags={
            "sweep": sw["sweep"], "kind": "sweep", "status": "running",
            "datasets": ",".join(dict.fromkeys(r["dataset"] for r in sw["runs"])),
            "methods": ",".join(dict.fromkeys(r["method"] for r in sw["runs"]))})
        pid = parent.info.run_id
        client.log_batch(pid, params=[Param(f"fixed.{k}", str(v)) for k, v in fixed.items()]
                         + [Param(f"space.{k}", "grid") for k in sw["searched"]],
                         synchronous=True)
        for i, opts in enumerate(sw["runs"]):
            flat = Config.from_flat({**fixed, **opts}).to_flat()
            data = USPS if flat["dataset"] == "usps" else DIGITS
            params = {**flat, **data, "resolved_device": "cpu",
                      "feedback_std": "feedback_scale/sqrt(d_out)" if flat["method"] == "sal"
                      else "n/a"}
            trial = f"{i // 3:05d}"
            name = (f"{flat['dataset']}-{flat['method']}-{flat['n_areas']}"
                    + "".join(f"-{k}{flat[k]}" for k in sw["searched"] if k != "n_areas")
                    + f"-s{flat['seed']}")
            run = client.create_run(exp_id, run_name=name, tags={
                "mlflow.parentRunId": pid, "sweep": sw["sweep"], "trial": trial,
                "config": trial, "seed_index": str(flat["seed"]), "seeds": "3",
                "searched": ",".join(sw["searched"]), "dataset": flat["dataset"],
                "method": flat["method"], "status": "completed", "run_key": f"{sw['sweep']}/{i}"})
            rid = run.info.run_id
            items = [Param(k, str(v)) for k, v in params.items()]
            for j in range(0, len(items), 100):
                client.log_batch(rid, params=items[j:j + 100], synchronous=True)
            rows = curves(rng, flat, int(fixed["epochs"]))
            metrics = [Metric(k, float(v), t0 + 1000 * e, e)
                       for e, row in enumerate(rows, 1) for k, v in row.items()]
            last = rows[-1]
            metrics += [Metric(f"final_{k}", last[k], t0 + 1000 * len(rows), len(rows))
                        for k in ("train_loss", "val_loss", "val_acc")]
            for j in range(0, len(metrics), 1000):
                client.log_batch(rid, metrics=metrics[j:j + 1000], synchronous=True)
            client.log_batch(rid, tags=[RunTag("status", "completed")], synchronous=True)
            client.set_terminated(rid, "FINISHED")
            n_runs += 1
        client.log_batch(pid, tags=[RunTag("status", "completed")], synchronous=True)
        client.set_terminated(pid, "FINISHED")
    return uri, list(exps), n_runs


def per_run_histories(uri: str, experiments: list[str]) -> float:
    """The baseline: every leaf run's curves, one get_metric_history call per run
    and metric (what the report did before it read them in one query)."""
    from mlflow import MlflowClient

    # the four per-epoch metrics the report used to read, for every leaf run
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    client = MlflowClient(tracking_uri=uri)
    ids = [client.get_experiment_by_name(e).experiment_id for e in experiments]
    runs = [r for r in client.search_runs(ids, max_results=5000) if "method" in r.data.params]
    t = time.perf_counter()
    for r in runs:
        for key in keys:
            client.get_metric_history(r.info.run_id, key)
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    if a.rounds < 1:
        print("error: option '--rounds' takes a positive integer", file=sys.stderr)
        return 2
    from dashboards.report import generate

    with tempfile.TemporaryDirectory(prefix="report-speed-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        uri, experiments, n_runs = write_store(root)
        print(f"store: {n_runs} runs x {EPOCHS} epochs written in "
              f"{time.perf_counter() - t:.1f} s ({uri})")
        rounds, n_warnings = [], 0
        for i in range(a.rounds):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t = time.perf_counter()
                result = generate(experiments, root / f"out{i}", uri)
                total = time.perf_counter() - t
            n_warnings += len(caught)
            for w in caught:
                print(f"  warning: {w.category.__name__}: {w.message}")
            rounds.append((total, dict(result.timings), result.histories_read))
            print(f"round {i + 1}: {total:.2f} s, {result.n_runs} runs, "
                  f"{len(result.figures)} figures, logged to {len(result.logged_to)} parent run(s)")
        baseline = per_run_histories(uri, experiments)

    stages = list(rounds[0][1])
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()} (shared: other jobs ran too)")
    print(f"{'stage':<22}" + "".join(f"{'round ' + str(i + 1):>10}" for i in range(len(rounds)))
          + f"{'median':>10}")
    for s in stages:
        vals = [r[1].get(s, float("nan")) for r in rounds]
        print(f"{s:<22}" + "".join(f"{v:>10.2f}" for v in vals) + f"{statistics.median(vals):>10.2f}")
    totals = [r[0] for r in rounds]
    best, med = min(totals), statistics.median(totals)
    print(f"{'total':<22}" + "".join(f"{v:>10.2f}" for v in totals) + f"{med:>10.2f}")
    print(f"\ntotal: best {best:.2f} s, median {med:.2f} s, spread {min(totals):.2f}-"
          f"{max(totals):.2f} s; goal {GOAL_S:.0f} s: best / goal = {best / GOAL_S:.2f}")
    hist = statistics.median(r[1].get("(histories, within)", float("nan")) for r in rounds)
    print(f"histories: {hist:.2f} s (median) for the {rounds[-1][2]} runs the page draws, "
          f"against {baseline:.2f} s reading every run's (the report before): "
          f"{hist / baseline if baseline else float('nan'):.2f}x")
    print(f"warnings during the builds: {n_warnings}")
    return 0 if best <= GOAL_S and n_warnings == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
