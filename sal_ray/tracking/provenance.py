"""What every run records besides its options: the code version, the libraries and
the hardware, as tags. Nothing from os.environ: that is where credentials live."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

LIBRARIES = ("torch", "numpy", "ray", "optuna", "mlflow", "scikit-learn", "pandas")


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The git commit of the checkout `sal_ray` runs from, and whether it has
    uncommitted changes to tracked files; 'unknown' outside a checkout."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True,
                              text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            raise OSError(head.stderr)
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"git_commit": head.stdout.strip(), "git_dirty": str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """Library versions and hardware, as tags, and this process's niceness (read on
    each call: a process may be reniced, and the rest is cached once)."""
    # a trial run at a high niceness (Ray's default for its workers is 15) is slow for
    # a reason that is not the code's: its speed figures say so with this
    return {**machine(), "process.nice": str(os.nice(0))}


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, str]:
    out = {f"version.{name}": _version(name) for name in LIBRARIES}
    out["version.sal_ray"] = _version("sal_ray")
    out["version.python"] = platform.python_version()
    out["hw.platform"] = platform.platform()
    out["hw.cpu"] = _cpu_model()
    out["hw.cpu_count"] = str(os.cpu_count())
    try:
        import torch  # a CPU-only process (the report, the UI) may never load it
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out["hw.gpu"] = ", ".join(names)
            out["version.cuda"] = str(torch.version.cuda)
        else:
            out["hw.gpu"] = "none"
    except Exception:  # noqa: BLE001 - hardware probing must never fail a run
        out["hw.gpu"] = "unknown"
    return out


def run_tags() -> dict[str, str]:
    """Code version and environment; `mlflow.source.git.commit` is what the UI shows."""
    code = code_version()
    return {**code, "mlflow.source.git.commit": code["git_commit"], **environment()}
