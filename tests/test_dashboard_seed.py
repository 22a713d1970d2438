"""A real MLflow store for the dashboard tests, seeded by the real trainer.

`seeded(tmp_path_factory)` trains tiny Digits runs with `sal_ray.fit` and logs
them with the MLflow client in the project's layout (docs/dashboards.md): one
parent run per sweep, one child run per seed, bare option names as params,
per-epoch metrics at step = epoch, final_* metrics, tags dataset/method/sweep/
status. It is built once per test session (about 15 s on 2 cores) and shared by
test_dashboard_report.py and test_browser_dashboard.py.

Experiments:
- dash-digits (sweep table2): bp, sal n_areas {1, 4}, moe 4; seeds 0 and 1.
- dash-search (sweep search): sal on Digits over lr, width and depth (an
  Optuna-like search; one seed each, two seeds for one configuration).
- dash-broken (sweep broken): a completed run, a diverged one (one epoch logged,
  no final metrics), one with nothing logged, and one with its full history but
  no final_* metrics.
- dash-empty: no runs.
"""

from __future__ import annotations

import pathlib

import pytest

TABLE2 = [("bp", 1), ("sal", 1), ("sal", 4), ("moe", 4)]
SEEDS = (0, 1)
BASE = dict(dataset="digits", epochs=2, width=32, lr=0.05, batch_size=32)
# (lr, width, depth, seed): varied like a search would, one seed each but one.
SEARCH = [(0.01, 32, 2, 0), (0.05, 16, 2, 0), (0.05, 32, 3, 0), (0.1, 16, 3, 0),
          (0.1, 32, 2, 0), (0.1, 32, 2, 1), (0.02, 16, 2, 0)]

_CACHE: dict[str, dict] = {}


def run_name(cfg: dict) -> str:
    return f"{cfg['dataset']}-{cfg['method']}-{cfg['n_areas']}-w{cfg['width']}-d{cfg.get('depth', 2)}" \
           f"-lr{cfg['lr']}-s{cfg['seed']}"


def log_result(client, exp_id: str, parent_id: str, sweep: str, result, *, name: str,
               final: bool = True, epochs_logged: int | None = None, status: str | None = None):
    """Log one trainer result in the contract's layout; returns the run id."""
    from mlflow.entities import Metric, Param

    cfg = result.config
    run = client.create_run(exp_id, run_name=name, tags={
        "mlflow.parentRunId": parent_id, "dataset": cfg["dataset"], "method": cfg["method"],
        "sweep": sweep, "status": status or result.status})
    rid = run.info.run_id
    params = [Param(k, str(v)) for k, v in cfg.items()]
    for i in range(0, len(params), 90):
        client.log_batch(rid, params=params[i:i + 90], synchronous=True)
    history = result.history[:epochs_logged] if epochs_logged is not None else result.history
    metrics = []
    t = 1_700_000_000_000
    for row in history:
        step = int(row["epoch"])
        metrics += [Metric(k, float(v), t + step, step) for k, v in row.items() if k != "epoch"]
    if final and history:
        last = history[-1]
        metrics += [Metric(f"final_{k}", float(last[k]), t + 999, int(last["epoch"]))
                    for k in ("train_loss", "val_loss", "val_acc")]
    for i in range(0, len(metrics), 500):
        client.log_batch(rid, metrics=metrics[i:i + 500], synchronous=True)
    client.set_terminated(rid, "FINISHED" if (status or result.status) == "completed" else "FAILED")
    return rid


def _fit(**options):
    from sal_ray import Config, fit
    return fit(Config.from_flat({**BASE, **options}))


def seed_store(root: pathlib.Path) -> dict:
    import torch
    from mlflow import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    art = (root / "artifacts").as_uri()
    info = {"uri": uri, "root": root, "experiments": {}, "parents": {}, "run_names": {}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny nets are faster single-threaded on 2 cores
    try:
        def sweep(exp_name: str, sweep_name: str, configs, post=None):
            exp_id = client.create_experiment(exp_name, artifact_location=f"{art}/{exp_name}")
            parent = client.create_run(exp_id, run_name=f"sweep-{sweep_name}",
                                       tags={"sweep": sweep_name})
            pid = parent.info.run_id
            names = []
            for options in configs:
                result = _fit(**options)
                name = run_name(result.config)
                log_result(client, exp_id, pid, sweep_name, result, name=name)
                names.append(name)
            if post:
                names += post(exp_id, pid)
            client.set_terminated(pid)
            info["experiments"][exp_name] = exp_id
            info["parents"][exp_name] = pid
            info["run_names"][exp_name] = names

        sweep("dash-digits", "table2", [dict(method=m, n_areas=n, seed=s)
                                        for m, n in TABLE2 for s in SEEDS])
        sweep("dash-search", "search", [dict(method="sal", n_areas=4, lr=lr, width=w, depth=d,
                                             seed=s) for lr, w, d, s in SEARCH])

        def broken(exp_id, pid):
            names = []
            base = _fit(method="sal", n_areas=4, seed=0)
            other = _fit(method="sal", n_areas=4, seed=1)
            nohist = _fit(method="sal", n_areas=4, seed=2)
            log_result(client, exp_id, pid, "broken", base, name="broken-completed")
            log_result(client, exp_id, pid, "broken", other, name="broken-diverged",
                       final=False, epochs_logged=1, status="diverged")
            log_result(client, exp_id, pid, "broken", nohist, name="broken-nofinal",
                       final=False)
            crashed = client.create_run(exp_id, run_name="broken-crashed", tags={
                "mlflow.parentRunId": pid, "dataset": "digits", "method": "sal",
                "sweep": "broken", "status": "crashed"})
            # the tracker logs every option when a run starts, before any epoch
            from sal_ray import Config
            flat = Config.from_flat({**BASE, "method": "sal", "n_areas": 4, "seed": 3}).to_flat()
            for k, v in flat.items():
                client.log_param(crashed.info.run_id, k, str(v))
            client.set_terminated(crashed.info.run_id, "FAILED")
            names += ["broken-completed", "broken-diverged", "broken-nofinal", "broken-crashed"]
            return names

        sweep("dash-broken", "broken", [], post=broken)
        info["experiments"]["dash-empty"] = client.create_experiment(
            "dash-empty", artifact_location=f"{art}/dash-empty")
    finally:
        torch.set_num_threads(threads)
    return info


def seeded(tmp_path_factory) -> dict:
    """The session's seeded store, built on first use."""
    if "store" not in _CACHE:
        _CACHE["store"] = seed_store(tmp_path_factory.mktemp("mlflow-store"))
    return _CACHE["store"]


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return seeded(tmp_path_factory)


def test_seeded_store_follows_the_layout(store):
    """The seeding itself: parent/child nesting, params as strings, step = epoch."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store["uri"])
    exp = store["experiments"]["dash-digits"]
    runs = client.search_runs([exp], "tags.sweep = 'table2'")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == len(TABLE2) * len(SEEDS)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {store["parents"]["dash-digits"]}
    r = children[0]
    assert r.data.params["dataset"] == "digits" and r.data.params["epochs"] == "2"
    hist = client.get_metric_history(r.info.run_id, "val_acc")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == [1, 2]
    assert 0.0 <= r.data.metrics["final_val_acc"] <= 1.0
