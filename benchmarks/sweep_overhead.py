"""What the sweep layer costs: the Convergence protocol on Digits (Table 2: two
layers, width 256, lr 1e-4, batch 16, 25 epochs), sal with n_areas 1, 2, 4, 8, 16
and bp, 5 seeds each: 30 training runs.

  plain loop        the 30 runs one after another with `sal_ray.fit`, nothing recorded
  1 at a time, apart  `sal_ray.tune` (6 trials of 5 seeds), one trial at a time,
                    seeds in turn (fuse=false): what recording costs over the loop.
                    Ray started from cold, every epoch reported to Tune and logged to
                    a fresh MLflow SQLite store, a trial checkpoint at most every
                    checkpoint_every_s (10 s) and at each seed's end, best weights logged
  ... no checkpoints  the same with checkpoint_every=0: what checkpoints cost
  1 at a time, fused  the default: a trial's 5 seeds train as one stacked model
  2 at a time, fused  the default on this machine (2 CPUs)

Per epoch, from the trials' own timers (`cost_*_s` in each trial's last Tune
result, 1 at a time, apart): reporting to Tune, writing to MLflow, checkpoints,
each over the epochs reported, beside the epoch's own compute (the trainer's
time less those).

Goal: 1 at a time, apart <= 1.2 x plain loop. Run from the repository root:

    .venv/bin/python benchmarks/sweep_overhead.py [--epochs 25] [--seeds 5] [--repeat 2]
        [--write-docs]

`--write-docs` replaces the figures in docs/sweeps.md (between the markers).
This is a benchmark, not a test: it prints its table and exits 0 unless the
sweep misses the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

GOAL = 1.2
PROTOCOL = dict(arch="mlp", depth=2, width=256, routed="first",
                lr=1e-4, batch_size=16)
CONFIGS = [("sal", n) for n in (1, 2, 4, 8, 16)] + [("bp", 1)]
DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "sweeps.md"
BEGIN, END = "<!-- sweep_overhead:begin -->", "<!-- sweep_overhead:end -->"
# key: (label, max_concurrent, checkpoint_every, fuse)
SWEEPS = {"apart": ("`sal_ray.tune`, 1 trial at a time, seeds in turn (fuse=false)", 1, 1, False),
          "nockpt": ("the same, `checkpoint_every=0`", 1, 0, False),
          "fused1": ("`sal_ray.tune`, 1 trial at a time, seeds fused (default)", 1, 1, True),
          "fused2": ("`sal_ray.tune`, 2 trials at a time, seeds fused (default here)", None, 1,
                     True)}
# the trial's timers (sweep/costs.py) of its work between epochs
PER_EPOCH = {"Tune report": ("report", "report_checkpoint"), "MLflow writes": ("mlflow_epoch",),
             "checkpoint": ("checkpoint",)}


def plain_loop(epochs: int, seeds: int) -> float:
    from sal_ray import Config, fit
    t0 = time.perf_counter()
    for method, n in CONFIGS:
        for seed in range(seeds):
            r = fit(Config.from_flat({**PROTOCOL, "method": method, "n_areas": n,
                                      "epochs": epochs, "seed": seed}))
            assert r.status == "completed", r.message
    return time.perf_counter() - t0


def sweep(epochs: int, seeds: int, folder: str, max_concurrent: int | None,
          checkpoint_every: int = 1, fuse: bool = True) -> dict:
    """One sweep in a fresh process: Ray starts cold there, as for a user. Its wall
    time and the trials' summed cost timers."""
    code = f"""
import json, time, sal_ray
from ray import tune as rt
t0 = time.perf_counter()
res = sal_ray.tune(["digits"], ["sal", "bp"], {{"n_areas": [1, 2, 4, 8, 16]}}, sampler="grid",
                   fixed={{**{PROTOCOL!r}, "epochs": {epochs}, "fuse": {fuse!r}}},
                   seeds={seeds}, num_cpus=2, name="overhead",
                   tracking_uri="sqlite:///{folder}/mlflow.db", experiment="overhead",
                   storage_path="{folder}/ray", max_concurrent={max_concurrent!r}, verbose=0,
                   checkpoint_every={checkpoint_every})
elapsed = time.perf_counter() - t0
assert (res.trials.status == "completed").all(), res.trials.status.tolist()
assert len(res.runs()) == {len(CONFIGS) * seeds}
costs = {{}}
for trial in rt.ExperimentAnalysis("{folder}/ray/overhead").trials:
    for k, v in (trial.last_result or {{}}).items():
        if k.startswith("cost_"):
            costs[k[5:-2]] = costs.get(k[5:-2], 0.0) + v
print("RESULT", json.dumps({{"elapsed": elapsed, "costs": costs}}))
"""
    return result_of(code, folder)


