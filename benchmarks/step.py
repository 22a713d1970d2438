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
from sal_ray.layers import pick_kernel  # noqa: E402
from sal_ray.models import build_net  # noqa: E402
from sal_ray.trainer import make_optimizer, make_rule  # noqa: E402

SHAPES = {  # name: (input dim, classes, arch, depth, width, n_areas, routed, batch)
    "digits-2x256-b16": (64, 10, "mlp", 2, 256, 16, "first", 16),
    # the paper's other input widths through the same 2 x 256 net (Semeion/USPS,
    # MNIST, CIFAR-10 gray, FER2013, STL-10/PCAM)
    "w256-2x256-b16": (256, 10, "mlp", 2, 256, 16, "first", 16),
    "w784-2x256-b16": (784, 10, "mlp", 2, 256, 16, "first", 16),
    "w1024-2x256-b16": (1024, 10, "mlp", 2, 256, 16, "first", 16),
    "w2304-2x256-b16": (2304, 10, "mlp", 2, 256, 16, "first", 16),
    "w9216-2x256-b16": (9216, 10, "mlp", 2, 256, 16, "first", 16),
    "d64-w1024-b16": (1024, 10, "residual", 64, 1024, 4, "hidden", 16),
    "d64-w4096-b16": (1024, 10, "residual", 64, 4096, 4, "hidden", 16),
    "d64-w4096-b1024": (1024, 10, "residual", 64, 4096, 4, "hidden", 1024),
}
CPU_SHAPES = ["digits-2x256-b16", "d64-w1024-b16"]
# --kernel-table: the paper's input widths, SAL at these area counts
TABLE_SHAPES = ["digits-2x256-b16", "w256-2x256-b16", "w784-2x256-b16", "w1024-2x256-b16",
                "w2304-2x256-b16", "w9216-2x256-b16"]
TABLE_AREAS = [16, 4]
ROUTED_KERNELS = ["onehot", "gather", "sorted"]


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
    return [(m, k, statistics.median(ts), nb, fl, ts) for m, k, _, nb, fl, ts, _ in variants]


def spread(num, den):
    """Median and range over rounds of num[r] / den[r]: the two were timed in the
    same round, so a load that comes and goes cancels."""
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def kernel_table(device, dtype, bandwidth, rate, repeats):
    """Each routed layout at every paper width for SAL-16 and SAL-4, beside BP and
    SAL-1; the fastest per shape is the one with the smallest median over rounds of
    its time over onehot's in the same round (the table pick_kernel follows), and
    auto's row is the layout pick_kernel chooses there."""
    best_rows = []
    print(f"{'shape':<17} {'method':<7} {'kernel':<8} {'step':>11} {'vs best':>17} "
          f"{'ratio':>6} {'vs BP':>6}   (vs best: median [min-max] over {repeats} rounds; "
          "ratio: step / its floor)")
    for name in TABLE_SHAPES:
        d_in, _, _, _, width, _, _, batch = SHAPES[name]
        rows = bench_shape(name, device, dtype, ["sal", "bp"], ROUTED_KERNELS, [1] + TABLE_AREAS,
                           repeats=repeats)
        bp = next(r for r in rows if r[0] == "bp-1")
        for n in TABLE_AREAS:
            mine = {r[1]: r for r in rows if r[0] == f"sal-{n}"}
            ref = mine["onehot"][5]
            best = min(mine, key=lambda k: spread(mine[k][5], ref)[0])
            auto = pick_kernel("auto", n, batch, d_in, width)
            for kernel in ROUTED_KERNELS + ["auto"]:
                method, _, t, nbytes, flops, ts = mine[auto if kernel == "auto" else kernel]
                fb, ff = nbytes / bandwidth, flops / rate
                med, lo, hi = spread(ts, mine[best][5])
                label = f"auto:{auto[:3]}" if kernel == "auto" else kernel
                note = "" if kernel != "auto" else \
                    (f"  floor {max(fb, ff) * 1e6:.0f}µs ({'bytes' if fb >= ff else 'FLOPs'})"
                     f" = {max(fb, ff) / bp[2]:.2f}x BP's step")
                print(f"{name:<17} {method:<7} {label:<8} {t * 1e6:>9.0f}µs "
                      f"{med:>5.2f} [{lo:.2f}-{hi:.2f}] {t / max(fb, ff):>6.2f} "
                      f"{t / bp[2]:>6.2f}{note}")
            best_rows.append((d_in, n, best))
        for r in rows:
            if r[0] in ("bp-1", "sal-1"):
                fl = max(r[3] / bandwidth, r[4] / rate)
                print(f"{name:<17} {r[0]:<7} {'-':<8} {r[2] * 1e6:>9.0f}µs {'':>17} "
                      f"{r[2] / fl:>6.2f} {r[2] / bp[2]:>6.2f}")
    print("measured best (n_areas, d_in): kernel, at batch 16, width 256:")
    for d_in, n, kernel in best_rows:
        print(f"    ({n}, {d_in}): \"{kernel}\",")


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
    p.add_argument("--kernel-table", action="store_true", help="time onehot/gather/sorted "
                   "and auto for SAL-16 and SAL-4 at every paper input width (run with "
                   "--threads 1) and print the fastest per shape")
    p.add_argument("--repeats", type=int, default=7, help="rounds per variant")
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
    if a.kernel_table:
        return kernel_table(device, dtype, bandwidth, rate, a.repeats)
    print(f"{'shape':<17} {'method':<7} {'kernel':<7} {'step':>10} {'bytes fl.':>10} "
          f"{'FLOP fl.':>10} {'ratio':>7} {'vs BP':>6}")
    for name in shapes:
        counts = [int(n) for n in a.n_areas.split(",")] if a.n_areas else None
        rows = bench_shape(name, device, dtype, a.methods.split(","), a.kernels.split(","), counts,
                           repeats=a.repeats)
        bp_time = next((r[2] for r in rows if r[0].startswith("bp")), None)
        for method, kernel, t, nbytes, flops, _ in rows:
            fb, ff = nbytes / bandwidth, flops / rate
            vs = f"{t / bp_time:.2f}" if bp_time else "-"
            print(f"{name:<17} {method:<7} {kernel:<7} {t * 1e6:>8.1f}µs {fb * 1e6:>8.1f}µs "
                  f"{ff * 1e6:>8.1f}µs {t / max(fb, ff):>7.2f} {vs:>6}")


if __name__ == "__main__":
    main()
