"""Scaling benchmark: SAL, BP and MoE at the Width protocol's shapes (depth 64,
widths 1024/2048/4096, batch 16 and 1024) and the Digits two-layer net, each
beside its floor. Torch only (no Ray), so it runs on the GPU machines as is.

    python benchmarks/scale.py                         # every shape that fits here
    python benchmarks/scale.py --widths 4096 --batches 1024 --methods sal
    python benchmarks/scale.py --workers 2             # + data-parallel step, gloo/nccl

Per row: step time (one optimizer step on one batch, median of 5 blocks),
samples/s, peak accelerator memory during the steps (params + grads + the step's
temporaries; '-' on CPU), the floors and `ratio` = time / max(bytes floor, FLOP
floor) from benchmarks/step.py (1.0 is the hardware's limit), and `vs BP`.
The Digits shape runs on the CPU too when CUDA is present: GPU against CPU.

A shape is skipped, with the reason, when its estimated memory exceeds what
this device has free, or (CPU only) its FLOP floor exceeds --max-step-s: those
need a GPU. `--workers N` times the data-parallel step of sal_ray.distributed
(shard, rule, all-reduce, SGD) on N spawned workers, one GPU each (nccl) or one
CPU thread each (gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from step import floors, measure_rates, sync, timed  # noqa: E402  (also puts the repo on sys.path)

from sal_ray.config import Config  # noqa: E402
from sal_ray.models import Architecture, build_net, param_counts  # noqa: E402
from sal_ray.train import Run, make_optimizer, make_rule  # noqa: E402

METHODS = ("sal", "bp", "moe")
DIGITS = "digits-2x256-b16"


def shapes(widths, batches) -> dict[str, tuple]:
    """name: (input dim, classes, arch, depth, width, n_areas, routed, batch)."""
    out = {DIGITS: (64, 10, "mlp", 2, 256, 16, "first", 16)}  # Table 2, SAL-16
    for w in widths:  # Width protocol on CIFAR-10 gray (1024 inputs), 4 areas
        for b in batches:
            out[f"d64-w{w}-b{b}"] = (1024, 10, "residual", 64, w, 4, "hidden", b)
    return out


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
    t = timed(lambda: train_step(run, xs, ys, len(y), group), group.device)
    peak = torch.cuda.max_memory_allocated(group.device) if group.device.type == "cuda" else None
    return {"shape": name, "method": method, "kernel": kernel, "device": str(group.device),
            "dtype": dtype_name, "workers": group.world, "batch": shape[7], "step_s": t,
            "samples_per_s": shape[7] / t, "peak_bytes": peak}


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
        print(f"{'shape':<17} {'method':<6} {'device':<7} {'wk':>2} {'step':>12} {'samples/s':>10} "
              f"{'peak mem':>9} {'bytes fl.':>11} {'FLOP fl.':>11} {'ratio':>6} {'vs BP':>6}")
    us = lambda s: "-" if s is None else f"{s * 1e6:.1f}µs"  # noqa: E731
    for r in rows:
        if "skipped" in r:
            print(f"{r['shape']:<17} {r['method']:<6} {r['device'][:7]:<7}  skipped: {r['skipped']}")
            continue
        peak = f"{r['peak_bytes'] / 2**30:.2f}GiB" if r.get("peak_bytes") else "-"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        vs = f"{r['vs_bp']:.2f}" if "vs_bp" in r else "-"
        print(f"{r['shape']:<17} {r['method']:<6} {r['device'][:7]:<7} {r['workers']:>2} "
              f"{us(r['step_s']):>12} {r['samples_per_s']:>10,.0f} {peak:>9} "
              f"{us(r.get('bytes_floor_s')):>11} {us(r.get('flop_floor_s')):>11} {ratio:>6} {vs:>6}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", help="float32, float64 or bfloat16 (speed only: "
                   "lr 1e-4 updates fall below bf16's resolution, so it does not train)")
    p.add_argument("--widths", default="1024,2048,4096")
    p.add_argument("--batches", default="16,1024")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--kernel", default="auto")
    p.add_argument("--no-digits", action="store_true")
    p.add_argument("--max-step-s", type=float, default=2.0, help="CPU: skip shapes whose FLOP "
                   "floor per step exceeds this")
    p.add_argument("--workers", type=int, default=1, help="also time the data-parallel step on "
                   "this many spawned workers (GPUs with nccl, else CPU threads with gloo)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="append the rows to this JSON-lines file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    table = shapes([int(w) for w in a.widths.split(",") if w],
                   [int(b) for b in a.batches.split(",") if b])
    if a.no_digits:
        table.pop(DIGITS)
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
    if a.workers > 1:
        from sal_ray.distributed import spawn
        use_gpu = device.type == "cuda"
        if use_gpu and torch.cuda.device_count() < a.workers:
            print(f"--workers {a.workers}: only {torch.cuda.device_count()} GPU(s) here; skipped")
        else:
            for r in [r for r in rows if "skipped" not in r and r["device"] == str(device)]:
                rows.append(spawn(_dp_worker, a.workers, r["shape"], table[r["shape"]],
                                  r["method"], a.dtype, a.kernel, use_gpu=use_gpu))
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
