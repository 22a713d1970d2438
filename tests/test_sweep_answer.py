"""Where researchers look (issue 14): one small real sweep on Digits (local Ray,
Optuna's grid, a SQLite MLflow store), shared by every test here, then read
back from MLflow and, for the link, from a real MLflow server in headless
Chromium.

The sweep: sal over lr {0.05, 1000} x n_areas {1, 4} and bp over lr {0.05,
1000}, 2 seeds, 2 epochs; lr 1000 makes bp diverge (a loss past diverge_loss
or not finite), so a diverged trial is there to be marked and passed over.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pathlib
import statistics
import sys

import pytest

import sal_ray
from sal_ray.tracking import ui_link

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.ray

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
BASE = {"epochs": 2, "width": 32, "batch_size": 32}
PER_EPOCH = ("train_loss", "train_acc", "val_loss", "val_acc", "samples_per_s", "epoch_time_s",
             "wall_time_s")
COST = ("cost_wall_s", "cost_cpu_s", "cost_gpu_s", "peak_rss_mb")


@pytest.fixture(scope="module")
def swept(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("answer")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        res = sal_ray.tune(["digits"], ["sal", "bp"], {"lr": [0.05, 1e3], "n_areas": [1, 4]},
                           sampler="grid", fixed=BASE, seeds=2, experiment="answer",
                           name="answer", tracking_uri=uri, storage_path=str(root / "ray"),
                           log_model="none", verbose=1)  # system metrics on by default
    client = mlflow.MlflowClient(uri)
    kids = [r for r in client.search_runs([res.experiment_id], max_results=1000)
            if r.data.tags.get("mlflow.parentRunId") == res.parent_run_id]
    return {"res": res, "client": client, "kids": kids, "console": console.getvalue(),
            "root": root, "uri": uri, "parent": client.get_run(res.parent_run_id)}


def test_the_parent_run_carries_the_answer(swept):
    res, client, kids, parent = swept["res"], swept["client"], swept["kids"], swept["parent"]
    assert set(res.best) == {("digits", "sal"), ("digits", "bp")}
    metrics, tags = parent.data.metrics, parent.data.tags
    note = tags["mlflow.note.content"]
    for (d, m), best in res.best.items():
        seeds = [r for r in kids if r.data.tags["trial"] == best["trial_id"]]
        finals = [r.data.metrics["final_val_acc"] for r in seeds]
        assert len(finals) == 2
        assert metrics[f"best/{d}/{m}/val_acc_mean"] == pytest.approx(statistics.fmean(finals))
        assert metrics[f"best/{d}/{m}/val_acc_std"] == pytest.approx(statistics.stdev(finals))
        for k in ("val_loss", "train_loss"):
            values = [r.data.metrics[f"final_{k}"] for r in seeds]
            assert metrics[f"best/{d}/{m}/{k}_mean"] == pytest.approx(statistics.fmean(values))
        # the tag names the best configuration's best seed run, by MLflow run id
        run = client.get_run(tags[f"best.{d}.{m}.run_id"])
        assert run.data.tags["trial"] == best["trial_id"] == tags[f"best.{d}.{m}.trial_id"]
        assert run.data.metrics["final_val_acc"] == max(finals)
        assert set(tags[f"best.{d}.{m}.run_ids"].split(",")) == {r.info.run_id for r in seeds}
        assert tags[f"best.{d}.{m}.run_name"] == run.info.run_name
        # the description links to it inside the UI
        assert f"(#/experiments/{res.experiment_id}/runs/{run.info.run_id})" in note
    arts = {f.path for f in client.list_artifacts(res.parent_run_id)}
    assert {"trials.csv", "summary.csv", "summary.txt", "best.json", "answer.md"} <= arts
    table = client.download_artifacts(res.parent_run_id, "trials.csv", str(swept["root"]))
    assert len(pathlib.Path(table).read_text().strip().splitlines()) == 1 + len(res.trials)
    assert tags["ui_link"] == res.ui_link


def test_a_diverged_run_is_marked_and_never_the_best(swept):
    res, kids, parent = swept["res"], swept["kids"], swept["parent"]
    status = dict(zip(res.trials.trial_id, res.trials.status))
    lr = dict(zip(res.trials.trial_id, res.trials.lr))
    diverged = {t for t, s in status.items() if s == "diverged"}
    bp_bad = [t for t in diverged if lr[t] == 1e3 and
              res.trials.set_index("trial_id").loc[t, "method"] == "bp"]
    assert len(bp_bad) == 1
    assert set(parent.data.tags["diverged_trials"].split(",")) == diverged
    assert parent.data.metrics["trials_diverged"] == len(diverged)
    for r in kids:
        t = r.data.tags["trial"]
        assert r.data.tags["trial_status"] == status[t]  # every seed run says how its trial ended
        if t in diverged:
            assert r.data.tags["status"] in ("diverged", "completed")
    assert any(r.data.tags["status"] == "diverged" for r in kids)
    for b in res.best.values():
        assert status[b["trial_id"]] == "completed" and b["params"]["lr"] == 0.05
    assert not diverged & {parent.data.tags[f"best.digits.{m}.trial_id"] for m in ("sal", "bp")}


def test_trial_runs_have_unique_readable_names(swept):
    res, kids = swept["res"], swept["kids"]
    names = [r.info.run_name for r in kids]
    assert len(set(names)) == len(names)
    numbers = {}
    for r in kids:
        p, tags = r.data.params, r.data.tags
        numbers.setdefault(tags["trial"], set()).add(tags["trial_number"])
        searched = tags["searched"].split(",")
        shown = {"lr": f"lr{float(p['lr']):.3g}", "n_areas": f"n{p['n_areas']}"}
        want = " ".join([p["method"], f"#{tags['trial_number']}", *(shown[k] for k in searched),
                         f"s{p['seed']}", "digits"])
        assert r.info.run_name == want
    # one number per trial, a different one for each
    assert all(len(v) == 1 for v in numbers.values())
    assert len({next(iter(v)) for v in numbers.values()}) == len(res.trials)


def test_area_usage_is_a_per_layer_summary_and_an_artifact(swept):
    client, kids = swept["client"], swept["kids"]
    routed = [r for r in kids if r.data.params["n_areas"] == "4" and
              r.data.tags["status"] == "completed"]
    assert routed
    for r in kids:
        assert not [k for k in r.data.metrics if k.startswith("area_share.")]
        if r.data.tags["status"] != "completed":
            continue
        keys = [*PER_EPOCH, *(k for k in r.data.metrics if k.startswith(("area_", "areas_")))]
        for key in keys:  # epoch is the step of every per-epoch metric
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [1, 2], key
    for r in routed:
        path = client.download_artifacts(r.info.run_id, "area_usage.json", str(swept["root"]))
        data = json.loads(pathlib.Path(path).read_text())
        assert data["layers"] == [0] and data["n_areas"] == 4
        assert [e["epoch"] for e in data["epochs"]] == [1, 2]
        entropy = {m.step: m.value for m in
                   client.get_metric_history(r.info.run_id, "area_entropy_bits.l0")}
        top = {m.step: m.value for m in client.get_metric_history(r.info.run_id,
                                                                  "area_max_share.l0")}
        for e in data["epochs"]:
            (share,) = e["share"]
            assert sum(share) == pytest.approx(1.0)
            assert entropy[e["epoch"]] == pytest.approx(-sum(p * math.log2(p) for p in share if p))
            assert top[e["epoch"]] == pytest.approx(max(share))
            assert 0 <= entropy[e["epoch"]] <= 2 + 1e-9  # log2(4) bits: an even split
        used = client.get_metric_history(r.info.run_id, "areas_used.l0")[-1].value
        assert used == sum(p > 0 for p in data["epochs"][-1]["share"][0])
    for r in kids:  # an unrouted net has no usage to show
        if r.data.params["n_areas"] == "1":
            assert "area_usage.json" not in {f.path for f in client.list_artifacts(r.info.run_id)}


def test_every_trial_run_records_its_cost_and_the_parent_sums_it(swept):
    res, kids, parent = swept["res"], swept["kids"], swept["parent"]
    for r in kids:
        m = r.data.metrics
        assert set(COST) <= set(m), r.info.run_name
        assert m["cost_wall_s"] > 0 and m["cost_cpu_s"] > 0 and m["peak_rss_mb"] > 50
        assert m["cost_gpu_s"] == 0.0  # a CPU run
        if "final_wall_time_s" in m:  # the meter spans the trainer's own clock
            assert m["cost_wall_s"] >= m["final_wall_time_s"]
        # MLflow's system metrics are on for trials
        assert "system/cpu_utilization_percentage" in m, r.info.run_name
    pm = parent.data.metrics
    for k in ("cost_wall_s", "cost_cpu_s", "cost_gpu_s"):
        assert pm[k] == pytest.approx(sum(r.data.metrics[k] for r in kids))
        for method in ("sal", "bp"):
            assert pm[f"cost/digits/{method}/{k}"] == pytest.approx(
                sum(r.data.metrics[k] for r in kids if r.data.params["method"] == method))
    assert pm["peak_rss_mb"] == max(r.data.metrics["peak_rss_mb"] for r in kids)
    s = res.summary().set_index("method")
    for method in ("sal", "bp"):
        assert s.loc[method, "cost_wall_s"] == pytest.approx(pm[f"cost/digits/{method}/cost_wall_s"])


def test_the_sweep_prints_a_link_that_opens_its_runs(swept):
    res, client, kids = swept["res"], swept["client"], swept["kids"]
    assert res.ui_link.startswith(f"{ui_link.DEFAULT_UI}/#/experiments/{res.experiment_id}/runs?")
    assert res.ui_link in swept["console"]
    key = res.ui_link.split("viewStateShareKey=")[1].split("&")[0]
    exp = client.get_experiment(res.experiment_id)
    state = json.loads(exp.tags[ui_link.SHARE_TAG_PREFIX + key])
    cols = state["selectedColumns"]
    for want in ("params.`method`", "params.`n_areas`", "params.`lr`", "params.`depth`",
                 "metrics.`trial_objective_val_acc`"):
        assert want in cols
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "method"}]
    assert state["orderByKey"] == "metrics.`trial_objective_val_acc`" and not state["orderByAsc"]
    # the view's filter holds exactly the sweep's trial runs (the parent left out)
    found = client.search_runs([res.experiment_id], state["searchFilter"], max_results=1000)
    assert {r.info.run_id for r in found} == {r.info.run_id for r in kids}


@pytest.mark.browser
def test_the_link_opens_the_comparison_in_a_real_mlflow_ui(swept, tmp_path):
    """Headless Chromium on a real `mlflow server` over the sweep's store: the link
    opens the trial runs grouped by method, and the columns hold values."""
    import test_browser_dashboard as tb  # skips, naming what is missing, without Chromium
    from mlflow_server import MLflowServer
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    res, kids = swept["res"], swept["kids"]
    server = MLflowServer(swept["uri"], tmp_path)
    options = webdriver.ChromeOptions()
    options.binary_location = tb.CHROMIUM
    for flag in tb.CHROME_FLAGS:
        if not flag.startswith("--window-size"):
            options.add_argument(flag)
    options.add_argument("--window-size=2600,1200")  # every column on screen (ag-grid virtualises)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    driver = None
    try:
        link = res.ui_link.replace(ui_link.DEFAULT_UI, server.start())
        driver = webdriver.Chrome(service=Service(tb.CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(120)
        driver.get(link)
        names = [r.info.run_name for r in kids]
        tb.wait_for_text(driver, ["Group: sal", "Group: bp", *names], timeout=120)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "Group by: method" in body and "viewing a shared view" in body
        assert f"{len(kids)} matching runs" in body  # the parent run is not among them
        tb.screenshot(driver, "mlflow-ui-sweep-link.png")

        def cells(col):
            return driver.execute_script(
                "return Array.from(document.querySelectorAll('.ag-cell[col-id=\"' + arguments[0]"
                " + '\"]')).map(e => e.innerText.trim())", col)

        WebDriverWait(driver, 60, 0.5).until(lambda d: len(cells("params.`lr`")) >= len(kids))
        by_method = {m: sum(r.data.params["method"] == m for r in kids) for m in ("sal", "bp")}
        methods = cells("params.`method`")
        for m, n in by_method.items():
            assert methods.count(m) == n, methods
        for col, want in (("params.`n_areas`", {r.data.params["n_areas"] for r in kids}),
                          ("params.`lr`", {r.data.params["lr"] for r in kids}),
                          ("params.`depth`", {r.data.params["depth"] for r in kids})):
            assert want <= set(cells(col)), (col, cells(col))
        objective = [c for c in cells("metrics.`trial_objective_val_acc`") if c and c != "-"]
        have = [r for r in kids if "trial_objective_val_acc" in r.data.metrics]
        assert len(objective) >= len(have) > 0
        assert all(0 <= float(c.split()[0]) <= 1 for c in objective)
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
