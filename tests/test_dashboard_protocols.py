"""The report keeps protocols apart, shows every dataset's published row, logs
only into the sweeps it covers, and builds without a warning.

The store here is written with MLflow's client in a sweep's layout
(docs/dashboards.md: parent run per sweep, one child per seed with every
trainer option from `Config.to_flat()`, the sweep's tags, per-epoch metrics at
step = epoch, final_* metrics); the metric values are drawn from a seeded
generator, not trained: what is under test is how the report groups, labels
and places them, and the expected numbers are computed here from the client's
own data.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_dashboard_report import cells_of, read_tables  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

pytest.importorskip("mlflow")
pytest.importorskip("matplotlib")

EPOCHS = 3
BASE = dict(width=32, batch_size=32, epochs=EPOCHS)
# (experiment, sweep, searched, fixed lr, [(dataset, method, n_areas)], seeds)
SWEEPS = [
    ("p-conv", "convergence-20261201-090000", "n_areas", 0.05,
     [(d, m, n) for d in ("digits", "usps") for m, n in (("bp", 1), ("sal", 1), ("sal", 4))], 2),
    ("p-conv", "convergence-20261202-090000", "n_areas", 0.1,
     [("digits", m, n) for m, n in (("bp", 1), ("sal", 1), ("sal", 4))], 2),
    ("p-moe", "moe-20261201-090000", "n_areas", 0.05,
     [("digits", m, n) for m in ("sal", "moe") for n in (2, 4)], 2),
]
LR_HIGH = "convergence: 3 epochs, lr 0.1"
LR_LOW = "convergence, moe: 3 epochs, lr 0.05"


def write_run(client, exp_id, parent, sweep, searched, options, rng):
    from mlflow.entities import Metric, Param

    from sal_ray.config import Config
    flat = Config.from_flat(options).to_flat()
    run = client.create_run(exp_id, run_name="{dataset}-{method}-{n_areas}-lr{lr}-s{seed}"
                            .format(**flat), tags={
                                "mlflow.parentRunId": parent, "sweep": sweep,
                                "searched": searched, "dataset": flat["dataset"],
                                "method": flat["method"], "status": "completed"})
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in flat.items()], synchronous=True)
    metrics = []
    for e in range(1, EPOCHS + 1):
        row = {"train_loss": 2.0 / e + 0.1 * rng.random(), "val_loss": 2.1 / e + 0.1 * rng.random(),
               "train_acc": 0.2 * e * rng.random(), "val_acc": 0.25 * e * rng.random()}
        if flat["method"] != "bp":
            share = rng.dirichlet(np.ones(flat["n_areas"]))
            row.update({f"area_share.l0.a{a}": float(s) for a, s in enumerate(share)})
        metrics += [Metric(k, float(v), 1_700_000_000_000 + e, e) for k, v in row.items()]
    metrics += [Metric(f"final_{k}", float(row[k]), 1_700_000_000_999, EPOCHS)
                for k in ("train_loss", "val_loss", "val_acc")]
    client.log_batch(rid, metrics=metrics, synchronous=True)
    client.set_terminated(rid, "FINISHED")
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient
    root = tmp_path_factory.mktemp("protocols-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    rng = np.random.default_rng(0)
    info = {"uri": uri, "parents": {}, "exp": {}}
    for exp, sweep, searched, lr, cells, seeds in SWEEPS:
        if exp not in info["exp"]:
            info["exp"][exp] = client.create_experiment(
                exp, artifact_location=(root / "artifacts" / exp).as_uri())
        parent = client.create_run(info["exp"][exp], run_name=sweep,
                                   tags={"sweep": sweep, "kind": "sweep"}).info.run_id
        info["parents"][sweep] = parent
        for dataset, method, n in cells:
            for seed in range(seeds):
                write_run(client, info["exp"][exp], parent, sweep, searched,
                          dict(BASE, dataset=dataset, method=method, n_areas=n, lr=lr, seed=seed),
                          rng)
        client.set_terminated(parent)
    # a sweep that ended before any trial: its parent covers no run of any page
    info["parents"]["empty"] = client.create_run(
        info["exp"]["p-conv"], run_name="convergence-20261203-090000",
        tags={"sweep": "convergence-20261203-090000", "kind": "sweep"}).info.run_id
    return info


@pytest.fixture(scope="module")
def both(store, tmp_path_factory):
    """The page of both experiments, every warning recorded while it is built."""
    from dashboards.report import generate
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = generate(["p-conv", "p-moe"], tmp_path_factory.mktemp("both"), store["uri"])
    return result, caught


def expected(uri, sweeps) -> dict:
    """(dataset, column) -> mean final val acc % over the runs of `sweeps`."""
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    out = {}
    for r in client.search_runs(exps, max_results=1000):
        p = r.data.params
        if "method" in p and r.data.tags.get("sweep") in sweeps:
            col = "Baseline" if p["method"] == "bp" else \
                {"sal": "SAL", "moe": "MoE"}[p["method"]] + "-" + p["n_areas"]
            out.setdefault((p["dataset"], col), []).append(100 * r.data.metrics["final_val_acc"])
    return {k: np.mean(v) for k, v in out.items()}


def rows_by_protocol(table) -> dict:
    """(dataset, protocol, column) -> cell attrs, for our rows."""
    out = {}
    for attrs, cells in table:
        if attrs.get("data-source") == "ours":
            for cattrs, _ in cells:
                if "data-mean" in cattrs or "data-train" in cattrs:
                    out[(attrs["data-dataset"], attrs["data-protocol"], cattrs["data-col"])] = cattrs
    return out


def test_protocols_are_named_from_study_and_fixed_settings(both):
    result, _ = both
    html = result.path.read_text()
    assert LR_HIGH in html and LR_LOW in html
    summary = json.loads((result.out_dir / "summary.json").read_text())
    names = {p["name"]: p for p in summary["protocols"]}
    assert set(names) == {LR_HIGH, LR_LOW}
    assert names[LR_LOW]["experiments"] == ["p-conv", "p-moe"]
    assert names[LR_LOW]["axes"] == [] and names[LR_LOW]["fixed"]["lr"] == 0.05
    assert names[LR_LOW]["n_runs"] == 12 + 8 and names[LR_HIGH]["n_runs"] == 6
    assert "lr 0.05 (paper 0.0001)" in names[LR_LOW]["differences"]


def test_table_rows_never_pool_two_protocols(store, both):
    result, _ = both
    shown = rows_by_protocol(read_tables(result.path)["table2"])
    low = expected(store["uri"], {"convergence-20261201-090000", "moe-20261201-090000"})
    high = expected(store["uri"], {"convergence-20261202-090000"})
    assert {(d, c) for d, p, c in shown if p == LR_HIGH} == set(high)
    assert {(d, c) for d, p, c in shown if p == LR_LOW} == set(low)
    for (d, c), mean in high.items():
        assert float(shown[(d, LR_HIGH, c)]["data-mean"]) == pytest.approx(mean, abs=1e-9)
        assert shown[(d, LR_HIGH, c)]["data-configs"] == "1"
    for (d, c), mean in low.items():
        assert float(shown[(d, LR_LOW, c)]["data-mean"]) == pytest.approx(mean, abs=1e-9)
    # a pooled Digits SAL-4 (both lrs) would differ from each
    assert low[("digits", "SAL-4")] != pytest.approx(high[("digits", "SAL-4")])


def test_one_figure_per_protocol_named_in_its_title(both):
    from dashboards.protocols import _safe
    result, _ = both
    names = {f.stem for f in result.figures}
    for proto in (LR_LOW, LR_HIGH):
        slug = _safe(proto)
        assert f"accuracy_vs_n_areas__{slug}" in names
        assert f"area_usage__{slug}" in names
    # only the lr-0.05 protocol has MoE runs: one SAL-against-MoE figure, of it alone
    assert [n for n in names if n.startswith("sal_vs_moe")] == [f"sal_vs_moe__{_safe(LR_LOW)}"]
    assert f"curves_digits_usps__{_safe(LR_LOW)}" in names
    assert f"curves_digits__{_safe(LR_HIGH)}" in names
    html = result.path.read_text()
    assert f'alt="Accuracy against n_areas: {LR_HIGH}"' in html
    assert f'alt="SAL against MoE (paper Figs. 4-5): {LR_LOW}"' in html


def test_every_dataset_gets_its_published_row(both):
    """USPS, not only Digits: the paper's numbers (docs/spec.md, Tables 2 and 3)."""
    result, _ = both
    tables = read_tables(result.path)
    acc = cells_of(tables["table2"], source="paper")
    assert acc[("usps", "Baseline")][1] == "81.74 ± 1.12"
    assert acc[("usps", "SAL-4")][1] == "87.90 ± 0.56"
    assert acc[("digits", "SAL-2")][1] == "35.11 ± 8.05"
    assert acc[("digits", "MoE-2")][1] == "—"
    loss = cells_of(tables["table3"], source="paper")
    assert loss[("usps", "SAL-1")][1] == "0.48 / 0.57"
    # one published row per dataset, after that dataset's rows of ours
    order = [(a.get("data-dataset"), a.get("data-source")) for a, _ in tables["table2"][1:]]
    assert order == [("digits", "ours"), ("digits", "ours"), ("digits", "paper"),
                     ("usps", "ours"), ("usps", "paper")]


