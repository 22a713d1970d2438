"""The cluster path for real, on this machine: Ray's cluster launcher brings up
ray_cluster.local.yaml against an sshd on 127.0.0.1 (tests/sshd.py), then

    ray up -y CLUSTER.yaml
    ray submit CLUSTER.yaml sweeps/depth.py -- --quick --gpus-per-trial 0 --name NAME
    scripts/fetch_results.sh CLUSTER.yaml DEST
    ray down -y CLUSTER.yaml

and checks what came back: one parent run for the sweep, every trial's run, every
per-epoch metric at every epoch, the parent's artifacts, Tune's storage. The job
logs to the head's MLflow server over HTTP, as on a real cluster.

CLUSTER.yaml is ray_cluster.local.yaml with these overrides, each one because the
"cluster" is this machine (`variant` makes them and checks that what it replaces
is there):
- provider: head_ip 127.0.0.1, no workers; auth: this user, a key made for the
  test, and `ssh_proxy_command` to the sshd's free port (Ray's SSH runner has no
  port option; a real machine listens on 22);
- setup_commands: the venv running this test put first on PATH and the synced
  checkout on PYTHONPATH, instead of making a venv and `pip install -e` into it
  (a multi-GB download); the token line stays;
- ports: Ray's head and the MLflow server on free ports instead of 6379, 8076 and
  5000, and Ray's dashboard and dashboard-agent ports too, so that no other Ray
  or server on this machine is hit (the client server starts only with ray[client]);
- cluster_name: one per run.
The head is a PID namespace with its own home folder (tests/sshd.py): file mounts,
~/.bashrc, ~/mlflow and ~/runs land in a temp folder, `ray stop` on the head
kills only the head's Ray (not this session's), and stopping the sshd ends every
process the head still runs. The CLI here ("the laptop") runs with HOME, RAY_TMPDIR
and TMPDIR in the test's folder too: the token and datasets it syncs, the local
provider's cluster state, Ray's config cache. About 2 minutes on 2 cores (docs/cluster.md).
"""

from __future__ import annotations

import copy
import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("ray")

try:
    import sshd as loopback
except ImportError:  # tests/ as a package
    from tests import sshd as loopback

pytestmark = [pytest.mark.launcher, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.prefix) / "bin"  # the venv running this test: ray, mlflow, python
STUDY_FLAGS = ["--quick", "--gpus-per-trial", "0"]  # a cluster without GPUs needs the 0


def variant(raw: dict, *, sshd, name: str, ports: dict[str, int]) -> dict:
    """ray_cluster.local.yaml made runnable on this machine (the module docstring)."""
    cfg = copy.deepcopy(raw)
    cfg["cluster_name"] = name
    cfg["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    cfg["auth"] = {"ssh_user": sshd.user, "ssh_private_key": str(sshd.key),
                   "ssh_proxy_command": sshd.proxy_command}

    install = [c for c in cfg["setup_commands"] if ".venvs/sal_ray" in c or "pip install" in c]
    assert len(install) == 4, cfg["setup_commands"]  # venv, PATH, pip, the project
    cfg["setup_commands"] = [
        f"echo 'export PATH={VENV_BIN}:$PATH PYTHONPATH=$HOME/sal_ray' >> ~/.bashrc",
        *[c for c in cfg["setup_commands"] if c not in install]]

    def swap(commands: list[str], old: str, new: str) -> list[str]:
        assert sum(old in c for c in commands) == 1, (old, commands)
        return [c.replace(old, new) for c in commands]

    head = cfg["head_start_ray_commands"]
    head = swap(head, "--port=6379", f"--port={ports['gcs']}")
    head = swap(head, "--object-manager-port=8076",
                f"--object-manager-port={ports['object_manager']} "
                f"--dashboard-port={ports['dashboard']} "
                f"--dashboard-agent-listen-port={ports['agent']}")
    head = swap(head, "--port 5000", f"--port {ports['mlflow']}")
    cfg["head_start_ray_commands"] = swap(head, "/127.0.0.1/5000", f"/127.0.0.1/{ports['mlflow']}")
    cfg["head_setup_commands"] = swap(cfg["head_setup_commands"], "):5000", f"):{ports['mlflow']}")
    return cfg


