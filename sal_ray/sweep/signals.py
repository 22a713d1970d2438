"""SIGTERM and SIGHUP end a sweep as Ctrl-C does.

A sweep on a cluster head is ended by more than Ctrl-C: `ray job stop` and
schedulers send SIGTERM, a dropped `ray submit` SSH session sends SIGHUP. Left
alone, SIGHUP kills the driver at once and SIGTERM (Ray's driver handler)
exits it: either way the parent run stays RUNNING or says crashed, and no
resume command is printed. While the sweep runs, both are handed to whatever
answers SIGINT: during `Tuner.fit` that is Tune's handler, which lets the trials
checkpoint and returns, so the sweep ends "interrupted" and prints how to
resume; before or after it, Python's KeyboardInterrupt, as for Ctrl-C.

SIGHUP that is ignored (`nohup`) stays ignored: whoever started the sweep asked
for it to outlive the terminal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))
KEPT = tuple(getattr(signal, n) for n in ("SIGINT", "SIGUSR1") if hasattr(signal, n))


def forward_to_sigint(signum: int, frame, echo: Callable = print) -> None:
    """What a Ctrl-C would do now, for `signum`."""
    try:  # a print the signal interrupted may hold the stream: say nothing then
        echo(f"[{signal.Signals(signum).name}] ending the sweep as Ctrl-C would: running "
             "trials checkpoint and stop")
    except RuntimeError:
        pass
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Tune's, or Python's default_int_handler
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


@contextlib.contextmanager
def as_ctrl_c(echo: Callable = print) -> Iterator[None]:
    """SIGTERM and SIGHUP act as SIGINT inside the block; the previous handlers
    come back after it. Signal handlers exist only in the main thread: a sweep
    started from another thread keeps the process's own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Tune installs its SIGINT (and SIGUSR1) handler for each run and never takes it
    # away: left there, a Ctrl-C after `tune()` returned would only set a finished
    # run's flag, so a REPL or notebook could not be interrupted. They come back too.
    previous = {sig: signal.getsignal(sig) for sig in KEPT}
    for sig in SIGNALS:
        if signal.getsignal(sig) == signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, lambda s, f: forward_to_sigint(s, f, echo))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # None: a handler set outside Python, which cannot be put back
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