def test_logs_only_into_the_sweeps_it_covers(store, tmp_path):
    from mlflow import MlflowClient

    from dashboards.report import generate
    client = MlflowClient(tracking_uri=store["uri"])
    one = generate(["p-conv"], tmp_path / "one", store["uri"], sweep="convergence-20261202-090000")
    assert one.logged_to == [store["parents"]["convergence-20261202-090000"]]
    assert "report/report.html" in {a.path for a in client.list_artifacts(one.logged_to[0],
                                                                           "report")}
    both = generate(["p-conv"], tmp_path / "both", store["uri"])
    covered = sorted(store["parents"][s] for s in ("convergence-20261201-090000",
                                                   "convergence-20261202-090000"))
    assert both.logged_to == covered  # not the empty sweep's parent, not p-moe's
    for pid in covered:  # beside each sweep's own page, not over it
        assert "reports/p-conv/report.html" in {
            a.path for a in client.list_artifacts(pid, "reports/p-conv")}
    assert client.list_artifacts(store["parents"]["empty"]) == []
    assert "reports/p-conv" not in {  # p-moe's sweep is not on this page
        a.path for a in client.list_artifacts(store["parents"]["moe-20261201-090000"], "reports")}
    only = client.list_artifacts(store["parents"]["convergence-20261201-090000"], "report")
    assert only == []  # a several-sweep page never takes a sweep's own report/ place


def test_the_build_emits_no_warning(both):
    _, caught = both
    assert [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
            for w in caught] == []


def test_a_sweep_varying_an_option_untagged_is_one_protocol_with_that_axis():
    import pandas as pd

    from dashboards.protocols import assign
    runs = pd.DataFrame({
        "run_id": list("abcd"), "experiment": "e", "sweep": ["s-20261201-000000"] * 2 + ["t"] * 2,
        "searched": None, "dataset": "digits", "method": "sal", "n_areas": 4, "seed": 0,
        "lr": [0.1, 0.01, 0.1, 0.1], "epochs": [5, 5, 5, 25], "width": 32})
    out, protos = assign(runs)
    assert [p.name for p in protos] == ["s: lr sweep, 5 epochs", "t: epochs sweep, lr 0.1"]
    assert list(out["protocol"]) == ["s: lr sweep, 5 epochs"] * 2 + ["t: epochs sweep, lr 0.1"] * 2
    # fixed the same everywhere: width is named nowhere
    assert not any("width" in p.name for p in protos)
