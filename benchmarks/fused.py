"""The Convergence protocol on Digits, fused (sal_ray.pack: a configuration's 5
seeds as one stacked model) against separate runs (trainer.fit one by one), in
one process on one thread each, beside the floor.

    python benchmarks/fused.py            # 30 runs x 25 epochs, 2 rounds
    python benchmarks/fused.py --quick    # 30 runs x 2 epochs, 1 round
    python benchmarks/fused.py --device cuda   # on a GPU (the issue's >= 10x goal there)

Floor: the protocol's matmul FLOPs over the matmul rate measured in this run, and
its weight bytes touched over the measured copy bandwidth (benchmarks/step.py's
floors, summed over every step of every run); the larger is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sal_ray import Config, fit  # noqa: E402
from sal_ray import data as datasets  # noqa: E402
from sal_ray.models import build_net  # noqa: E402
from sal_ray.pack import fit_pack  # noqa: E402
from step import floors, measure_rates  # noqa: E402

PROTOCOL = dict(dataset="digits", arch="mlp", depth=2, width=256, routed="first", lr=1e-4,
                batch_size=16)
CONFIGS = [("sal", n) for n in (1, 2, 4, 8, 16)] + [("bp", 1)]


def groups(epochs, seeds, device="cpu"):
    return [[Config().replace(method=m, n_areas=n, seed=s, epochs=epochs, device=device,
                              **PROTOCOL)
             for s in range(seeds)] for m, n in CONFIGS]


def floor_s(epochs, seeds, n_train, bandwidth, rate):
    total = 0.0
    for m, n in CONFIGS:
        net = build_net(Config().replace(method=m, n_areas=n, **PROTOCOL), 64, 10)
        nbytes, flops = floors(net, m, 16, 4)
        total += max(nbytes / bandwidth, flops / rate)
    return total * seeds * epochs * -(-n_train // 16)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu (one thread), cuda or cuda:N")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    epochs, rounds = (2, 1) if a.quick else (25, a.rounds or 2)
    seeds = 5
    device = torch.device(a.device)
    bw, rate = measure_rates(device, torch.float32)
    n_train = len(datasets.load("digits").y_train)
    fl = floor_s(epochs, seeds, n_train, bw, rate)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 thread"
    print(f"Convergence on Digits: {len(CONFIGS) * seeds} runs x {epochs} epochs, {where}; "
          f"copy {bw / 1e9:.1f} GB/s, matmul {rate / 1e9:.0f} GFLOP/s; floor {fl:.2f} s")
    for r in range(rounds):
        t0 = time.perf_counter()
        sep = [fit(c) for g in groups(epochs, seeds, a.device) for c in g]
        t_sep = time.perf_counter() - t0
        t0 = time.perf_counter()
        fused = [res for g in groups(epochs, seeds, a.device) for res in fit_pack(g)]
        t_fused = time.perf_counter() - t0
        same = max(abs(x.final["val_acc"] - y.final["val_acc"]) for x, y in zip(sep, fused))
        print(f"round {r + 1}: separate {t_sep:.2f} s ({t_sep / fl:.1f}x floor), fused "
              f"{t_fused:.2f} s ({t_fused / fl:.1f}x floor); separate / fused = "
              f"{t_sep / t_fused:.2f}x; max |val_acc difference| {same:.2g}")


if __name__ == "__main__":
    main()
