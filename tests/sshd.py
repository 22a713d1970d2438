"""A throwaway "remote machine" for the cluster-launcher test: an OpenSSH server on
127.0.0.1 and a free port, with its own host key, one authorized key and its own
home folder, in its own PID namespace.

Why each piece:
- Ray's SSH command runner has no port option, only `auth.ssh_proxy_command`: the
  client reaches the free port through `proxy_command`, this file run as a relay
  (`python sshd.py HOST PORT`, stdin/stdout to a TCP connection).
- The session's environment is set by sshd (`SetEnv`): HOME is the machine's own
  folder, so the launcher's `~/...` (file mounts, ~/.bashrc, the MLflow store)
  lands there and not in the real home, and sessions start in it (ForceCommand);
  RAY_TMPDIR keeps its Ray's session files
  and `ray_current_cluster` apart from every other Ray on this machine.
- The launcher runs `ray stop` on the head (`ray up`'s start commands, `ray down`),
  and `ray stop` kills every Ray process it can see. In a PID namespace with its
  own /proc it sees only the head's: the test session's own Ray and any other on
  this machine live on. Stopping the server ends the namespace, and with it every
  process still running on the "head" (the MLflow server, a Ray left behind).

Needs root (sshd's privilege separation, `unshare --pid`), /usr/sbin/sshd and
ssh-keygen; `unavailable()` names what is missing.
"""

from __future__ import annotations

import getpass
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def unavailable() -> str | None:
    """Why a loopback sshd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (sshd privilege separation, unshare --pid)"
    for tool in (SSHD, "ssh-keygen", "ssh", "rsync", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/test.sh installs openssh-server and rsync)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --pid --mount-proc not permitted here: {probe.stderr.strip()}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


class LoopbackSSHD:
    """sshd for `user` (default: this one) on 127.0.0.1:`port`; state in `folder`,
    the sessions' HOME is `home`, `env` is added to every session's environment."""

    def __init__(self, folder: Path, home: Path, env: dict[str, str] | None = None,
                 user: str | None = None):
        self.folder, self.home = Path(folder), Path(home)
        self.user = user or getpass.getuser()
        self.port = free_port()
        self.key = self.folder / "id_ed25519"  # the client's key (auth.ssh_private_key)
        self.env = {"HOME": str(self.home), **(env or {})}
        self.log = self.folder / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self._namespace: str | None = None

    @property
    def proxy_command(self) -> str:
        """`auth.ssh_proxy_command` for Ray: ssh's %h is the node's IP."""
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} " \
               f"%h {self.port}"

    def _write_config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".bashrc").touch()  # what a fresh account has (/etc/skel)
        host_key = self.folder / "host_ed25519"
        for path in (host_key, self.key):
            if not path.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "",
                                "-f", str(path)], check=True)
        authorized = self.folder / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        setenv = " ".join(f'"{k}={v}"' for k, v in self.env.items())
        config = self.folder / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {host_key}",
            f"PidFile {self.folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            f"AllowUsers {self.user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",  # the key files sit under /tmp, which is world-writable
            "PrintMotd no",
            # the launcher opens many sessions at once over its ControlMaster
            "MaxSessions 64",
            "MaxStartups 64",
            f"SetEnv {setenv}",
            # sshd starts sessions in the account's home from /etc/passwd, not in
            # HOME: begin where a machine of its own would, in its home folder
            'ForceCommand cd "$HOME" && eval "${SSH_ORIGINAL_COMMAND:-exec bash -l}"',
            "LogLevel INFO",
            "",
        ]))
        return config

    def start(self, timeout: float = 30) -> "LoopbackSSHD":
        config = self._write_config()
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation dir (Debian's unit makes it)
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True)  # config test: one clear error
        with open(self.log, "ab") as log:
            # --kill-child: if unshare dies, the namespace's init (sshd) dies with it
            self.proc = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                 SSHD, "-D", "-e", "-f", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(64).startswith(b"SSH-2.0"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd not up in {timeout:.0f} s:\n{self.log.read_text()}")
            time.sleep(0.1)
        self._namespace = _pid_namespace(self._init_pid())
        return self

    def _init_pid(self) -> int:
        """The host PID of the namespace's init (sshd), unshare's only child."""
        for entry in Path("/proc").iterdir():
            try:
                # /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces
                ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid:
                return int(entry.name)
        raise ProcessLookupError(f"unshare ({self.proc.pid}) has no child")

    def processes(self) -> list[int]:
        """Host PIDs of every process running on the "head" (the namespace)."""
        if self._namespace is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _pid_namespace(int(entry.name)) == self._namespace:
                pids.append(int(entry.name))
        return pids

    def ssh(self, command: str, **kwargs) -> subprocess.CompletedProcess:
        """Run `command` on the head, as the launcher would reach it."""
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
             "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}",
             "-o", f"ProxyCommand={self.proxy_command}", "-o", "LogLevel=ERROR",
             f"{self.user}@127.0.0.1", command],
            capture_output=True, text=True, **kwargs)

    def stop(self, timeout: float = 20) -> None:
        """End the server and the namespace: every process on the head is killed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self._init_pid(), signal.SIGTERM)  # sshd's own handler; init exits
        except OSError:
            self.proc.kill()  # --kill-child takes the namespace's init with it
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)


def relay(host: str, port: int) -> None:
    """stdin -> TCP (host, port) -> stdout, until the server closes: what ssh's
    ProxyCommand expects. EOF on stdin half-closes the connection."""
    sock = socket.create_connection((host, port))
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    while True:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(0, 65536)
                if data:
                    sock.sendall(data)
                else:
                    sel.unregister(0)
                    sock.shutdown(socket.SHUT_WR)
            else:
                data = sock.recv(65536)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view):]


if __name__ == "__main__":
    relay(sys.argv[1], int(sys.argv[2]))
