"""Multi-worker runs on Ray Train's `TorchTrainer` (Train V2, Ray >= 2.51).

Ray only places the workers, starts their process group (gloo on CPU, nccl on
GPU), moves metrics and checkpoints; the training itself is `launch.fit`, the
core's `train.fit` in the data layout (any method) or the layer layout (SAL
only), the same code the torch-only tests and benchmarks run.

    result = fit_distributed(cfg, num_workers=4, use_gpu=True,
                             storage_path="/abs/runs", name="sal-w4096")
    result = fit_distributed(cfg, num_workers=4, use_gpu=True, layout="layer")

Inside a Tune function trainable the same call forwards rank 0's metrics to
Tune (Train's `TuneReportCallback`) and, with a name that is stable per trial
(the default uses the trial id), a restarted trial resumes from its last
checkpoint: a Train run restores itself from `storage_path/name`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from ..config import Config
from ..trainer import Callback, PrintProgress, RunResult
from .group import Group
from .launch import fit
from .layouts import check_layout, check_memory


@dataclass
class DistributedRunResult(RunResult):
    """`RunResult` (history, status, params with counts) plus where Ray put things.
    `net` stays None: load it from `checkpoint_path` (the core format) if needed."""
    checkpoint_path: str | None = None   # folder with checkpoint.pt (local storage)
    run_path: str | None = None          # storage_path/name
    ray_result: Any = None               # ray.train.Result
    callback_states: list = None         # rank 0's callbacks' `state_for_caller()`


def link_files(src: str, dest: str) -> int:
    """Every file under `src` hard-linked at the same place under `dest` (made as
    needed), copied only where a link cannot be made (another filesystem). The
    trainer writes each checkpoint file under a fresh name and renames it into
    place, so a link never sees a later write. Returns the bytes copied."""
    copied = 0
    for root, _, files in os.walk(src):
        target = os.path.join(dest, os.path.relpath(root, src))
        os.makedirs(target, exist_ok=True)
        for name in files:
            there = os.path.join(target, name)
            if os.path.exists(there):
                os.remove(there)  # a restarted report: replace what an earlier try left
            try:
                os.link(os.path.join(root, name), there)
            except OSError:  # EXDEV and the like: the storage is on another device
                shutil.copy2(os.path.join(root, name), there)
                copied += os.path.getsize(there)
    return copied


def persist_by_link(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
    """Ray Train's `checkpoint_upload_fn` for a local storage path: the worker's
    checkpoint files are hard-linked into the run's folder instead of copied, so a
    multi-GB checkpoint is written once (Ray's default copies it with
    pyarrow.fs.copy_files). The layer layout's workers each link their own shards
    into the same folder, as Ray's merge of their folders would."""
    storage = ray.train.get_context().get_storage()
    dest = os.path.join(storage.experiment_fs_path, dir_name)
    link_files(checkpoint.path, dest)
    return ray.train.Checkpoint(dest, filesystem=storage.storage_filesystem)


def _train_loop_per_worker(config: dict) -> dict:
    if config.get("quiet"):  # Train's per-report INFO lines, one per epoch per worker
        for name in ("ray.train", "ray.train._internal.storage"):
            logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    group = Group(ctx.get_world_rank(), ctx.get_world_size(), device)
    cfg = Config.from_flat(config["config"])
    layout = config["layout"]
    with tempfile.TemporaryDirectory(prefix="sal-ray-ckpt-") as scratch:
        resume_dir = None
        # data: only rank 0 reads, the data layout broadcasts the state;
        # layer: every stage reads its own layers' shards
        if group.is_main or layout == "layer":
            restored = ray.train.get_checkpoint()
            if restored is not None:  # read in place (mmap) when local: no copy of GBs
                resume_dir = restored.path if os.path.isdir(restored.path) else \
                    restored.to_directory(os.path.join(scratch, "restored"))
            else:
                resume_dir = config["resume_from"]
        out_dir = os.path.join(scratch, "out") if group.is_main or layout == "layer" else None

        def publish_to_ray(metrics: dict, folder: str | None) -> None:
            # every worker calls this once per epoch (ray.train.report is a barrier); Tune
            # keeps rank 0's metrics. Data layout: only rank 0 has a checkpoint;
            # layer layout: every stage reports its shard and Ray merges the
            # workers' folders into one checkpoint folder
            checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
            if config.get("report_metrics") is not None:  # e.g. a sweep's running means
                metrics = config["report_metrics"](metrics)
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=f"epoch_{int(metrics['epoch']):05d}",
                             checkpoint_upload_fn=persist_by_link)

        result = fit(cfg, group, out_dir, callbacks=config["callbacks"], on_epoch_end=publish_to_ray,
                     resume_dir=resume_dir, layout=layout, boundaries=config["boundaries"])
    # what a callback must hand back to the caller (a tracker's undelivered writes)
    states = [cb.state_for_caller() for cb in config["callbacks"]
              if group.is_main and hasattr(cb, "state_for_caller")]
    return {"status": result.status, "message": result.message, "history": result.history,
            "config": result.config, "counts": result.counts, "callback_states": states}


