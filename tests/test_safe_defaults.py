"""Safe defaults: what listens where, what is never logged, where credentials come from.

- `sal-ray ui` serves on 127.0.0.1 unless told otherwise, and a store password never
  reaches a command line or the console; a local Ray starts without a dashboard.
- No credentials in the repository's tracked files.
- Environment variables that look like secrets never reach MLflow params or tags.
- A tracking URI's password is redacted wherever it is printed.
(ray_cluster.yaml's credentials: tests/test_cluster.py.)
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from sal_ray import Config, cli, fit
from sal_ray import sweep as sw
from sal_ray.cli import ui as ui_cli

REPO = Path(__file__).resolve().parents[1]
PASSWORD_URI = "postgresql://alice:s3cret@db.internal:5432/mlflow"
AT_PASSWORD_URI = "https://bob:" + "p@ss@h/x"  # a password holding '@' (split: see the scan)


# ---- the MLflow UI --------------------------------------------------------------------------

@pytest.fixture
def launched(monkeypatch, tmp_path):
    """`sal-ray ui` in a folder with a store; the server it would start is recorded,
    not started."""
    (tmp_path / "mlflow.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = []

    class Server:
        def __init__(self, cmd, env=None):
            calls.append(SimpleNamespace(cmd=cmd, env=env or {}))

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(ui_cli, "subprocess", SimpleNamespace(
        Popen=Server, TimeoutExpired=subprocess.TimeoutExpired))
    # the shared machine may serve something on 5000: these tests are about the command
    monkeypatch.setattr(ui_cli, "port_taken", lambda host, port: None)
    return calls


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_ui_binds_to_localhost_by_default(launched, tmp_path, capsys):
    assert cli.main(["ui"]) == 0
    (server,) = launched
    assert flag(server.cmd, "--host") == "127.0.0.1" and flag(server.cmd, "--port") == "5000"
    assert "--allowed-hosts" not in server.cmd and "0.0.0.0" not in server.cmd
    assert flag(server.cmd, "--backend-store-uri") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    out, err = capsys.readouterr()
    assert out.startswith("MLflow UI on http://127.0.0.1:5000") and err == ""


def test_ui_refuses_a_taken_port_in_one_line_and_starts_nothing(monkeypatch, tmp_path, capsys):
    (tmp_path / "mlflow.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    started = []
    monkeypatch.setattr(ui_cli, "subprocess", SimpleNamespace(
        Popen=lambda *a, **k: started.append(a), TimeoutExpired=subprocess.TimeoutExpired))
    with socket.socket() as other:  # another server holds the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert cli.main(["ui", "--port", str(port)]) == 2
        out, err = capsys.readouterr()
        assert err.strip() == (f"sal-ray ui: error: option 'port': {port} on 127.0.0.1 cannot be "
                               f"used: another server already listens there; choose a free one, "
                               f"e.g. --port {port + 1}")
        assert out == "" and started == []  # no URL printed that would serve another store
        assert ui_cli.port_taken("0.0.0.0", port)  # all interfaces include that one
    assert ui_cli.port_taken("127.0.0.1", port) is None  # free once it closed


def test_ui_exposed_only_when_asked_and_warns(launched, capsys):
    assert cli.main(["ui", "--host", "0.0.0.0", "--port", "5001"]) == 0
    assert flag(launched[0].cmd, "--host") == "0.0.0.0"
    err = capsys.readouterr().err
    assert "warning: binding to 0.0.0.0 exposes the UI (no authentication)" in err
    assert cli.main(["ui", "--host", "0.0.0.0", "--allowed-hosts", "mlflow.example.org"]) == 0
    assert flag(launched[1].cmd, "--allowed-hosts") == "mlflow.example.org"
    assert "warning" not in capsys.readouterr().err


def test_ui_keeps_a_store_password_off_the_command_line_and_the_console(launched, capsys):
    assert cli.main(["ui", "--tracking-uri", PASSWORD_URI]) == 0
    (server,) = launched
    out, err = capsys.readouterr()
    assert "s3cret" not in " ".join(server.cmd) + out + err  # `ps` shows every command line
    assert "--backend-store-uri" not in server.cmd
    assert server.env["MLFLOW_BACKEND_STORE_URI"] == PASSWORD_URI  # what `mlflow server` reads
    assert "(store: postgresql://alice:***@db.internal:5432/mlflow)" in out


# ---- a local Ray ----------------------------------------------------------------------------

def test_local_ray_starts_without_a_dashboard(monkeypatch):
    ray = pytest.importorskip("ray")
    runtime = pytest.importorskip("sal_ray.sweep.runtime")
    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(runtime.ray_compat, "cluster_on_this_machine", lambda: False)
    runtime.init_ray(None, 2)
    (kw,) = calls
    assert kw["include_dashboard"] is False and kw["num_cpus"] == 2
    assert "address" not in kw  # a private, in-process Ray: never someone else's cluster
    assert kw.get("dashboard_host", "127.0.0.1") in ("127.0.0.1", "localhost")
    assert kw.get("_node_ip_address") not in ("0.0.0.0", "::")
    # a new local Ray turns token authentication on by itself (Ray 2.60): nothing here
    # may turn it off
    sources = "".join(p.read_text() for p in (REPO / "sal_ray").rglob("*.py"))
    assert not re.search(r"RAY_AUTH_MODE\W+disabled", sources)


# ---- no credentials in the repository ---------------------------------------------------------

# Built from pieces, so this file holds no match of its own.
SECRET_PATTERNS = {
    "AWS access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key": r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}",
    "private key": "-----BEGIN [A-Z ]*" + "PRIVATE KEY-----",
    "password literal": r"(?i)\b(?:password|passwd)\s*[=:]\s*['\"][^'\"\s]{4,}['\"]",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "API key (sk-)": r"\bsk-[A-Za-z0-9]{32,}",
    "Google API key": r"\bAIza[0-9A-Za-z_-]{35}\b",
    "URI with a password": r"\b[a-z][\w+.-]*://[^/\s:@'\"]+:([^/\s@'\"]+)@",
}
# passwords the tests and docs use as obvious stand-ins
FAKE_PASSWORDS = {"***", "s3cret", "secret", "password", "pw", "PASSWORD"}


def find_secrets(text: str) -> list[str]:
    found = []
    for what, pattern in SECRET_PATTERNS.items():
        for m in re.finditer(pattern, text):
            if what == "URI with a password" and m.group(1) in FAKE_PASSWORDS:
                continue
            found.append(f"{what}: {m.group(0)[:40]}")
    return found


def test_the_scanner_finds_each_kind_of_secret():
    planted = ["AKIA" + "Q" * 16, "aws_secret_access_key = " + "a/B+" * 10,
               "-----BEGIN RSA " + "PRIVATE KEY-----", "pass" + "word='hunter22'",
               "ghp_" + "x" * 36, "xoxb-" + "1234567890-abc", "sk-" + "A" * 40,
               "AIza" + "B" * 35, "postgresql://bob:" + "tr0ub4dor" + "@db/x"]
    for text in planted:
        assert find_secrets(text), text
    assert find_secrets("http://alice:s3cret@127.0.0.1:9") == []  # a test's stand-in


def test_no_credentials_in_tracked_files():
    try:
        files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                               check=True, timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    files = [f for f in files if f]
    assert len(files) > 20
    names = re.compile(r"(^|/)(\.env|id_rsa|id_ed25519|auth_token|credentials)$|\.(pem|key|p12)$")
    assert [f for f in files if names.search(f)] == []
    hits = {}
    for f in files:
        path = REPO / f
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or gone
        found = find_secrets(text)
        if found:
            hits[f] = found
    assert hits == {}


# ---- secrets in the environment never reach MLflow ----------------------------------------------

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "GITHUB_TOKEN", "HF_TOKEN",
              "RAY_AUTH_TOKEN", "MY_SERVICE_SECRET_VALUE", "DB_PASSWORD", "OPENAI_API_KEY",
              "SAL_RAY_KEY")
SENTINEL = "sentinel-9f3a7c"


def test_secret_environment_variables_never_reach_mlflow(monkeypatch, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from sal_ray.sweep import parent as parent_run
    from sal_ray.tracking import provenance, sink as sinks, store
    for i, name in enumerate(SECRET_ENV):
        monkeypatch.setenv(name, f"{SENTINEL}-{i}")
    provenance.machine.cache_clear()  # computed now, with the variables set
    provenance.code_version.cache_clear()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = store.check_store(uri, "secrets")
    client = mlflow.MlflowClient(uri)
    # a training run, as `sal-ray train` and every trial record it
    sink = sinks.MLflowSink(uri, exp, tags={"sweep": "unit"}, flush_every_s=0.0)
    fit(Config().replace(epochs=1, width=16, n_areas=2, batch_size=64), [sink])
    # a sweep's parent run: its tags and its settings
    plan = sw.plan(["digits"], ["sal", "bp"], {"lr": [1e-3, 1e-2]}, fixed={"epochs": 1},
                   sampler="grid", name="secrets")
    parent = parent_run.open_parent(uri, exp, plan, str(tmp_path / "runs"))
    for run_id in (sink.run_id, parent):
        data = client.get_run(run_id).data
        logged = {**data.params, **data.tags, **{k: str(v) for k, v in data.metrics.items()}}
        assert len(data.params) > 5 and len(data.tags) > 5
        leaks = {k: v for k, v in logged.items() if SENTINEL in k or SENTINEL in v}
        assert leaks == {}
        assert not [k for k in logged if any(n.lower() in k.lower() for n in SECRET_ENV)]
    provenance.machine.cache_clear()
    provenance.code_version.cache_clear()


# ---- a tracking URI's password is redacted where it is printed ---------------------------------

def test_redaction_of_printed_uris():
    from sal_ray.tracking import store as tracking
    assert tracking.redact(PASSWORD_URI) == "postgresql://alice:***@db.internal:5432/mlflow"
    assert tracking.redact("sqlite:////x/mlflow.db") == "sqlite:////x/mlflow.db"
    assert tracking.redact(f"from {PASSWORD_URI} and {AT_PASSWORD_URI}") == \
        "from postgresql://alice:***@db.internal:5432/mlflow and https://bob:***@h/x"
    assert tracking.ui_command("http://alice:s3cret@mlflow:5000") == \
        "open http://alice:***@mlflow:5000 in a browser"


def test_tracking_redacts_every_printed_uri():
    from sal_ray.tracking import store as tracking
    assert "s3cret" not in tracking.ui_command(PASSWORD_URI)  # the sweep's last line prints it
    assert "ss@" not in tracking.redact(AT_PASSWORD_URI)


def test_report_notes_are_redacted():
    store = pytest.importorskip("dashboards.store") if (REPO / "dashboards").exists() else None
    if store is None:
        pytest.skip("no dashboards package")
    import pandas as pd
    runset = store.RunSet(PASSWORD_URI, pd.DataFrame(), {}, {}, {})
    runset.note(f"experiment 'x' not found in {PASSWORD_URI}")
    assert runset.notes == ["experiment 'x' not found in "
                            "postgresql://alice:***@db.internal:5432/mlflow"]


def test_sweep_prints_and_raises_only_redacted_uris(monkeypatch, tmp_path, capsys):
    import sal_ray
    from sal_ray import ConfigError
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from sal_ray.sweep import runtime
    monkeypatch.setattr(runtime, "init_ray", lambda *a: pytest.fail("Ray must not start"))
    with pytest.raises(ConfigError) as info:  # nothing listens on port 9
        sal_ray.tune(["digits"], ["sal"], {"lr": [1e-3, 1e-2]}, fixed={"epochs": 1},
                     sampler="grid", tracking_uri="http://alice:s3cret@127.0.0.1:9")
    out, err = capsys.readouterr()
    assert "tracking: http://127.0.0.1:9," in out  # its credential went to the environment
    assert "s3cret" not in out + err + str(info.value)
    assert list(tmp_path.iterdir()) == []
