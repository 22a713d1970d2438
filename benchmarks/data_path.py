"""Is the data path ever the bottleneck? (CPU, the paper's batch 16.)

1. One epoch of the trainer's own data path (`sal_ray.data.batches`, what
   `train.train_epoch` runs: `epoch_order`, then `batch_indices` and
   `gather_rows` per batch) over a synthetic 60,000 x 1,024 float32 set
   (CIFAR-10's size after preprocessing), batches only, against one training
   step of the Convergence net (1024 -> 256 -> 10, ReLU, plain torch forward +
   backward + SGD) at the same batch size. Floor: one contiguous copy of the
   whole set (every batch path must move each row once).
2. `load()` of a cached 60,000 x 1,024 set through the public API (cache read,
   CRC check, [-1, 1] normalisation). Floor: reading the cache file's bytes.

    .venv/bin/python benchmarks/data_path.py [--steps 3000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sal_ray.data import DATASETS_INFO, batch_indices, epoch_order, gather_rows, load
from sal_ray.data import cache as data_cache

N, D, HIDDEN, CLASSES, BATCH = 60_000, 1_024, 256, 10, 16


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def bench_batches(x, y, repeats):
    def epoch():  # as train.train_epoch takes its batches (one process)
        for idx_B in batch_indices(epoch_order(0, 1, len(y), x.device), BATCH):
            xb, yb = gather_rows(x, y, idx_B)
    return best_of(epoch, repeats)


def bench_model_step(steps, repeats):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, HIDDEN), torch.nn.ReLU(),
                              torch.nn.Linear(HIDDEN, CLASSES))
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    xb, yb = torch.randn(BATCH, D), torch.randint(0, CLASSES, (BATCH,))

    def run():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    run()  # warm-up
    return best_of(run, repeats)


def bench_cached_load(repeats):
    meta = DATASETS_INFO["cifar10"]  # input_dim 1024
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / meta.folder
        n_val = 10_000
        arrays = {"train": (rng.integers(0, 256, (N - n_val, D), dtype=np.uint8),
                            rng.integers(0, CLASSES, N - n_val).astype(np.int64)),
                  "val": (rng.integers(0, 256, (n_val, D), dtype=np.uint8),
                          rng.integers(0, CLASSES, n_val).astype(np.int64))}
        data_cache.write(meta, folder, arrays, source={})
        files = [data_cache.cache_path(folder, s) for s in data_cache.SPLITS]
        size = sum(os.path.getsize(f) for f in files)

        def read_bytes():
            for f in files:
                Path(f).read_bytes()

        def public_load():
            s = load("cifar10", root=root, expected_samples=N)
            assert s.x_train.shape == (N - n_val, D)
        return best_of(public_load, repeats), best_of(read_bytes, repeats), size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000, help="model steps per timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_batches = -(-N // BATCH)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; set {N:,} x {D:,} float32, batch {BATCH}")

    x, y = torch.randn(N, D), torch.randint(0, CLASSES, (N,))
    (b_best, b_med) = bench_batches(x, y, args.repeats)
    (f_best, _) = best_of(lambda: x.clone(), args.repeats)
    (s_best, s_med) = bench_model_step(args.steps, args.repeats)
    step_us = s_best / args.steps * 1e6
    batch_us = b_best / n_batches * 1e6

    print("\n1. batches vs model step (best of repeats; median in brackets)")
    print(f"{'what':44} {'per epoch':>12} {'per batch':>12}")
    print(f"{'trainer batches (randperm + index_select)':44} {b_best * 1e3:9.1f} ms "
          f"{batch_us:9.1f} µs   [{b_med / n_batches * 1e6:.1f} µs]")
    print(f"{'floor: one contiguous copy of the set':44} {f_best * 1e3:9.1f} ms "
          f"{f_best / n_batches * 1e6:9.1f} µs")
    print(f"{'model step 1024-256-10 fwd+bwd+SGD':44} {step_us * n_batches / 1e3:9.1f} ms "
          f"{step_us:9.1f} µs   [{s_med / args.steps * 1e6:.1f} µs]")
    print(f"batch production / model step = {batch_us / step_us:.3f} "
          f"({100 * batch_us / (batch_us + step_us):.1f}% of an epoch's time)")

    (l_best, l_med), (r_best, _), size = bench_cached_load(args.repeats)
    print(f"\n2. load() of a cached {N:,} x {D:,} set ({size / 2**20:.0f} MiB of uint8 on disk)")
    print(f"{'load(): read + CRC check + normalise':44} {l_best * 1e3:9.1f} ms   "
          f"[median {l_med * 1e3:.1f} ms]")
    print(f"{'floor: read the cache files bytes':44} {r_best * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
