"""The file system under a sweep: exclusive locks between processes, and telling a
full or failing disk from other errors.

A lock is `flock` on a file: the operating system drops it when its holder exits,
killed or not, so it never outlives a crashed driver. (On network file systems
flock may only be local to each machine: docs/reliability.md.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from pathlib import Path

# What a full disk or a failing one says, as errno or as text (pyarrow's and
# SQLite's errors carry no errno): a sweep stops on these instead of retrying.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
DISK_TEXT = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system|"
                       r"Input/output error|database or disk is full|disk I/O error|"
                       r"File too large", re.IGNORECASE)


def disk_failure(error: BaseException | None) -> str | None:
    """The line that says a disk is full or failing, anywhere in `error`'s chain
    (with the file it names, if any), or None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if (isinstance(error, OSError) and error.errno in DISK_ERRNOS) or DISK_TEXT.search(text):
            where = f" ({error.filename})" if getattr(error, "filename", None) else ""
            first = next((line for line in text.splitlines() if DISK_TEXT.search(line)),
                         text.splitlines()[0] if text else type(error).__name__)
            return (first.strip() + where)[:400]
        error = error.__cause__ or error.__context__
    return None


class Held(RuntimeError):
    """Another process holds the lock; `owner` is what it wrote there (its pid)."""

    def __init__(self, path: Path, owner: str):
        super().__init__(f"{path} is held by {owner or 'another process'}")
        self.path, self.owner = path, owner


class FileLock:
    """`acquire()` takes the lock or raises Held (waiting up to `wait_s` first);
    `release()` gives it back. The holder's pid is written into the file."""

    def __init__(self, path: str | os.PathLike, wait_s: float = 0.0):
        self.path, self.wait_s, self.fd = Path(path), wait_s, None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    owner = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise Held(self.path, owner) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
