"""What a training run cost, measured around it from the tracking side (the
trainer is not touched): wall time, CPU-seconds, GPU-seconds and peak memory;
and MLflow's own system metrics (CPU, memory, disk, network; GPU where pynvml
is installed) sampled while the run trains.

    meter = CostMeter(); meter.start(device)   ... training ...   meter.metrics()
    -> {"cost_wall_s", "cost_cpu_s", "cost_gpu_s", "peak_rss_mb"[, "peak_gpu_mem_mb"]}

- cost_cpu_s: CPU time of the whole process (every thread: torch's intra-op
  pool too), user + system, from `resource.getrusage`.
- cost_gpu_s: 0 on CPU; on a GPU the device time between two CUDA events
  recorded at the start and the end of the run: how long the run held the GPU.
- peak_rss_mb: the process's peak resident memory during the run. On Linux the
  peak is reset at the start (/proc/self/clear_refs, "5"), so a Ray worker that
  ran an earlier trial does not carry that trial's peak over; elsewhere it is
  the process's lifetime peak (`ru_maxrss`).
"""

from __future__ import annotations

import logging
import resource
import sys
import time

import torch

from .writes import metric_list

try:  # MLflow's monitors import psutil: without it a run has no system metrics, nothing else
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
except ImportError as e:
    SystemMetricsMonitor, NO_MONITOR = None, f"{e} (pip install psutil)"
else:
    NO_MONITOR = ""

CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _reset_peak_rss() -> bool:
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")  # resets VmHWM only: no page is touched
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open(STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024  # bytes | kB


class CostMeter:
    """Wall, CPU and GPU seconds and peak memory between `start` and `metrics`."""

    def __init__(self):
        self.t0 = self.cpu0 = None
        self.device = None
        self.events = None

    def start(self, device=None) -> None:
        self.t0, self.cpu0 = time.perf_counter(), _cpu_s()
        _reset_peak_rss()
        self.device = device
        if device is not None and getattr(device, "type", "") == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(device))
            self.events = start

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def metrics(self) -> dict[str, float]:
        """The cost so far (empty before `start`)."""
        if not self.started:
            return {}
        out = {"cost_wall_s": time.perf_counter() - self.t0, "cost_cpu_s": _cpu_s() - self.cpu0,
               "cost_gpu_s": 0.0, "peak_rss_mb": _peak_rss_mb()}
        if self.events is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            end.synchronize()
            out["cost_gpu_s"] = self.events.elapsed_time(end) / 1000.0
            out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return out


class SystemMetrics:
    """MLflow's system metrics (`system/*`, step = sample) for one run, sampled every
    `interval_s` on a thread of MLflow's `SystemMetricsMonitor` (what
    `mlflow.start_run(log_system_metrics=True)` starts; the sink avoids the fluent
    API). It writes straight to the store: a store that is away ends the sampling,
    never the training. Needs psutil."""

    def __init__(self, run_id: str, uri: str, interval_s: float):
        self.monitor = None
        # "Started/Stopping monitoring" per run, in every trial's output, is noise
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        if SystemMetricsMonitor is None:
            logging.getLogger("sal_ray").warning("MLflow system metrics are off: %s", NO_MONITOR)
            return
        try:
            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s,
                                                tracking_uri=uri)
            self.monitor.start()
        except Exception as e:  # noqa: BLE001 - psutil missing, store away: no samples
            logging.getLogger("sal_ray").warning("MLflow system metrics are off for run %s: %s",
                                                 run_id, e)
            self.monitor = None

    def stop(self) -> list:
        """Ends the sampling. Returns the sample taken since the last one logged, as
        `Metric`s named and stepped as MLflow's own (`system/...`), for the caller
        to write with the run's last writes: MLflow's loop drops it on shutdown,
        which would leave a run shorter than interval_s bare, and a write of its
        own cost a SQLite store ~6 ms per run."""
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return []
        try:
            monitor.finish()
            left = monitor.aggregate_metrics()
            if not left:
                return []
            caught = _Caught()
            monitor.mlflow_logger = caught  # publish_metrics names and steps, we write
            monitor.publish_metrics(left)
            return caught.metrics
        except Exception:  # noqa: BLE001 - samples are best effort
            return []


class _Caught:
    """Stands in for a monitor's metrics logger: keeps what it is given."""

    def __init__(self):
        self.metrics: list = []

    def record_metrics(self, metrics: dict, step: int) -> None:
        self.metrics += metric_list(metrics, step)