class _Announce(Callback):
    def __init__(self, num_workers: int, use_gpu: bool, layout: str):
        self.text = (f"[sal-ray] {layout} parallel on {num_workers} "
                     f"{'GPU' if use_gpu else 'CPU'} workers")

    def on_start(self, run) -> None:
        print(self.text)


def _default_name(cfg: Config) -> str:
    try:  # inside a Tune trial: stable per trial, so a restarted trial resumes
        return f"sal-train-{ray.tune.get_context().get_trial_id()}"
    except Exception:  # noqa: BLE001 - not in a Tune session
        return f"sal-train-{cfg.model.method}-{uuid.uuid4().hex[:8]}"


def _tune_callbacks() -> list:
    try:
        return [TuneReportCallback()]
    except RuntimeError:  # raised when not inside a Tune session
        return []


def fit_distributed(cfg: Config, num_workers: int, use_gpu: bool = False,
                    storage_path: str | None = None, name: str | None = None,
                    callbacks: Sequence[Callback] = (), verbose: bool = True,
                    resume_from: str | None = None, keep_checkpoints: int = 2,
                    cpus_per_worker: float = 1.0, layout: str = "data",
                    boundaries: Sequence[int] | None = None,
                    report_metrics: Callable[[dict], dict] | None = None
                    ) -> DistributedRunResult:
    """Train `cfg` on `num_workers` Ray Train workers.

    layout: "data" (every worker holds the whole net, gradients all-reduced; any
      method) or "layer" (worker r holds a contiguous block of layers; SAL only:
      BP and MoE are refused with a ConfigError before Ray starts). `boundaries`:
      for "layer", the W−1 layer indices where stages 1..W−1 start (default:
      balanced by parameter count). The layer layout's Ray checkpoint holds one
      shard per stage (`gather_checkpoint` makes a core file of them).

    storage_path: where Ray keeps the run (made absolute here, before any Ray
      worker changes directory); default ~/ray_results.
    name: the Train run's name; reusing (storage_path, name) resumes that run
      from its latest checkpoint. Default: per Tune trial, else a fresh name.
    callbacks: core `Callback`s, run on rank 0 inside the worker (they must be
      picklable); `verbose` adds the console progress.
    resume_from: a checkpoint folder (a single-process run's, or for "layer" also
      a layer-parallel one) to start from when the Train run has none of its own.
    report_metrics: a picklable function applied, on the workers, to each epoch's
      metrics before Ray reports them (inside a Tune trial: what Tune hears).
    Memory is budgeted first (`layouts.check_memory`, from `sal_ray.budget`): CPU
    workers together against cfg's memory_limit (default: this machine's
    available memory), refused with a ConfigError before Ray starts; each
    worker checks itself again before building its net. A checkpoint is
    persisted by hard-linking the workers' files into the run's folder
    (`persist_by_link`), and a restored one is read where it lies.
    Raises ray.train.TrainingFailedError when a worker fails.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1; got {num_workers}")
    check_layout(cfg, layout, num_workers)  # before Ray starts: a refusal costs nothing
    # CPU workers share this machine's memory; GPU workers are checked on their device
    check_memory(cfg, layout, num_workers, boundaries, shared_host=not use_gpu)
    storage_path = os.path.abspath(os.path.expanduser(storage_path or "~/ray_results"))
    if cfg.data.data_root:  # workers run in another directory
        cfg = cfg.replace(data_root=os.path.abspath(os.path.expanduser(cfg.data.data_root)))
    name = name or _default_name(cfg)
    worker_cbs = [*([_Announce(num_workers, use_gpu, layout), PrintProgress()] if verbose else []),
                  *callbacks]
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"config": cfg.to_flat(), "use_gpu": use_gpu, "callbacks": worker_cbs,
                           "resume_from": os.path.abspath(resume_from) if resume_from else None,
                           "layout": layout, "report_metrics": report_metrics,
                           "quiet": not verbose,
                           "boundaries": list(boundaries) if boundaries is not None else None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=_tune_callbacks(),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints)),
    )
    # Ray Train's fit() installs its own SIGINT handler and never puts the previous
    # one back: left there, a Ctrl-C after this returned would not raise
    # KeyboardInterrupt. Handlers exist only in the main thread.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        ray_result = trainer.fit()
    finally:
        if main:  # None: a handler set outside Python, which cannot be put back
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    out = ray_result.return_value or {}
    checkpoint = ray_result.checkpoint
    local = checkpoint.path if checkpoint is not None and os.path.isdir(checkpoint.path) else None
    return DistributedRunResult(
        status=out.get("status", "failed"), config=out.get("config", cfg.to_flat()),
        history=out.get("history", []), message=out.get("message", ""),
        counts=out.get("counts", {}), net=None, checkpoint_path=local,
        run_path=os.path.join(storage_path, name), ray_result=ray_result,
        callback_states=out.get("callback_states", []))
