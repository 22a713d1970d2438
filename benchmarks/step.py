"""Training-step time of SAL, BP and MoE at the paper's shapes, each beside its floor.

    python benchmarks/step.py            # CPU shapes (and GPU shapes when CUDA is present)
    python benchmarks/step.py --device cuda --shapes all

Floors, from rates measured in the same run on the same device:
- bytes floor: the weight bytes a step must touch over the measured copy bandwidth.
  SAL reads each used area and trained router once forward and reads + writes it in
  the update (3 passes); BP and MoE also read the weights again backward (4 passes).
- FLOP floor: the step's multiply-add FLOPs over the measured matmul rate.
The figure to read is `ratio` = time / max(bytes floor, FLOP floor): 1.0 is the
hardware's limit. `vs BP` is the step time over BP's at the same shape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sal_ray.config import Config  # noqa: E402
from sal_ray.models import build_net  # noqa: E402
from sal_ray.trainer import make_optimizer, make_rule  # noqa: E402

SHAPES = {  # name: (input dim, classes, arch, depth, width, n_areas, routed, batch)
    "digits-2x256-b16": (64, 10, "mlp", 2, 256, 16, "first", 16),
    "d64-w1024-b16": (1024, 10, "residual", 64, 1024, 4, "hidden", 16),
    "d64-w4096-b16": (1024, 10, "residual", 64, 4096, 4, "hidden", 16),
    "d64-w4096-b1024": (1024, 10, "residual", 64, 4096, 4, "hidden", 1024),
}
CPU_SHAPES = ["digits-2x256-b16", "d64-w1024-b16"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, min_time=0.5, repeats=5):
    """Median seconds per call over `repeats` blocks of at least `min_time` each."""
    fn(); fn(); sync(device)  # warm-up
    n, t = 1, 0.0
    while t < min_time / repeats:
        n *= 2
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        t = time.perf_counter() - t0
    blocks = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        blocks.append((time.perf_counter() - t0) / n)
    return statistics.median(blocks)


def measure_rates(device, dtype):
    """Copy bandwidth (bytes/s, read + write) and matmul rate (FLOP/s) of this device."""
    n = (1 << 26) if device.type == "cuda" else (1 << 24)
    a = torch.empty(n, dtype=dtype, device=device).normal_()
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), device, min_time=0.3)
    bandwidth = 2 * a.numel() * a.element_size() / t
    m = 8192 if device.type == "cuda" else 1024
    x = torch.randn(m, m, dtype=dtype, device=device)
    y = torch.randn(m, m, dtype=dtype, device=device)
    t = timed(lambda: x @ y, device, min_time=0.3)
    return bandwidth, 2 * m ** 3 / t


def floors(net, method, batch, elem):
    """(weight bytes, FLOPs) one step needs at least."""
    used_bytes, flops = 0, 0
    for layer in net.layers:
        s = layer.spec
        used_areas = min(batch, s.n_areas)
        area = s.d_in * s.d_out + s.d_out
        router = 0 if layer.router is None else layer.router.weight.numel()
        used_bytes += (used_areas * area + router) * elem
        mm = 2 * batch * s.d_in * s.d_out
        router_mm = 2 * batch * router
        # SAL: forward + weight update; BP/MoE: forward + input grad + weight grad
        flops += (2 * mm + 2 * router_mm) if method == "sal" else (3 * mm + 3 * router_mm)
    passes = 3 if method == "sal" else 4
    return passes * used_bytes, flops


def bench_shape(name, device, dtype, methods, kernels, area_counts=None, repeats=7):
    """Time every variant of one shape. Variants are interleaved block by block,
    so a load that comes and goes on the machine biases none of them."""
    d_in, C, arch, depth, width, n_areas, routed, batch = SHAPES[name]
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, d_in, generator=g).to(device, dtype)
    y = torch.randint(0, C, (batch,), generator=g).to(device)
    variants = []
    counts = area_counts or [n_areas]
    runs = [("bp", "auto", 1)] if "bp" in methods else []
    runs += [(m, k, n) for m in methods if m != "bp" for n in counts
             for k in (kernels if n > 1 else ["auto"])]
    for method, kernel, n in runs:
        cfg = Config().replace(method=method, arch=arch, depth=depth, width=width,
                               n_areas=n, routed=routed, kernel=kernel, lr=1e-4)
        net = build_net(cfg, d_in, C).to(device=device, dtype=dtype)
        opt, rule = make_optimizer(net, cfg), make_rule(cfg)

        def step(net=net, opt=opt, rule=rule):
            rule(net, x, y)
            opt.step()

        nbytes, flops = floors(net, method, batch, x.element_size())
        variants.append([f"{method}-{n}", kernel, step, nbytes, flops, []])
    for v in variants:  # warm-up, and a block size of about 50 ms
        v[2](); v[2](); sync(device)
        n, t = 1, 0.0
        while t < 0.05:
            n *= 2
            t0 = time.perf_counter()
            for _ in range(n):
                v[2]()
            sync(device)
            t = time.perf_counter() - t0
        v.append(n)
    for _ in range(repeats):
        for v in variants:
            step, n = v[2], v[6]
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            sync(device)
            v[5].append((time.perf_counter() - t0) / n)
    return [(m, k, statistics.median(ts), nb, fl) for m, k, _, nb, fl, ts, _ in variants]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--shapes", default=None, help="comma list of " + ", ".join(SHAPES) + ", or all")
    p.add_argument("--methods", default="sal,bp,moe")
    p.add_argument("--kernels", default="auto", help="SAL/MoE routed layouts to compare, e.g. "
                   "auto,onehot,gather,sorted")
    p.add_argument("--n-areas", default=None, help="comma list of area/expert counts for sal and "
                   "moe (default: the shape's own)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    shapes = (list(SHAPES) if a.shapes == "all" else a.shapes.split(",") if a.shapes
              else CPU_SHAPES + (["d64-w4096-b16", "d64-w4096-b1024"] if device.type == "cuda" else []))
    bandwidth, rate = measure_rates(device, dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; {a.dtype}; torch {torch.__version__}")
    print(f"measured: copy bandwidth {bandwidth / 1e9:.1f} GB/s, matmul {rate / 1e12:.3f} TFLOP/s")
    print(f"{'shape':<17} {'method':<7} {'kernel':<7} {'step':>10} {'bytes fl.':>10} "
          f"{'FLOP fl.':>10} {'ratio':>7} {'vs BP':>6}")
    for name in shapes:
        counts = [int(n) for n in a.n_areas.split(",")] if a.n_areas else None
        rows = bench_shape(name, device, dtype, a.methods.split(","), a.kernels.split(","), counts)
        bp_time = next((t for m, _, t, _, _ in rows if m.startswith("bp")), None)
        for method, kernel, t, nbytes, flops in rows:
            fb, ff = nbytes / bandwidth, flops / rate
            vs = f"{t / bp_time:.2f}" if bp_time else "-"
            print(f"{name:<17} {method:<7} {kernel:<7} {t * 1e6:>8.1f}µs {fb * 1e6:>8.1f}µs "
                  f"{ff * 1e6:>8.1f}µs {t / max(fb, ff):>7.2f} {vs:>6}")


if __name__ == "__main__":
    main()
