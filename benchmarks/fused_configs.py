"""Same-shape configurations fused in a sweep (`fuse_configs`): a learning-rate
grid at the Convergence protocol's shape (Digits, 64 -> 256 -> 10, SAL-4, batch
16), every configuration with its seeds, as `sal_ray.tune` sweeps, fused k
configurations per trial against one per trial (seeds fused in both: the
default), with the same CPUs (2 trials at a time), each sweep in a fresh process
with Ray starting cold. Beside each, the compute floor of all its training steps
(weight bytes over copy bandwidth or FLOPs over matmul rate, the larger per
step: benchmarks/step.py) and the plain loop of `sal_ray.fit` over the same runs.

    .venv/bin/python benchmarks/fused_configs.py [--lrs 6] [--seeds 5] [--epochs 10]
        [--rounds 1]

A benchmark, not a test: it prints what it measured and exits 0. Every
configuration's final validation accuracy is checked equal across the two
sweeps (the fused trial trains each exactly as alone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sal_ray import Config, fit  # noqa: E402
from sal_ray import data as datasets  # noqa: E402
from sal_ray.models import build_net  # noqa: E402
from step import floors, measure_rates  # noqa: E402
from sweep_overhead import result_of  # noqa: E402 - one way to run a sweep cold

SHAPE = dict(arch="mlp", depth=2, width=256, routed="first", batch_size=16, n_areas=4)


def grid(n: int) -> list[float]:
    """n learning rates, log-spaced from 1e-3 to 0.3."""
    return [round(1e-3 * (300 ** (i / max(1, n - 1))), 6) for i in range(n)]


def sweep(lrs, seeds, epochs, k, folder) -> dict:
    code = f"""
import json, time, sal_ray
t0 = time.perf_counter()
res = sal_ray.tune("digits", "sal", space={{"lr": {lrs!r}}}, sampler="grid",
                   fixed={{**{SHAPE!r}, "epochs": {epochs}}}, seeds={seeds}, num_cpus=2,
                   name="fc", tracking_uri="sqlite:///{folder}/mlflow.db", experiment="fc",
                   storage_path="{folder}/ray", verbose=0, fuse_configs={k})
elapsed = time.perf_counter() - t0
assert (res.trials.status == "completed").all(), res.trials.status.tolist()
acc = dict(zip(res.trials.lr.astype(float), res.trials.final_val_acc_mean))
print("RESULT", json.dumps({{"elapsed": elapsed, "acc": list(acc.items())}}))
"""
    return result_of(code, folder)


def plain_loop(lrs, seeds, epochs) -> float:
    t0 = time.perf_counter()
    for lr in lrs:
        for s in range(seeds):
            r = fit(Config.from_flat({**SHAPE, "method": "sal", "lr": lr, "seed": s,
                                      "epochs": epochs}))
            assert r.status == "completed", r.message
    return time.perf_counter() - t0


def floor_s(runs, epochs, bandwidth, rate) -> float:
    net = build_net(Config.from_flat({**SHAPE, "method": "sal"}), 64, 10)
    nbytes, flops = floors(net, "sal", 16, 4)
    n_train = len(datasets.load("digits").y_train)
    steps = runs * epochs * -(-n_train // 16)
    return max(nbytes / bandwidth, flops / rate) * steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lrs", type=int, default=6, help="learning rates in the grid")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--per-trial", type=int, default=None,
                    help="configurations per fused trial (default: lrs / 2, so that both "
                         "sweeps keep the 2 CPUs busy with 2 trials at a time)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    k = args.per_trial or max(1, args.lrs // 2)
    lrs, runs = grid(args.lrs), args.lrs * args.seeds
    torch.set_num_threads(1)
    bw, rate = measure_rates(torch.device("cpu"), torch.float32)
    fl = floor_s(runs, args.epochs, bw, rate)
    load = os.getloadavg()[0]
    print(f"{runs} runs ({args.lrs} lrs x {args.seeds} seeds) of {args.epochs} epochs, "
          f"{os.cpu_count()} CPUs, load {load:.1f}; copy {bw / 1e9:.1f} GB/s, matmul "
          f"{rate / 1e9:.0f} GFLOP/s on one thread; floor {fl:.2f} s (one thread)", flush=True)
    ratios = []
    for r in range(args.rounds):
        loop = plain_loop(lrs, args.seeds, args.epochs)
        got = {}
        for n in (1, k):
            with tempfile.TemporaryDirectory() as tmp:
                got[n] = sweep(lrs, args.seeds, args.epochs, n, tmp)
        apart, fused = got[1]["elapsed"], got[k]["elapsed"]
        same = max(abs(a[1] - b[1]) for a, b in zip(sorted(got[1]["acc"]),
                                                    sorted(got[k]["acc"])))
        ratios.append(apart / fused)
        print(f"round {r + 1}: plain loop (1 process) {loop:.1f} s ({loop / fl:.1f}x floor); "
              f"sweep, 1 configuration per trial {apart:.1f} s ({apart / fl:.1f}x floor, "
              f"{apart / loop:.2f}x loop); {k} per trial {fused:.1f} s "
              f"({fused / fl:.1f}x floor, {fused / loop:.2f}x loop); apart / fused = "
              f"{apart / fused:.2f}; max |final val_acc difference| {same:.1e}", flush=True)
    if args.rounds > 1:
        print(f"apart / fused: median {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}] over {args.rounds} rounds")


if __name__ == "__main__":
    main()
