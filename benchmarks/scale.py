"""Scaling benchmark: SAL, BP and MoE at the Width protocol's shapes (depth 64,
widths 1024/2048/4096, batch 16 and 1024) and the Digits two-layer net, each
beside its floor. Torch only (no Ray), so it runs on the GPU machines as is.

    python benchmarks/scale.py                         # every shape that fits here
    python benchmarks/scale.py --widths 4096 --batches 1024 --methods sal
    python benchmarks/scale.py --workers 2             # + data-parallel step, gloo/nccl
    python benchmarks/scale.py --workers 2 --layout data,layer --depth 8 --widths 512 \
        --batches 64 --no-digits --threads 1           # + layer-parallel SAL step
    python benchmarks/scale.py --comm --workers 2,4,8  # bytes sent per step, no timing

Per row: step time (one optimizer step on one batch, median of 5 blocks),
samples/s, peak accelerator memory during the steps (params + grads + the step's
temporaries; '-' on CPU), the floors and `ratio` = time / max(bytes floor, FLOP
floor) from benchmarks/step.py (1.0 is the hardware's limit), and `vs BP`.
The Digits shape runs on the CPU too when CUDA is present: GPU against CPU.

A shape is skipped, with the reason, when its estimated memory exceeds what
this device has free, or (CPU only) its FLOP floor exceeds --max-step-s: those
need a GPU. `--workers N` times the multi-worker step of sal_ray.distributed on
N spawned workers, one GPU each (nccl) or one CPU thread each (gloo), for each
`--layout`: data (shard, rule, gradient all-reduce, SGD; every method) or layer
(SAL only: activations forward stage to stage, E_top broadcast, each stage's
local update and SGD). Beside each multi-worker time: the bytes the workers send
per step together, from the shapes (not measured), for W workers, batch B, C
classes, element size s:

    data:  2 (W−1) · P · s        ring all-reduce of the P trained parameters
                                  (all areas, biases, selectors or gates)
    layer: B · s · (Σ_cuts d_cut + (W−1) · C)
                                  one batch × width activation per stage boundary
                                  (d_cut: the width there) + E_top to W−1 stages
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from step import floors, measure_rates, sync, timed  # noqa: E402  (also puts the repo on sys.path)

from sal_ray.config import Config  # noqa: E402
from sal_ray.models import Architecture, build_net, param_counts  # noqa: E402
from sal_ray.trainer import Run, make_optimizer, make_rule  # noqa: E402

METHODS = ("sal", "bp", "moe")
LAYOUTS = ("data", "layer")
DIGITS = "digits-2x256-b16"


def shapes(widths, batches, depth=64) -> dict[str, tuple]:
    """name: (input dim, classes, arch, depth, width, n_areas, routed, batch)."""
    out = {DIGITS: (64, 10, "mlp", 2, 256, 16, "first", 16)}  # Table 2, SAL-16
    for w in widths:  # Width protocol on CIFAR-10 gray (1024 inputs), 4 areas
        for b in batches:
            out[f"d{depth}-w{w}-b{b}"] = (1024, 10, "residual", depth, w, 4, "hidden", b)
    return out


def arch_of(shape, method) -> Architecture:
    return Architecture.from_config(config(shape, method), shape[0], shape[1])


def sent_bytes(shape, method, layout, world, elem) -> int | None:
    """Bytes all workers send per step together (module doc's formulas); None
    where the layout does not serve the method."""
    if world == 1:
        return 0
    arch, batch, C = arch_of(shape, method), shape[7], shape[1]
    if layout == "data":
        c = param_counts(arch, method)
        return 2 * (world - 1) * (c.total + c.router) * elem
    if method != "sal":
        return None
    from sal_ray.distributed.partition import balanced_bounds, layer_sizes
    cuts = balanced_bounds(layer_sizes(arch, method), world)[1:-1]
    return batch * elem * (sum(arch.layers[b - 1].d_out for b in cuts) + (world - 1) * C)


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def config(shape, method, kernel="auto") -> Config:
    d_in, C, arch, depth, width, n_areas, routed, batch = shape
    return Config().replace(method=method, arch=arch, depth=depth, width=width,
                            n_areas=1 if method == "bp" else n_areas, routed=routed,
                            kernel=kernel, lr=1e-4, batch_size=batch)


def estimate_bytes(shape, method, elem) -> int:
    """Params + grads + frozen buffers + activations kept for the update, +20%."""
    d_in, C, *_ = shape
    batch, width, depth = shape[7], shape[4], shape[3]
    c = param_counts(Architecture.from_config(config(shape, method), d_in, C), method)
    trained = c.total + c.router
    activations = 8 * batch * max(width, d_in) * depth  # x, u, φ(u), h per layer, twice
    temporaries = 4 * batch * width * width if method != "bp" else 0  # gather kernel's W[areas]
    return int(1.2 * elem * (2 * trained + c.fixed + activations + min(temporaries, 1 << 23)))


def free_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return int(0.6 * info.get("MemAvailable", info["MemFree"]))


def why_skip(shape, method, device, elem, rate, max_step_s) -> str | None:
    need, have = estimate_bytes(shape, method, elem), free_bytes(device)
    if need > have:
        return f"needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB free here: needs a GPU"
    if device.type == "cpu":
        net_flops = 2 * 3 * shape[7] * sum(  # 3 products per layer (BP), 2 FLOPs each
            s.d_in * s.d_out for s in Architecture.from_config(
                config(shape, method), shape[0], shape[1]).layers)
        if net_flops / rate > max_step_s:
            return f"FLOP floor {net_flops / rate:.1f}s/step > --max-step-s {max_step_s}: needs a GPU"
    return None


def batch_of(shape, device, dtype, batch=None):
    g = torch.Generator().manual_seed(0)
    b = batch or shape[7]
    x = torch.randn(b, shape[0], generator=g).to(device, dtype)
    y = torch.randint(0, shape[1], (b,), generator=g).to(device)
    return x, y


def bench_single(name, shape, method, device, dtype, kernel, rates):
    cfg = config(shape, method, kernel)
    net = build_net(cfg, shape[0], shape[1]).to(device=device, dtype=dtype)
    opt, rule = make_optimizer(net, cfg), make_rule(cfg)
    x, y = batch_of(shape, device, dtype)

    def step():
        rule(net, x, y)
        opt.step()

    step()  # first step allocates the grads; measure memory from here on
    peak = None
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    t = timed(step, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    nbytes, flops = floors(net, method, shape[7], x.element_size())
    bandwidth, rate = rates
    floor = max(nbytes / bandwidth, flops / rate)
    grad_bytes = sum(p.numel() for p in net.parameters()) * x.element_size()
    del net, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"shape": name, "method": method, "kernel": kernel, "device": str(device),
            "dtype": str(dtype).split(".")[-1], "workers": 1, "batch": shape[7],
            "step_s": t, "samples_per_s": shape[7] / t, "peak_bytes": peak,
            "bytes_floor_s": nbytes / bandwidth, "flop_floor_s": flops / rate,
            "ratio": t / floor, "grad_bytes": grad_bytes}


def timed_together(fn, group, min_time=0.5, repeats=5):
    """`step.timed` for a step that talks to the other workers: every rank must
    make the same number of calls or the collectives deadlock, so rank 0 picks
    the count and broadcasts it; each block starts at a barrier. Median seconds."""
    fn(); fn(); sync(group.device)  # warm-up
    t0 = time.perf_counter()
    fn()
    sync(group.device)
    one = time.perf_counter() - t0
    n = torch.tensor([max(1, int(min_time / repeats / one))], device=group.device)
    dist.broadcast(n, src=0)
    blocks = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(int(n)):
            fn()
        sync(group.device)
        blocks.append((time.perf_counter() - t0) / int(n))
    return statistics.median(blocks)


def _worker_row(group, name, shape, method, dtype_name, kernel, layout, t):
    peak = torch.cuda.max_memory_allocated(group.device) if group.device.type == "cuda" else None
    elem = torch.finfo(getattr(torch, dtype_name)).bits // 8
    return {"shape": name, "method": method, "kernel": kernel, "device": str(group.device),
            "dtype": dtype_name, "workers": group.world, "layout": layout, "batch": shape[7],
            "step_s": t, "samples_per_s": shape[7] / t, "peak_bytes": peak,
            "sent_bytes": sent_bytes(shape, method, layout, group.world, elem)}


def _dp_worker(group, name, shape, method, dtype_name, kernel):
    """One data-parallel step per call, timed on every rank; rank 0's time returned."""
    from sal_ray.distributed.data_parallel import shard, train_step
    dtype = getattr(torch, dtype_name)
    cfg = config(shape, method, kernel)
    net = build_net(cfg, shape[0], shape[1]).to(device=group.device, dtype=dtype)
    x, y = batch_of(shape, group.device, dtype)
    mine = shard(torch.arange(len(y), device=group.device), group)
    run = Run(cfg, net, make_optimizer(net, cfg), make_rule(cfg), x, y, x, y,
              param_counts(net.arch, method), group.device)
    xs, ys = x[mine], y[mine]
    t = timed_together(lambda: train_step(run, xs, ys, len(y), group), group)
    return _worker_row(group, name, shape, method, dtype_name, kernel, "data", t)


def _lp_worker(group, name, shape, method, dtype_name, kernel):
    """One layer-parallel SAL step per call: this rank builds only its own stage
    (balanced cut), stage 0 reads the batch, every stage gets the labels."""
    from sal_ray.distributed import layer_parallel as lp
    from sal_ray.distributed.partition import balanced_bounds, layer_sizes
    from sal_ray.rules import SALRule
    from sal_ray.trainer import train_step
    dtype = getattr(torch, dtype_name)
    cfg = config(shape, method, kernel)
    arch = arch_of(shape, method)
    bounds = balanced_bounds(layer_sizes(arch, method), group.world)
    stage = lp.Stage(arch, method, bounds[group.rank], bounds[group.rank + 1],
                     kernel=kernel).to(device=group.device, dtype=dtype)
    x, y = batch_of(shape, group.device, dtype)
    run = Run(cfg, stage, make_optimizer(stage, cfg),
              lambda net, xb, yb: lp.stage_grads(net, xb, yb, group, SALRule()),
              x, y, x, y, param_counts(arch, method), group.device)
    xs = x if group.rank == 0 else None
    t = timed_together(lambda: train_step(run, xs, y), group)
    return _worker_row(group, name, shape, method, dtype_name, kernel, "layer", t)


def vs_bp(rows) -> None:
    """Fill each row's `vs_bp`: its step time over BP's at the same shape, device, workers."""
    bp = {(r["shape"], r["device"], r["workers"]): r["step_s"]
          for r in rows if r["method"] == "bp" and "step_s" in r}
    for r in rows:
        ref = bp.get((r["shape"], r["device"], r["workers"]))
        if ref and "step_s" in r:
            r["vs_bp"] = r["step_s"] / ref


def print_rows(rows, header=True):
    if header:
        print(f"{'shape':<17} {'method':<6} {'device':<7} {'wk':>2} {'layout':<6} {'step':>12} "
              f"{'samples/s':>10} {'sent/step':>10} {'peak mem':>9} {'bytes fl.':>11} "
              f"{'FLOP fl.':>11} {'ratio':>6} {'vs BP':>6}")
    us = lambda s: "-" if s is None else f"{s * 1e6:.1f}µs"  # noqa: E731
    for r in rows:
        layout = r.get("layout", "-")
        if "skipped" in r:
            print(f"{r['shape']:<17} {r['method']:<6} {r['device'][:7]:<7} {r['workers']:>2} "
                  f"{layout:<6} skipped: {r['skipped']}")
            continue
        peak = f"{r['peak_bytes'] / 2**30:.2f}GiB" if r.get("peak_bytes") else "-"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        vs = f"{r['vs_bp']:.2f}" if "vs_bp" in r else "-"
        print(f"{r['shape']:<17} {r['method']:<6} {r['device'][:7]:<7} {r['workers']:>2} "
              f"{layout:<6} {us(r['step_s']):>12} {r['samples_per_s']:>10,.0f} "
              f"{fmt_bytes(r.get('sent_bytes', 0)):>10} {peak:>9} "
              f"{us(r.get('bytes_floor_s')):>11} {us(r.get('flop_floor_s')):>11} {ratio:>6} {vs:>6}")


def print_comm(table, methods, worlds, layouts, elem) -> None:
    """Bytes sent per step by all workers together, from the shapes alone."""
    print(f"bytes sent per step, all workers together ({elem}-byte elements; ring all-reduce "
          "for data, activations + E_top for layer)")
    print(f"{'shape':<17} {'method':<6} {'wk':>3} " + " ".join(f"{l:>10}" for l in layouts))
    for name, shape in table.items():
        for method in methods:
            for w in worlds:
                cells = [fmt_bytes(sent_bytes(shape, method, l, w, elem)) for l in layouts]
                print(f"{name:<17} {method:<6} {w:>3} " + " ".join(f"{c:>10}" for c in cells))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", help="float32, float64 or bfloat16 (speed only: "
                   "lr 1e-4 updates fall below bf16's resolution, so it does not train)")
    p.add_argument("--widths", default="1024,2048,4096")
    p.add_argument("--depth", type=int, default=64, help="depth of the width-protocol shapes")
    p.add_argument("--batches", default="16,1024")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--kernel", default="auto")
    p.add_argument("--no-digits", action="store_true")
    p.add_argument("--max-step-s", type=float, default=2.0, help="CPU: skip shapes whose FLOP "
                   "floor per step exceeds this")
    p.add_argument("--workers", default="1", help="also time the multi-worker step on this many "
                   "spawned workers (GPUs with nccl, else CPU threads with gloo); with --comm a "
                   "comma list")
    p.add_argument("--layout", default=None, help="data, layer or data,layer: the multi-worker "
                   "layout(s) --workers times (layer: SAL only); default data (--comm: both)")
    p.add_argument("--comm", action="store_true", help="only print the bytes each layout sends "
                   "per step at every shape, from the shapes (nothing is allocated or timed)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="append the rows to this JSON-lines file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    table = shapes([int(w) for w in a.widths.split(",") if w],
                   [int(b) for b in a.batches.split(",") if b], a.depth)
    if a.no_digits:
        table.pop(DIGITS)
    layouts = [l for l in (a.layout or ("data,layer" if a.comm else "data")).split(",") if l]
    if any(l not in LAYOUTS for l in layouts):
        p.error(f"--layout: each of {', '.join(LAYOUTS)}; got {a.layout}")
    worlds = [int(w) for w in a.workers.split(",") if w]
    if a.comm:
        print_comm(table, a.methods.split(","), worlds, layouts, torch.finfo(dtype).bits // 8)
        return
    if len(worlds) != 1:
        p.error("--workers takes one number unless --comm")
    workers = worlds[0]
    devices = [device] + ([torch.device("cpu")] if device.type == "cuda" else [])
    rates = {d: measure_rates(d, dtype) for d in devices}
    for d in devices:
        where = torch.cuda.get_device_name(d) if d.type == "cuda" else \
            f"CPU, {torch.get_num_threads()} threads"
        print(f"{d}: {where}; {a.dtype}; torch {torch.__version__}; copy "
              f"{rates[d][0] / 1e9:.1f} GB/s, matmul {rates[d][1] / 1e12:.3f} TFLOP/s")
    rows = []
    print_rows([])
    for name, shape in table.items():
        for d in (devices if name == DIGITS else [device]):
            for method in a.methods.split(","):
                skip = why_skip(shape, method, d, torch.finfo(dtype).bits // 8, rates[d][1],
                                a.max_step_s)
                if skip:
                    rows.append({"shape": name, "method": method, "device": str(d),
                                 "workers": 1, "skipped": skip})
                else:
                    rows.append(bench_single(name, shape, method, d, dtype, a.kernel, rates[d]))
                print_rows(rows[-1:], header=False)
    if workers > 1:
        from sal_ray.distributed import spawn
        use_gpu = device.type == "cuda"
        if use_gpu and torch.cuda.device_count() < workers:
            print(f"--workers {workers}: only {torch.cuda.device_count()} GPU(s) here; skipped")
        else:
            singles = [r for r in rows if "skipped" not in r and r["device"] == str(device)]
            for r, layout in [(r, l) for r in singles for l in layouts]:
                if layout == "layer" and r["method"] != "sal":
                    rows.append({**{k: r[k] for k in ("shape", "method", "device")},
                                 "workers": workers, "layout": layout,
                                 "skipped": "the layer layout serves SAL only"})
                elif layout == "layer" and table[r["shape"]][3] < workers:
                    rows.append({**{k: r[k] for k in ("shape", "method", "device")},
                                 "workers": workers, "layout": layout,
                                 "skipped": "fewer layers than workers"})
                else:
                    fn = _lp_worker if layout == "layer" else _dp_worker
                    rows.append(spawn(fn, workers, r["shape"], table[r["shape"]], r["method"],
                                      a.dtype, a.kernel, use_gpu=use_gpu,
                                      threads=a.threads or 1))
                    rows[-1]["speedup"] = r["step_s"] / rows[-1]["step_s"]
                print_rows(rows[-1:], header=False)
    vs_bp(rows)
    print("\nall rows:")
    print_rows(rows)
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    main()
