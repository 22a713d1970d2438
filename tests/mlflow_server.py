"""A real `mlflow server` for tests: on 127.0.0.1 and a free port, started the
way `sal-ray ui` starts it, waited for until it answers, stopped with its whole
process group; restartable on the same port (a tracking outage)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MLflowServer:
    """`backend_uri` served from `folder` (its cwd and `server.log`)."""

    def __init__(self, backend_uri: str, folder: Path, extra_args: tuple[str, ...] = ()):
        from sal_ray.cli.ui import mlflow_server_command
        self.port, self.folder = free_port(), Path(folder)
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = mlflow_server_command(backend_uri, "127.0.0.1", self.port) + list(extra_args)
        self.log = self.folder / "server.log"
        self.proc = None

    def start(self, timeout: float = 150) -> str:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).read()
                return self.url
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"mlflow server exited ({self.proc.returncode}):\n"
                                         f"{self.log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server not up in {timeout:.0f} s:\n"
                                         f"{self.log.read_text()[-3000:]}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the workers it spawned
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
