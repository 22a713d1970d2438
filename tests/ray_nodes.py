"""A Ray cluster of real nodes on this machine for tests: each node is a `ray start
--block` that the test owns, in its own process group, with its own temp folder
and ports, so neither `ray stop` (which would stop every Ray on the machine)
nor another test's Ray is involved. Stopping a node ends its process group."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from mlflow_server import free_port
except ImportError:  # tests/ as a package
    from tests.mlflow_server import free_port

RAY = str(Path(sys.executable).with_name("ray"))
# per node: every port a node listens on, free ones (defaults would collide)
PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port")


class RayNodes:
    """A head, then workers joining it; `stop()` ends them all (also on error)."""

    def __init__(self):
        # short: Ray's socket paths live under it and must fit in 107 characters
        self.root = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
        # its address file too; token authentication, as ray_cluster.yaml's nodes
        # run, with a token of its own (not ~/.ray/auth_token)
        self.env = {**os.environ, "RAY_TMPDIR": str(self.root), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(key, None)
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def _start(self, name: str, args: list[str], want_nodes: int, timeout: float) -> None:
        log = open(self.root / f"{name}.log", "w")
        ports = [f"{flag}={free_port()}" for flag in PORT_FLAGS]
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
             f"--temp-dir={self.root / name}", "--object-store-memory=100000000",
             *ports, *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < want_nodes:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray node {name} not up ({proc.returncode}):\n"
                                     + (self.root / f"{name}.log").read_text()[-3000:])
            time.sleep(1)

    def head(self, num_cpus: int, resources: dict | None = None, timeout: float = 120) -> str:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._start("head", ["--head", f"--port={port}", "--include-dashboard=false",
                             f"--num-cpus={num_cpus}", "--num-gpus=0",
                             f"--resources={json.dumps(resources or {})}"], 1, timeout)
        return self.address

    def worker(self, num_cpus: int, resources: dict | None = None, timeout: float = 120) -> None:
        self._start(f"worker{len(self.procs)}",
                    [f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                     f"--resources={json.dumps(resources or {})}"], len(self.procs) + 1, timeout)

    def nodes(self) -> list[dict]:
        """The cluster's alive nodes, {NodeID, Resources}, asked from a separate
        process (this one may hold a Ray of its own)."""
        if not self.address:
            return []
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', "
                "log_to_driver=False); print('NODES', json.dumps([{'NodeID': n['NodeID'], "
                "'Resources': n['Resources']} for n in ray.nodes() if n['Alive']]))")
        out = subprocess.run([sys.executable, "-c", code % self.address], env=self.env,
                             capture_output=True, text=True, timeout=120)
        # (only the marked line: a node's own messages may come first)
        found = [line[6:] for line in out.stdout.splitlines() if line.startswith("NODES ")]
        return json.loads(found[-1]) if out.returncode == 0 and found else []

    def alive_nodes(self) -> int:
        return len(self.nodes())

    def stop(self) -> None:
        """Workers first, then the head: each node's whole process group."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    # a worker ends in about 1 s; `ray start --block` on the head does
                    # not end on SIGTERM within 30 s here, and its group goes with SIGKILL
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)

    def leftovers(self) -> list[str]:
        """Processes still running from this cluster (their command lines name its folder)."""
        left = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(self.root) in cmd:
                left.append(f"{pid}: {cmd[:200]}")
        return left