def result_of(code: str, folder: str, *args: str, what: str = "sweep",
              env: dict | None = None) -> dict:
    """Run `code` in a fresh Python process in `folder` (Ray starts cold there, as
    for a user) and return the JSON it printed on its `RESULT` line; exit with its
    output if it failed."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         cwd=folder, timeout=3600, env=env)
    found = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not found:
        sys.exit(f"{what} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(found.group(1))


def per_epoch(costs: dict, epochs_reported: int) -> dict[str, float]:
    """Milliseconds per epoch of each part of the trials' work between epochs, and
    the epoch's compute (the trainer's time less those parts)."""
    parts = {name: sum(costs.get(k, 0.0) for k in keys) for name, keys in PER_EPOCH.items()}
    compute = costs.get("fit", 0.0) - sum(parts.values())
    return {**{k: 1e3 * v / epochs_reported for k, v in parts.items()},
            "epoch compute": 1e3 * compute / epochs_reported}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()}-core CPU sandbox ({cpu}), no GPU; load average {load:.1f} at start"


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}" if len(values) == 1 else f"{min(values):.1f}–{max(values):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every row; each row's ratio is taken within a round "
                         "and reported as the median and the range over rounds")
    ap.add_argument("--write-docs", action="store_true", help="update docs/sweeps.md")
    args = ap.parse_args()
    runs = len(CONFIGS) * args.seeds
    where = machine()
    print(f"{runs} runs of {args.epochs} epochs (Convergence protocol, Digits); {where}",
          flush=True)
    times: dict[str, list[float]] = {"loop": [], **{k: [] for k in SWEEPS}}
    epoch_ms: list[dict] = []
    for r in range(args.repeat):
        times["loop"].append(plain_loop(args.epochs, args.seeds))
        for key, (_, limit, every, fuse) in SWEEPS.items():
            with tempfile.TemporaryDirectory() as tmp:
                got = sweep(args.epochs, args.seeds, tmp, limit, every, fuse)
            times[key].append(got["elapsed"])
            if key == "apart":
                epoch_ms.append(per_epoch(got["costs"], runs * args.epochs))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
              flush=True)
    ratios = {k: [t / lo for t, lo in zip(times[k], times["loop"])] for k in SWEEPS}
    rows = [("plain loop of `fit` (nothing recorded)", times["loop"], [1.0] * args.repeat)] + \
        [(SWEEPS[k][0], times[k], ratios[k]) for k in SWEEPS]
    print(f"\n  {'':<66} {'wall s':>12} {'x loop':>10}")
    for label, ts, rs in rows:
        print(f"  {label:<66} {spread(ts):>12} {statistics.median(rs):6.2f} "
              f"[{min(rs):.2f}–{max(rs):.2f}]")
    parts = {k: statistics.median(e[k] for e in epoch_ms) for k in epoch_ms[0]}
    compute = parts["epoch compute"]
    print("\n  per epoch, 1 at a time, seeds in turn (median over rounds, ms):")
    for k, v in parts.items():
        print(f"    {k:<16} {v:8.2f} ms" + ("" if k == "epoch compute"
                                            else f"   {v / compute:.3f} x the epoch's compute"))
    apart = statistics.median(ratios["apart"])
    ok = apart <= GOAL
    print(f"goal: 1 at a time, seeds in turn <= {GOAL} x plain loop: "
          f"{'met' if ok else 'MISSED'} ({apart:.2f})")
    if args.write_docs:
        table = "\n".join([
            BEGIN,
            f"Measured with `benchmarks/sweep_overhead.py --repeat {args.repeat}` on a "
            f"{where}: {runs} runs of {args.epochs} epochs (sal n_areas 1-16 and bp, "
            f"{args.seeds} seeds), {time.strftime('%Y-%m-%d')}. Each ratio is taken within "
            f"a round: the median over rounds, [range].",
            "",
            "| | wall time | vs plain loop |",
            "|---|---:|---:|",
            *[f"| {label} | {spread(ts)} s | {statistics.median(rs):.2f} "
              f"[{min(rs):.2f}–{max(rs):.2f}] |" for label, ts, rs in rows],
            "",
            "Per epoch (1 at a time, seeds in turn; the trials' own timers, median over "
            "rounds): " + "; ".join(f"{k} {v:.2f} ms" + ("" if k == "epoch compute" else
                                                      f" ({100 * v / compute:.1f} %)")
                                    for k, v in parts.items()) + ".",
            "",
            "The sweep times include starting Ray from cold in a new process, creating the "
            "MLflow store, reporting every epoch to Tune and to MLflow, trial checkpoints "
            "(at most one per `checkpoint_every_s`, 10 s, and one at each seed's end; none "
            "with `checkpoint_every=0`) and logging the best weights. "
            f"Goal: 1 at a time, seeds in turn <= {GOAL} x plain loop.",
            END])
        text = DOCS.read_text()
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
        else:
            text += "\n" + table + "\n"
        DOCS.write_text(text)
        print(f"wrote the figures into {DOCS}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
