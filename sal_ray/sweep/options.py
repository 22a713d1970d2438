"""Where and how a sweep runs, as one object (the search itself is the `Plan`),
the way Ray's RunConfig sits beside its TuneConfig. `tune()` keeps its keyword
options and builds this; every value is checked here before Ray starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import ConfigError
from ..tracking.weights import LOG_MODEL_MAX_BYTES
from . import checks

LOG_MODEL = ("best", "all", "none")
# A trial checkpoints at most this often by default: a Digits epoch takes ~0.1 s,
# a checkpoint (torch.save, Tune copying the folder) about as long, so one per
# epoch doubled a short epoch's cost (docs/performance.md); a killed trial loses
# at most this much training. Past the ceiling, checkpoint_every=0 says "never".
CHECKPOINT_EVERY_S = 10.0
CHECKPOINT_EVERY_S_MAX = 86400.0


def print_line(*args, **kwargs) -> None:
    """print, looked up when called: Tune pickles the callbacks that hold it, and
    Ray's progress bars may have replaced builtins.print meanwhile."""
    print(*args, **kwargs)


def no_output(*args, **kwargs) -> None:
    pass


@dataclass(frozen=True)
class RunOptions:
    tracking_uri: str | None = None      # default $MLFLOW_TRACKING_URI, else ./mlflow.db
    address: str | None = None           # a Ray cluster; default: see runtime.init_ray
    num_cpus: int | None = None          # a local Ray's CPUs
    max_concurrent: int | None = None
    time_budget_s: float | None = None
    storage_path: str | None = None      # Tune's folder (default ./runs/ray)
    log_model: str = "best"
    log_model_max_bytes: int | None = LOG_MODEL_MAX_BYTES  # larger: a reference, not an upload
    flush_every_s: float | None = None   # MLflow writes at most this often per run
    verbose: int = 1
    table_by: Sequence[str] | None = None
    resume: bool = False
    max_failures: int = 3
    checkpoint_every: int = 1
    checkpoint_every_s: float = CHECKPOINT_EVERY_S
    finish_wait_s: float = 120.0
    callbacks: Sequence[Any] = field(default_factory=tuple)
    layout: str | dict[str, str] = "data"
    progress_every_s: float | None = 15.0  # live console lines while trials run; 0: none
    system_metrics_s: float | None = 5.0  # MLflow system metrics per trial run; None/0: off

    @property
    def echo(self):
        """How the sweep prints its own lines: print, or nothing at verbose 0."""
        return print_line if self.verbose else no_output

    def check(self, name: str | None) -> "RunOptions":
        if self.log_model not in LOG_MODEL:
            raise ConfigError("log_model", f"must be 'best', 'all' or 'none'; got "
                              f"{self.log_model!r}")
        checks.positive_int("max_concurrent", self.max_concurrent, allow_none=True)
        checks.positive_int("log_model_max_bytes", self.log_model_max_bytes, allow_none=True)
        checks.positive_int("num_cpus", self.num_cpus, allow_none=True)
        checks.count("max_failures", self.max_failures)
        checks.count("checkpoint_every", self.checkpoint_every)
        checks.seconds("checkpoint_every_s", self.checkpoint_every_s, allow_none=False,
                       high=CHECKPOINT_EVERY_S_MAX)
        if not isinstance(self.callbacks, (list, tuple)):
            raise ConfigError("callbacks", f"must be a list of Ray Tune callbacks; got "
                              f"{type(self.callbacks).__name__}")
        if not isinstance(self.resume, bool):
            raise ConfigError("resume", f"must be True or False; got {self.resume!r}")
        if self.resume and name is None:
            raise ConfigError("name", "resume=True needs the name of the sweep to resume "
                              "(the name its first run printed; scripts: --resume NAME)")
        checks.seconds("finish_wait_s", self.finish_wait_s, allow_none=False)
        checks.seconds("time_budget_s", self.time_budget_s)
        checks.seconds("flush_every_s", self.flush_every_s)
        checks.seconds("progress_every_s", self.progress_every_s)
        checks.seconds("system_metrics_s", self.system_metrics_s)
        if self.verbose not in (0, 1, 2):
            raise ConfigError("verbose", f"must be 0, 1 or 2; got {self.verbose!r}")
        return self
