"""The 1B-parameter net end to end, through Ray Train, on the CPU: the Width
protocol's net at width 4096, depth 64 (residual, tanh), BP and SAL-1, built,
stepped, checkpointed, one worker SIGKILLed and resumed on another worker count,
and its weights compared with an uninterrupted run's. SAL-2 (d_f=10) on two
layer-parallel workers runs only if the memory budget admits it; otherwise the
refusal is printed with the estimate, and the measured peaks that back it.

    python benchmarks/full_size.py                     # width 4096, depth 64
    python benchmarks/full_size.py --width 256 --depth 8 --memory-limit 4e9   # a smoke run

Data: the bundled Digits set (64 inputs, 10 classes), at most --samples samples
per split (`max_samples`), so an epoch is --samples / --batch steps: the figures
are about size, not accuracy. Per configuration it prints: build + init time
(worker start to the first epoch, rank 0), each worker's peak RSS (VmHWM) beside
the budget's estimate, the step time beside its floors (the bytes a step must
move over the measured copy bandwidth, its FLOPs over the measured matmul rate,
at the worker's thread count), the bytes sent per step, the checkpoint's size,
its write time inside the worker and its read time (mmap + touching every
tensor), the bytes each worker wrote per checkpoint (/proc/self/io wchar: one
write means no copy), and the multi-GB copies of the state. One run, on a shared
machine: every figure is from this run only.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from step import measure_rates  # noqa: E402  (also puts the repo on sys.path)

from sal_ray import budget  # noqa: E402
from sal_ray.config import Config, ConfigError  # noqa: E402
from sal_ray.distributed.layer_checkpoint import read_checkpoint  # noqa: E402
from sal_ray.distributed.layouts import check_memory, worker_estimates  # noqa: E402
from sal_ray.models import Architecture, param_counts  # noqa: E402
from sal_ray.trainer import Callback  # noqa: E402
from sal_ray.tracking.weights import checkpoint_reference  # noqa: E402

GB = 1e9


# ---- what every worker records (pickled by value: this is __main__) ---------------

def _io_wchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024


def record_worker(folder: str, metrics: dict) -> dict:
    """`report_metrics` hook: runs on every worker after each epoch's checkpoint."""
    import ray.train
    rank = ray.train.get_context().get_world_rank()
    row = {"rank": rank, "pid": os.getpid(), "epoch": int(metrics["epoch"]), "t": time.time(),
           "vm_hwm": _vm_hwm(), "wchar": _io_wchar()}
    with open(os.path.join(folder, f"worker-{rank}-{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    return metrics


class Timings(Callback):
    """Rank 0: worker start to first epoch (imports, build, init, resume), and the
    checkpoint write time (on_epoch runs right after the save)."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_start(self, run) -> None:
        import psutil
        self.t0 = time.perf_counter()
        self.start_s = time.time() - psutil.Process().create_time()
        self.prior = run.history[-1]["wall_time_s"] if run.history else 0.0  # a resumed run's

    def on_epoch(self, m: dict) -> None:
        row = {"start_s": self.start_s, "epoch": int(m["epoch"]), "epoch_time_s": m["epoch_time_s"],
               "save_s": time.perf_counter() - self.t0 - (m["wall_time_s"] - self.prior)}
        with open(os.path.join(self.folder, "rank0.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


def read_rows(folder: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jsonl"):
            with open(os.path.join(folder, name)) as f:
                rows += [{**json.loads(line), "file": name} for line in f]
    return rows


# ---- figures ------------------------------------------------------------------------

def step_floors(cfg: Config, arch: Architecture, bandwidth: float, flops_rate: float):
    """(bytes, FLOPs, floor seconds): SAL reads the used areas' weights in the
    forward, writes their gradients, and SGD reads both and writes the weights (3
    passes; BP 4, its backward reads the weights again); FLOPs 2 products per layer
    for SAL (forward, update), 3 for BP."""
    B, s = cfg.optim.batch_size, 4
    used = sum(min(B, sp.n_areas) * (sp.d_in * sp.d_out + sp.d_out) for sp in arch.layers)
    macs = sum(B * sp.d_in * sp.d_out for sp in arch.layers)
    passes, products = (3, 2) if cfg.model.method == "sal" else (4, 3)
    nbytes, flops = passes * used * s, 2 * products * macs
    return nbytes, flops, max(nbytes / bandwidth, flops / flops_rate)


def sent_per_step(cfg, arch, layout, world) -> int:
    if world == 1:
        return 0
    c = param_counts(arch, cfg.model.method)
    if layout == "data":
        return 2 * (world - 1) * (c.total + c.router) * 4
    from sal_ray.distributed.partition import stage_bounds
    cuts = stage_bounds(arch, cfg.model.method, world)[1:-1]
    return cfg.optim.batch_size * 4 * (sum(arch.layers[b - 1].d_out for b in cuts)
                                       + (world - 1) * arch.n_classes)


def weights_digest(folder: str) -> tuple[str, dict]:
    """SHA-256 over the net's tensors (sorted names, raw bytes) and the tensors
    themselves (mmap), from a core checkpoint or layer-layout shards."""
    state = read_checkpoint(folder)
    h = hashlib.sha256()
    for k in sorted(state["net"]):
        h.update(k.encode())
        h.update(_bytes(state["net"][k]))
    return h.hexdigest(), state["net"]


def _bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().view(torch.uint8).numpy())


def read_time(folder: str) -> float:
    """Read a checkpoint (mmap) and touch every tensor, as a resume does."""
    t0 = time.perf_counter()
    state = read_checkpoint(folder)
    total = sum(float(v.double().sum()) if v.numel() < (1 << 16) else float(v.sum())
                for v in state["net"].values())
    assert total == total, "a NaN in the checkpoint"
    return time.perf_counter() - t0


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)


# ---- one run through Ray Train --------------------------------------------------------

def train(cfg: Config, workers: int, layout: str, storage: str, name: str, notes: str,
          resume_from: str | None = None, kill_after: int | None = None) -> dict:
    """fit_distributed on `workers` CPU workers; with `kill_after`, SIGKILL the
    last worker once epoch `kill_after`'s checkpoint is in Ray's storage."""
    from sal_ray.distributed import fit_distributed
    os.makedirs(notes, exist_ok=True)
    killed = {}
    if kill_after is not None:
        def killer():
            want = os.path.join(storage, name, f"epoch_{kill_after:05d}")
            while not killed.get("stop"):
                rows = [r for r in read_rows(notes) if "rank" in r]
                victims = [r for r in rows if r["rank"] == workers - 1 and r["epoch"] == kill_after]
                files = os.listdir(want) if os.path.isdir(want) else []
                if victims and "stages.json" in files and \
                        sum(f.startswith("stage-") for f in files) == workers:
                    time.sleep(2.0)  # into the next epoch
                    os.kill(victims[0]["pid"], signal.SIGKILL)
                    killed.update(pid=victims[0]["pid"], t=time.time())
                    return
                time.sleep(0.2)
        threading.Thread(target=killer, daemon=True).start()
    t0 = time.perf_counter()
    try:
        result = fit_distributed(cfg, workers, storage_path=storage, name=name, layout=layout,
                                 callbacks=[Timings(notes)], verbose=False,
                                 cpus_per_worker=2 / workers, keep_checkpoints=1,
                                 resume_from=resume_from,
                                 report_metrics=functools.partial(record_worker, notes))
        status, path = result.status, result.checkpoint_path
    except Exception as e:  # noqa: BLE001 - the killed run is expected to fail here
        status, path = f"failed: {type(e).__name__}", None
    killed["stop"] = True
    return {"status": status, "checkpoint": path, "wall_s": time.perf_counter() - t0,
            "killed": killed.get("pid"), "rows": read_rows(notes)}


def report(tag, cfg, arch, workers, layout, out, rates, ests) -> dict:
    rows = [r for r in out["rows"] if "rank" in r]
    rank0 = [r for r in out["rows"] if "start_s" in r]
    threads = max(1, 2 // workers)
    bw, fl = rates[threads]
    nbytes, flops, floor = step_floors(cfg, arch, bw, fl)
    steps = -(-min(cfg.data.max_samples, 10 ** 9) // cfg.optim.batch_size)
    step_s = [r["epoch_time_s"] / steps for r in rank0]
    peaks = {}
    for r in rows:
        peaks[r["rank"]] = max(peaks.get(r["rank"], 0), r["vm_hwm"])
    wchar = {}
    by_rank = {}
    for r in sorted(rows, key=lambda r: (r["rank"], r["t"])):
        by_rank.setdefault(r["rank"], []).append(r)
    for rank, rs in by_rank.items():
        wchar[rank] = [b["wchar"] - a["wchar"] for a, b in zip(rs, rs[1:])]
    ck = out["checkpoint"]
    size = folder_bytes(ck) if ck else None
    fig = {"config": tag, "workers": workers, "layout": layout, "status": out["status"],
           "params": param_counts(arch, cfg.model.method).as_dict(),
           "start_to_first_epoch_s": rank0[0]["start_s"] if rank0 else None,
           "step_s": step_s, "floor_s": floor, "floor_bytes": nbytes, "floor_flops": flops,
           "bandwidth": bw, "matmul_rate": fl, "threads": threads,
           "sent_per_step": sent_per_step(cfg, arch, layout, workers),
           "peak_rss": peaks, "estimate": [e.total for e in ests],
           "checkpoint_bytes": size, "save_s": [r["save_s"] for r in rank0],
           "wchar_between_epochs": wchar, "wall_s": out["wall_s"]}
    if ck:
        fig["read_s"] = read_time(ck)
    print(f"\n== {tag}: {workers} worker(s), {layout} layout: {out['status']}, "
          f"{out['wall_s']:.0f} s through Ray Train")
    print(f"  params active {fig['params']['params_active']:,}, total "
          f"{fig['params']['params_total']:,}")
    if rank0:
        print(f"  worker start to first epoch (imports, build, init): {rank0[0]['start_s']:.1f} s")
    for rank in sorted(peaks):
        print(f"  worker {rank}: peak RSS {peaks[rank] / GB:.2f} GB, budget estimate "
              f"{ests[rank].total / GB:.2f} GB (ratio {peaks[rank] / ests[rank].total:.2f})")
    for r0, s in zip(rank0, step_s):
        print(f"  epoch {r0['epoch']} step {s:.2f} s; floor {floor:.2f} s (bytes {nbytes / GB:.1f} GB / "
              f"{bw / GB:.1f} GB/s = {nbytes / bw:.2f} s, FLOPs {flops / 1e9:.0f} G / "
              f"{fl / 1e9:.0f} GFLOP/s = {flops / fl:.2f} s, {threads} thread(s)); "
              f"ratio {s / floor:.2f}")
    print(f"  sent per step: {fig['sent_per_step']:,} bytes (from the shapes)")
    if size:
        print(f"  checkpoint {size / GB:.2f} GB; write (in the worker) "
              f"{', '.join(f'{s:.1f}' for s in fig['save_s'])} s; read (mmap + touch) "
              f"{fig['read_s']:.1f} s")
    for rank, w in wchar.items():
        if w:
            print(f"  worker {rank} wrote {', '.join(f'{x / GB:.2f}' for x in w)} GB between "
                  "epochs (its checkpoint shard once each: persisting to Ray's storage is a "
                  "hard link, no copy)")
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--samples", type=int, default=32, help="max_samples per split")
    p.add_argument("--memory-limit", type=float, default=12e9,
                   help="bytes all workers of one run may use together (default 12 GB: "
                        "half of this shared 24 GB machine)")
    p.add_argument("--storage", default=None, help="Ray storage folder (default: a temp dir)")
    p.add_argument("--only", default="bp,sal1,kill,sal2", help="which parts to run")
    p.add_argument("--json", default=None, help="append the figures here")
    args = p.parse_args(argv)
    import ray
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20,
             log_to_driver=False)
    base = Config().replace(arch="residual", depth=args.depth, width=args.width,
                            routed="hidden", dataset="digits", batch_size=args.batch,
                            max_samples=args.samples, lr=1e-3, eval_batch_size=64,
                            memory_limit=int(args.memory_limit))
    rates = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates[threads] = measure_rates(torch.device("cpu"), torch.float32)
    torch.set_num_threads(2)
    print(f"machine: {os.cpu_count()} cores, {budget.available() / GB:.1f} GB available, "
          f"load {os.getloadavg()[0]:.1f}; copy bandwidth / matmul rate: "
          + "; ".join(f"{t} thread(s) {b / GB:.1f} GB/s, {f / 1e9:.0f} GFLOP/s"
                      for t, (b, f) in rates.items()))
    root = args.storage or tempfile.mkdtemp(prefix="sal-full-size-")
    figs, only = [], set(args.only.split(","))
    try:
        if "bp" in only:
            cfg = base.replace(method="bp", n_areas=1, epochs=1)
            arch = Architecture.from_config(cfg, 64, 10)
            out = train(cfg, 1, "data", root, "bp", os.path.join(root, "notes-bp"))
            figs.append(report("BP", cfg, arch, 1, "data", out, rates,
                               worker_estimates(cfg, "data", 1)))
            shutil.rmtree(os.path.join(root, "bp"), ignore_errors=True)
        if "sal1" in only or "kill" in only:
            cfg = base.replace(method="sal", n_areas=1, epochs=2)
            arch = Architecture.from_config(cfg, 64, 10)
            ref = train(cfg, 1, "layer", root, "sal1-ref", os.path.join(root, "notes-ref"))
            figs.append(report("SAL-1 (uninterrupted, reference)", cfg, arch, 1, "layer", ref,
                               rates, worker_estimates(cfg, "layer", 1)))
        if "kill" in only:
            cut = train(cfg, 2, "layer", root, "sal1-killed", os.path.join(root, "notes-cut"),
                        kill_after=1)
            figs.append(report("SAL-1, 2 workers, worker 1 SIGKILLed in epoch 2", cfg, arch, 2,
                               "layer", {**cut, "checkpoint": None}, rates,
                               worker_estimates(cfg, "layer", 2)))
            from_dir = os.path.join(root, "sal1-killed", "epoch_00001")
            print(f"  killed pid {cut['killed']}; run ended {cut['status']}; resuming from "
                  f"{from_dir} on 1 worker")
            res = train(cfg, 1, "layer", root, "sal1-resumed", os.path.join(root, "notes-res"),
                        resume_from=from_dir)
            figs.append(report("SAL-1 resumed on 1 worker (epoch 2)", cfg, arch, 1, "layer", res,
                               rates, worker_estimates(cfg, "layer", 1)))
            t0 = time.perf_counter()
            h_ref, w_ref = weights_digest(ref["checkpoint"])
            h_res, w_res = weights_digest(res["checkpoint"])
            diff = max(float((w_ref[k] - w_res[k]).abs().max()) for k in w_ref)
            same_keys = set(w_ref) == set(w_res)
            print(f"\n== kill and resume (2 workers -> SIGKILL -> 1 worker) against the "
                  f"uninterrupted run: SHA-256 {h_res[:16]} vs {h_ref[:16]} "
                  f"({'identical' if h_res == h_ref else 'different'}), max |diff| {diff:.3g}, "
                  f"same tensors: {same_keys} ({time.perf_counter() - t0:.0f} s to compare)")
            figs.append({"config": "kill-resume", "sha_ref": h_ref, "sha_resumed": h_res,
                         "max_abs_diff": diff, "killed_pid": cut["killed"]})
            ref_info = checkpoint_reference(res["checkpoint"])
            print(f"  large-weights rule: {ref_info['bytes'] / GB:.2f} GB > 256 MB, so MLflow "
                  f"gets a reference (path, size, sha256 {ref_info['sha256'][:16]}, "
                  f"{ref_info['hash_s']:.1f} s to hash) instead of an upload")
            figs.append({"config": "reference", **ref_info})
        if "sal2" in only:
            cfg = base.replace(method="sal", n_areas=2, d_f=10, epochs=1)
            arch = Architecture.from_config(cfg, 64, 10)
            ests = worker_estimates(cfg, "layer", 2)
            measured = [f for f in figs if f.get("config", "").startswith("SAL-1, 2 workers")]
            try:
                check_memory(cfg, "layer", 2)
                out = train(cfg, 2, "layer", root, "sal2", os.path.join(root, "notes-sal2"))
                figs.append(report("SAL-2 d_f=10", cfg, arch, 2, "layer", out, rates, ests))
            except ConfigError as e:
                print(f"\n== SAL-2 (d_f=10) on 2 layer-parallel workers: refused before any "
                      f"allocation:\n  {e}")
                if measured:
                    m = measured[0]
                    scale = [ests[r].state / e1.state for r, e1 in
                             enumerate(worker_estimates(base.replace(method="sal", n_areas=1),
                                                        "layer", 2))]
                    proj = [m["peak_rss"][r] * scale[r] for r in sorted(m["peak_rss"])]
                    print(f"  from measured peaks: SAL-1's 2 workers peaked at "
                          f"{', '.join(f'{v / GB:.2f}' for v in m['peak_rss'].values())} GB; "
                          f"SAL-2 holds {scale[0]:.2f}x the state per worker, so "
                          f"{', '.join(f'{v / GB:.2f}' for v in proj)} GB = {sum(proj) / GB:.1f} GB "
                          f"together, over the {args.memory_limit / GB:.0f} GB limit")
                figs.append({"config": "SAL-2 d_f=10", "refused": str(e),
                             "estimate": [x.total for x in ests]})
    finally:
        if args.json:
            with open(args.json, "a") as f:
                for fig in figs:
                    f.write(json.dumps(fig, default=str) + "\n")
        if not args.storage:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
