"""Tune's storage: where a sweep's folder lives, and which sweeps a folder holds.
A sweep folder is what `Tuner.restore` takes (it holds `tuner.pkl`)."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..fs import FileLock, Held, disk_failure
from .checks import inside

CLAIMS = ".sweeps"  # under the storage path: each sweep name's lock (and record.py's record)


class StorageError(RuntimeError):
    """The sweep's storage or its tracking store cannot be written (a full disk, an
    I/O error): the sweep stopped; the message names the path and the cause."""


def storage_failure(error: BaseException) -> str | None:
    """What failed, if `error` (or its cause) is a full or failing disk; else None."""
    if isinstance(error, StorageError):
        return str(error)
    return disk_failure(error)


def storage_path(path) -> str:
    """Where Tune keeps the sweep (trial checkpoints, experiment state): a URI as is,
    else an absolute folder (default ./runs/ray)."""
    if path is not None and "://" in str(path):
        return str(path)
    return str(Path(path or Path.cwd() / "runs" / "ray").expanduser().resolve())


def sweep_folder(storage: str, name: str) -> str:
    return storage.rstrip("/") + "/" + name


def optuna_db(storage: str, name: str) -> Path:
    """The SQLite file of a sweep's Optuna studies (Optuna's RDB storage), beside its
    lock and record: <storage>/.sweeps/<name>.optuna.db. Only the driver uses it, so
    for a URI storage (s3://...) it is on the driver's disk, ./runs/ray/.sweeps/."""
    base = Path(storage_path(None) if "://" in storage else storage)
    return base / CLAIMS / f"{name}.optuna.db"


def optuna_url(storage: str, name: str) -> str:
    return f"sqlite:///{optuna_db(storage, name)}"


def is_sweep(folder: Path) -> bool:
    return (folder / "tuner.pkl").is_file()


def sweeps_in(storage: str, pattern: str = "*") -> list[Path]:
    """The sweep folders of a local storage folder whose names match `pattern`,
    oldest first; none for a URI."""
    if "://" in storage:
        return []
    return sorted((d for d in Path(storage).glob(pattern) if is_sweep(d)),
                  key=lambda d: d.stat().st_mtime)


def check_sweep_folder(storage: str, name: str, resume: bool) -> None:
    """A new sweep must not reuse a name; a resumed one must exist. Checked before
    anything starts (only for a local storage folder; a URI is Tune's to check)."""
    if "://" in storage:
        return
    exists = is_sweep(inside(storage, name))
    if resume and not exists:
        there = sorted(d.name for d in sweeps_in(storage))
        raise ConfigError("resume", f"no sweep named '{name}' in {storage} to resume"
                          + (f"; sweeps there: {', '.join(there[-10:])}" if there else
                             " (it holds no sweep)"))
    if not resume and exists:
        raise ConfigError("name", f"a sweep named '{name}' already exists in {storage}; "
                          "resume it (resume=True, scripts: --resume) or choose another name")


def claim(storage: str, name: str) -> FileLock | None:
    """Take the sweep name for this driver, for as long as it runs: of two drivers
    started under one name at the same moment, exactly one gets it; the other is
    refused here, before anything starts. None for a URI storage (Tune's)."""
    if "://" in storage:
        return None
    lock = FileLock(Path(storage) / CLAIMS / f"{name}.lock")
    try:
        return lock.acquire()
    except Held as e:
        raise ConfigError("name", f"sweep '{name}' is being run by another driver ({e.owner}) "
                          f"on storage {storage}; wait for it, or choose another name") from None
    except OSError as e:
        raise ConfigError("storage_path", f"cannot use {storage} for sweeps: "
                          f"{e.strerror or e} ({e.filename or storage})") from None


def newest_sweep(storage: str, prefix: str) -> str:
    """The newest sweep named `prefix...` in a local storage folder (for --resume)."""
    found = sweeps_in(storage, f"{prefix}*")
    if not found:
        raise ConfigError("resume", f"no sweep named {prefix}* in {storage} to resume; "
                          "name one: --resume NAME")
    return found[-1].name