def _command_lines(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # ended meanwhile
            pass
    return found


RAY_PROCESSES = ("raylet", "gcs_server", "default_worker", "ray::", "dashboard", "monitor.py")


class Launcher:
    """The `ray` CLI and scripts/fetch_results.sh as a user runs them from the
    repository root, each step's output kept, its time measured."""

    def __init__(self, config: Path, env: dict[str, str]):
        self.config, self.env = config, env
        self.seconds: dict[str, float] = {}
        self.output: dict[str, str] = {}

    def run(self, step: str, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
                else (e.stdout or "")
            raise AssertionError(f"{step}: no end in {timeout:.0f} s\n{out[-6000:]}") from None
        self.seconds[step] = time.monotonic() - start
        self.output[step] = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{step} exited {proc.returncode}:\n{self.output[step][-6000:]}"
        return proc

    def ray(self, step: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run(step, [str(VENV_BIN / "ray"), *args], timeout)


@pytest.fixture(scope="module")
def cluster_run(ray_session):
    """Everything the launcher does, once; the tests below check its record. The
    session's own local Ray (ray_session) is up throughout, to prove it survives."""
    why = loopback.unavailable()
    if why:
        pytest.skip(f"no loopback sshd for the launcher test: {why}")
    # short: Ray's socket paths under RAY_TMPDIR must stay under 107 characters
    root = Path(tempfile.mkdtemp(prefix="salray-launch-"))
    try:
        record = launch(root)
        # this session's Ray lived through `ray stop` on the head
        record["session_ray"] = ray_session.get(
            ray_session.remote(lambda: "alive").remote(), timeout=60)
        print("launcher steps (s): " +
              ", ".join(f"{k} {v:.1f}" for k, v in record["cli"].seconds.items()))
        yield record
    finally:
        shutil.rmtree(root, ignore_errors=True)


def launch(root: Path) -> dict:
    """up, submit, fetch, down against a loopback sshd in `root`; the sshd stopped
    and the SSH control sockets removed whatever happens."""
    head_home, laptop_home, dest = root / "head", root / "laptop", root / "fetched"
    sshd = loopback.LoopbackSSHD(root / "sshd", head_home, env={"RAY_TMPDIR": str(root / "ht")})
    name = f"sal-launcher-{uuid.uuid4().hex[:8]}"
    sweep = f"launcher-{uuid.uuid4().hex[:6]}"
    ports = {k: loopback.free_port() for k in
             ("gcs", "object_manager", "dashboard", "agent", "mlflow")}
    env = {**os.environ, "HOME": str(laptop_home), "RAY_TMPDIR": str(root / "lt"),
           "TMPDIR": str(root / "lt"), "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    for folder in (laptop_home / ".cache" / "sal_ray" / "data", root / "lt"):
        folder.mkdir(parents=True)
    # where Ray's SSH runner keeps its ControlMaster sockets (command_runner.py)
    control = Path("/tmp") / "ray_ssh_{}".format(
        hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]) / \
        hashlib.sha256(name.encode()).hexdigest()[:10]
    config = root / "cluster.yaml"
    cli = Launcher(config, env)
    record = {"dest": dest, "sweep": sweep, "ports": ports, "head_home": head_home, "cli": cli}
    up = False
    try:
        sshd.start()
        raw = yaml.safe_load((REPO / "ray_cluster.local.yaml").read_text())
        config.write_text(yaml.safe_dump(variant(raw, sshd=sshd, name=name, ports=ports)))
        cli.ray("token", "get-auth-token", "--generate", timeout=60)
        up = True
        cli.ray("up", "up", "-y", "--no-config-cache", str(config), timeout=600)
        cli.ray("submit", "submit", "--no-config-cache", str(config), "sweeps/depth.py", "--",
                *STUDY_FLAGS, "--name", sweep, timeout=900)
        # while the cluster is up: what the head's MLflow server admits, what it imports
        record["tracking_uri"] = sshd.ssh('. ~/.bashrc; echo "$MLFLOW_TRACKING_URI"',
                                          timeout=60).stdout.strip()
        record["host_answers"] = host_answers(ports["mlflow"], record["tracking_uri"])
        record["head_sal_ray"] = sshd.ssh(
            ". ~/.bashrc; python -c 'import sal_ray; print(sal_ray.__file__)'",
            timeout=120).stdout.strip()
        cli.run("fetch", ["bash", "scripts/fetch_results.sh", str(config), str(dest)], timeout=300)
        cli.ray("down", "down", "-y", str(config), timeout=300)
        up = False
        record["after_down"] = _command_lines(sshd.processes())
    finally:
        if up:  # a step failed: take the cluster down all the same
            subprocess.run([str(VENV_BIN / "ray"), "down", "-y", str(config)],
                           cwd=REPO, env=env, capture_output=True, timeout=300)
        sshd.stop()
        record["left_on_head"] = sshd.processes()
        shutil.rmtree(control, ignore_errors=True)
        try:
            control.parent.rmdir()  # only when no other cluster's connections are in it
        except OSError:
            pass
    return record


def host_answers(port: int, tracking_uri: str) -> dict[str, int]:
    """The head server's HTTP status per Host header, for one API call."""
    cluster_host = tracking_uri.split("://", 1)[1].rstrip("/")
    answers = {}
    for host in (cluster_host, f"127.0.0.1:{port}", "localhost:8080", f"rebind.example:{port}"):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
            headers={"Host": host})
        try:
            answers[host] = urllib.request.urlopen(req, timeout=30).status
        except urllib.error.HTTPError as e:
            answers[host] = e.code
    return answers


def test_up_submit_fetch_down_and_nothing_left_behind(cluster_run):
    cli = cluster_run["cli"]
    assert list(cli.seconds) == ["token", "up", "submit", "fetch", "down"]
    assert f"sweep '{cluster_run['sweep']}' done" in cli.output["submit"]
    after_down = cluster_run["after_down"]
    assert not [c for c in after_down if any(p in c for p in RAY_PROCESSES)]  # Ray stopped
    # the MLflow server is not Ray's: on a machine that stays, it serves on after ray down
    assert any("mlflow server" in c for c in after_down), after_down
    assert cluster_run["left_on_head"] == []  # and the sshd's end took the rest
    assert cluster_run["session_ray"] == "alive"


def test_the_head_runs_the_checkout_synced_by_file_mounts(cluster_run):
    head = cluster_run["head_home"]
    assert cluster_run["head_sal_ray"] == str(head / "sal_ray" / "sal_ray" / "__init__.py")
    tracked = subprocess.run(["git", "ls-files", "sal_ray", "sweeps"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    for path in tracked:
        assert (head / "sal_ray" / path).read_bytes() == (REPO / path).read_bytes(), path
    assert not (head / "sal_ray" / ".venv").exists()


def test_the_heads_mlflow_admits_the_cluster_and_a_tunnel_only(cluster_run):
    port = cluster_run["ports"]["mlflow"]
    cluster_host = cluster_run["tracking_uri"].split("://", 1)[1]
    assert cluster_run["tracking_uri"].startswith("http://") and cluster_host.endswith(f":{port}")
    assert cluster_run["host_answers"] == {
        cluster_host: 200,             # the job and the workers, at the head's address
        f"127.0.0.1:{port}": 200,      # a browser through `ray attach -p` / ssh -L
        "localhost:8080": 200,         # ... with another local port
        f"rebind.example:{port}": 403}  # any other name: DNS rebinding refused


def _runs(client, sweep):
    exp = client.get_experiment_by_name("sal-depth")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.sweep = '{sweep}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("kind") != "sweep"]


def test_the_results_brought_back_are_complete(cluster_run):
    dest = cluster_run["dest"]
    client = mlflow.MlflowClient(f"sqlite:///{dest / 'mlflow.db'}")
    parents, children = _runs(client, cluster_run["sweep"])
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["status"] == "completed"
    total, seeds = int(parent.data.params["sweep.total_trials"]), int(parent.data.params["sweep.seeds"])
    epochs = int(parent.data.params["fixed.epochs"])
    assert total >= 2 and epochs >= 2
    assert parent.data.tags["trials_ended"] == f"{total}/{total}"

    # every trial's run (one per seed), under the parent, logged through the server
    assert len(children) == total * seeds
    assert len({r.data.tags["trial"] for r in children}) == total
    for run in children:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # the head's server
        # MLflow's system metrics are sampled in time (step = sample), not per epoch
        sampled = [k for k in run.data.metrics if k.startswith("system/")]
        assert "system/cpu_utilization_percentage" in sampled, sorted(run.data.metrics)
        # the run's cost, logged once at its last epoch
        for key in ("cost_wall_s", "cost_cpu_s", "peak_rss_mb"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [epochs]
        per_epoch = [k for k in run.data.metrics
                     if not k.startswith(("final_", "trial_", "system/", "cost_", "peak_"))
                     and k not in ("mean_samples_per_s", "epochs_done")]
        assert {"val_loss", "val_acc", "train_loss"} <= set(per_epoch), per_epoch
        for key in per_epoch:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (run.info.run_name, key, steps)

    # the parent's artifacts, in the copy of the server's artifact store
    prefix = "mlflow-artifacts:/"
    assert parent.info.artifact_uri.startswith(prefix)
    folder = dest / "artifacts" / parent.info.artifact_uri[len(prefix):]
    assert {"best.json", "trials.csv", "summary.csv", "summary.txt"} <= \
        {p.name for p in folder.iterdir()}
    best = json.loads((folder / "best.json").read_text())
    child_ids = {r.info.run_id for r in children}
    assert best and all(set(b["mlflow_run_ids"]) <= child_ids for b in best.values())


def test_tune_storage_brought_back(cluster_run):
    """The sweep's Tune folder: what `--resume` restores from, a folder per trial,
    and each trial's last checkpoint if it took one (the sweep keeps at most one per trial;
    a trial that ends within the checkpoint clock's interval, as these do, takes
    none: sal_ray.sweep.costs.CheckpointClock.final)."""
    sweep_dir = cluster_run["dest"] / "runs" / "ray" / cluster_run["sweep"]
    assert (sweep_dir / "tuner.pkl").is_file()
    trials = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    client = mlflow.MlflowClient(f"sqlite:///{cluster_run['dest'] / 'mlflow.db'}")
    parents, _ = _runs(client, cluster_run["sweep"])
    assert len(trials) == int(parents[0].data.params["sweep.total_trials"]), trials
    for trial in trials:
        checkpoints = [c for c in trial.glob("checkpoint_*") if any(c.iterdir())]
        assert len(checkpoints) <= 1, (trial.name, checkpoints)
