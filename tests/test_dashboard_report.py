"""The report against a real MLflow store seeded by the real trainer.

Every number on the page is checked against values computed here, independently,
from MlflowClient data with numpy: the report's code is not reused for the
expected values.
"""

from __future__ import annotations

import ast
import base64
import math
import pathlib
import re
import subprocess
import sys
from collections import defaultdict
from html.parser import HTMLParser

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_dashboard_seed import seeded  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # dashboards/ is a top-level package of the checkout

pytest.importorskip("mlflow")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return seeded(tmp_path_factory)


@pytest.fixture(scope="module")
def digits_report(store, tmp_path_factory):
    from dashboards.report import generate
    out = tmp_path_factory.mktemp("report-digits")
    return generate(["dash-digits"], out, store["uri"], sweep="table2")


@pytest.fixture(scope="module")
def search_report(store, tmp_path_factory):
    from dashboards.report import generate
    return generate(["dash-search"], tmp_path_factory.mktemp("report-search"), store["uri"])


@pytest.fixture(scope="module")
def broken_report(store, tmp_path_factory):
    from dashboards.report import generate
    return generate(["dash-broken"], tmp_path_factory.mktemp("report-broken"), store["uri"])


# ---- reading the page back ----------------------------------------------------------

class Tables(HTMLParser):
    """table id -> rows; a row is (tr attributes, [(td attributes, text)])."""

    def __init__(self):
        super().__init__()
        self.tables, self._table, self._row, self._cell = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = (attrs, [])
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [attrs, ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row[1].append((self._cell[0], self._cell[1].strip()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def read_tables(path) -> dict:
    parser = Tables()
    parser.feed(pathlib.Path(path).read_text(encoding="utf-8"))
    return parser.tables


def cells_of(table, source="ours") -> dict:
    """(dataset, column) -> (attrs, text) for the body rows from `source`."""
    out = {}
    for attrs, cells in table:
        if attrs.get("data-source") == source:
            for cattrs, text in cells:
                if "data-col" in cattrs:
                    out[(attrs["data-dataset"], cattrs["data-col"])] = (cattrs, text)
    return out


# ---- the expected numbers, computed independently -------------------------------------

def label(params) -> str:
    if params["method"] == "bp":
        return "Baseline"
    return {"sal": "SAL", "moe": "MoE"}[params["method"]] + "-" + params["n_areas"]


def leaf_runs(uri, experiment, sweep=None):
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id],
                              f"tags.sweep = '{sweep}'" if sweep else "")
    return client, [r for r in runs if "method" in r.data.params]


def expected_cells(uri, experiment, sweep=None):
    """(dataset, column) -> dict(acc mean/std in %, train/val loss means, n)."""
    _, runs = leaf_runs(uri, experiment, sweep)
    groups = defaultdict(list)
    for r in runs:
        groups[(r.data.params["dataset"], label(r.data.params))].append(r.data.metrics)
    out = {}
    for key, ms in groups.items():
        acc = np.array([100 * m["final_val_acc"] for m in ms])
        out[key] = {"mean": acc.mean(), "std": acc.std(ddof=1), "n": len(acc),
                    "train": np.mean([m["final_train_loss"] for m in ms]),
                    "val": np.mean([m["final_val_loss"] for m in ms])}
    return out


# ---- Table 2 and Table 3 ------------------------------------------------------------

def test_table2_cells_equal_mean_and_std_over_seeds(store, digits_report):
    expected = expected_cells(store["uri"], "dash-digits", "table2")
    shown = cells_of(read_tables(digits_report.path)["table2"])
    assert set(shown) == set(expected) == {("digits", c) for c in
                                           ("Baseline", "SAL-1", "SAL-4", "MoE-4")}
    for key, want in expected.items():
        attrs, text = shown[key]
        assert float(attrs["data-mean"]) == pytest.approx(want["mean"], abs=1e-9), key
        assert float(attrs["data-std"]) == pytest.approx(want["std"], abs=1e-9), key
        assert int(attrs["data-n"]) == want["n"] == 2
        assert text.startswith(f"{want['mean']:.2f} ± {want['std']:.2f}"), (key, text)


def test_table2_marks_the_best_of_each_row(store, digits_report):
    expected = expected_cells(store["uri"], "dash-digits", "table2")
    shown = cells_of(read_tables(digits_report.path)["table2"])
    top = max(v["mean"] for v in expected.values())
    for key, (attrs, text) in shown.items():
        is_best = math.isclose(expected[key]["mean"], top)
        assert ("best" in attrs.get("class", "").split()) == is_best, key
        assert ("★" in text) == is_best


def test_table3_losses_are_final_means(store, digits_report):
    expected = expected_cells(store["uri"], "dash-digits", "table2")
    shown = cells_of(read_tables(digits_report.path)["table3"])
    for key, want in expected.items():
        attrs, text = shown[key]
        assert float(attrs["data-train"]) == pytest.approx(want["train"], abs=1e-9)
        assert float(attrs["data-val"]) == pytest.approx(want["val"], abs=1e-9)
        assert text == f"{want['train']:.2f} / {want['val']:.2f}"


def test_published_digits_numbers_sit_beside_ours(digits_report):
    tables = read_tables(digits_report.path)
    paper_acc = cells_of(tables["table2"], source="paper")
    assert paper_acc[("digits", "Baseline")][1] == "38.53 ± 5.78"
    assert paper_acc[("digits", "SAL-4")][1] == "53.59 ± 8.37"
    assert paper_acc[("digits", "MoE-4")][1] == "—"  # the paper's Digits row has no MoE
    paper_loss = cells_of(tables["table3"], source="paper")
    assert paper_loss[("digits", "SAL-1")][1] == "2.22 / 2.22"
    html = digits_report.path.read_text()
    # our 2-epoch runs are not the paper's protocol, and the page says so
    assert "epochs 2 (paper 25)" in html and "width 32 (paper 256)" in html


# ---- figures, files, artifacts ------------------------------------------------------

def test_figures_are_embedded_and_written_as_png(digits_report):
    html = digits_report.path.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    files = sorted(digits_report.figures)
    assert {f.name for f in files} == {"accuracy_vs_n_areas.png", "sal_vs_moe.png",
                                       "curves_digits.png", "area_usage.png"}
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(f.read_bytes() for f in files)
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    # self-contained: no external script, stylesheet or image
    assert not re.search(r"<script|<link|src=\"http|src='http", html)
    for name in ("table2.csv", "table3.csv", "runs.csv", "summary.json"):
        assert (digits_report.out_dir / name).exists()


def test_report_is_logged_to_the_sweep_parent_run(store, digits_report):
    from mlflow import MlflowClient
    parent = store["parents"]["dash-digits"]
    assert digits_report.logged_to == [parent]
    client = MlflowClient(tracking_uri=store["uri"])
    names = {pathlib.PurePosixPath(a.path).name for a in client.list_artifacts(parent, "report")}
    assert {"report.html", "figures", "summary.json"} <= names
    figs = {pathlib.PurePosixPath(a.path).name
            for a in client.list_artifacts(parent, "report/figures")}
    assert "accuracy_vs_n_areas.png" in figs


def test_learning_curve_bands_are_mean_and_std_per_epoch(store):
    from dashboards import store as dstore, tables
    client, runs = leaf_runs(store["uri"], "dash-digits", "table2")
    sal4 = [r.info.run_id for r in runs if label(r.data.params) == "SAL-4"]
    runset = dstore.load_runs(["dash-digits"], store["uri"], "table2")
    stats = tables.curve_stats(runset.histories, sal4, "val_acc")
    per_run = [{m.step: m.value for m in client.get_metric_history(r, "val_acc")} for r in sal4]
    for epoch in (1, 2):
        vals = np.array([h[epoch] for h in per_run])
        assert stats.loc[epoch, "mean"] == pytest.approx(vals.mean(), abs=1e-12)
        assert stats.loc[epoch, "std"] == pytest.approx(vals.std(ddof=1), abs=1e-12)


def test_area_usage_is_the_final_epoch_share(store):
    from dashboards import store as dstore, tables
    client, runs = leaf_runs(store["uri"], "dash-digits", "table2")
    sal4 = [r for r in runs if label(r.data.params) == "SAL-4"]
    runset = dstore.load_runs(["dash-digits"], store["uri"], "table2")
    rows = runset.runs[runset.runs["run_id"].isin([r.info.run_id for r in sal4])]
    mat, layers = tables.area_share_matrix(rows)
    assert layers == [0] and mat.shape == (1, 4)
    for a in range(4):
        last = [max(client.get_metric_history(r.info.run_id, f"area_share.l0.a{a}"),
                    key=lambda m: m.step).value for r in sal4]
        assert mat[0, a] == pytest.approx(np.mean(last), abs=1e-12)
    assert mat.sum() == pytest.approx(1.0)


# ---- searches: best configuration per cell, depth/width, importances ---------------------

def test_search_cell_shows_the_best_configuration(store, search_report):
    _, runs = leaf_runs(store["uri"], "dash-search")
    configs = defaultdict(list)
    for r in runs:
        p = r.data.params
        if p["depth"] == "2":  # Table 2 is the two-layer architecture
            configs[(p["lr"], p["width"])].append(100 * r.data.metrics["final_val_acc"])
    best = max(configs.values(), key=np.mean)
    attrs, text = cells_of(read_tables(search_report.path)["table2"])[("digits", "SAL-4")]
    assert float(attrs["data-mean"]) == pytest.approx(np.mean(best), abs=1e-9)
    assert int(attrs["data-configs"]) == len(configs)
    assert "†" in text
    assert "lr=" in attrs["title"]


def test_search_report_draws_depth_width_and_search_views(search_report):
    names = {f.name for f in search_report.figures}
    assert {"accuracy_vs_depth.png", "accuracy_vs_width.png", "search_digits_sal.png"} <= names
    html = search_report.path.read_text()
    assert "FanovaImportanceEvaluator" in html
    assert "no dataset has both SAL-N and MoE-N" in html  # said, not silently dropped


def test_param_importances_from_an_in_memory_study(store):
    from dashboards import store as dstore, tables
    runs = dstore.load_runs(["dash-search"], store["uri"]).runs
    groups = tables.search_groups(runs)
    assert [(d, m) for d, m, _, _ in groups] == [("digits", "sal")]
    _, _, g, params = groups[0]
    assert set(params) == {"lr", "width", "depth"}
    imp = tables.param_importances(g, params)
    assert set(imp) == set(params) and sum(imp.values()) == pytest.approx(1.0)
    # what the sweep tagged as searched wins over the guess
    tagged = runs.assign(searched="lr,width")
    assert tables.search_groups(tagged)[0][3] == ["lr", "width"]
    # a grid over n_areas alone is not a search
    assert tables.search_groups(dstore.load_runs(["dash-digits"], store["uri"]).runs) == []


# ---- problems: said clearly, and what can be drawn still is ----------------------------

def test_runs_with_missing_metrics_are_named_and_counted(store, broken_report):
    notes = " | ".join(broken_report.notes)
    assert "'broken-diverged'" in notes and "stopped after epoch 1 of 2" in notes
    assert "'broken-crashed'" in notes and "stopped after epoch 0 of 2" in notes
    assert "'broken-nofinal'" in notes and "last logged epoch (2) is used" in notes
    html = broken_report.path.read_text()
    assert "Data problems" in html and "broken-diverged" in html

    client, runs = leaf_runs(store["uri"], "dash-broken")
    by_name = {r.data.tags["mlflow.runName"]: r for r in runs}
    nofinal = by_name["broken-nofinal"].info.run_id
    last = max(client.get_metric_history(nofinal, "val_acc"), key=lambda m: m.step).value
    accs = [100 * by_name["broken-completed"].data.metrics["final_val_acc"], 100 * last]
    attrs, text = cells_of(read_tables(broken_report.path)["table2"])[("digits", "SAL-4")]
    assert float(attrs["data-mean"]) == pytest.approx(np.mean(accs), abs=1e-9)
    assert (int(attrs["data-n"]), int(attrs["data-runs"])) == (2, 4)
    assert "(n=2/4)" in text
    assert broken_report.figures  # the curves and usage of the finished runs still render


def test_zero_runs_report_says_so_and_renders(store, tmp_path, caplog):
    from dashboards.report import build_report, generate
    with caplog.at_level("WARNING", logger="dashboards"):
        result = generate(["dash-empty"], tmp_path / "r", store["uri"])
    assert result.empty and result.n_runs == 0 and result.figures == []
    assert "no runs in experiment(s) dash-empty" in caplog.text
    html = result.path.read_text()
    assert 'id="empty"' in html and "No runs to report: no runs in experiment(s) dash-empty" in html
    assert "No finished runs to tabulate." in html
    # the plain entry point returns the page's path
    path = build_report(["dash-empty"], tmp_path / "r2", store["uri"])
    assert path == (tmp_path / "r2" / "report.html").resolve() and path.exists()


def test_missing_experiment_is_named_and_the_rest_still_reported(store, tmp_path):
    from dashboards.report import generate
    alone = generate(["no-such-exp"], tmp_path / "a", store["uri"])
    assert alone.empty
    assert any("experiment 'no-such-exp' not found" in n and "dash-digits" in n
               for n in alone.notes)
    assert "experiment &#x27;no-such-exp&#x27; not found" in alone.path.read_text()

    mixed = generate(["no-such-exp", "dash-digits"], tmp_path / "b", store["uri"], "table2",
                     log_to_parent=False)
    assert not mixed.empty and mixed.n_runs == 8 and mixed.logged_to == []
    assert ("digits", "SAL-4") in cells_of(read_tables(mixed.path)["table2"])
    assert any("no-such-exp" in n for n in mixed.notes)


def test_sweep_filter_without_matches(store, tmp_path):
    from dashboards.report import generate
    result = generate(["dash-digits"], tmp_path, store["uri"], sweep="no-such-sweep")
    assert result.empty and "sweep 'no-such-sweep'" in result.notes[-1]


# ---- the CLI ------------------------------------------------------------------------

def parser():
    import argparse
    from sal_ray.cli import report, ui
    p = argparse.ArgumentParser(prog="sal-ray")
    sub = p.add_subparsers(dest="command", required=True)
    report.register(sub)
    ui.register(sub)
    return p


def test_cli_report_writes_the_page_and_exit_codes(store, tmp_path, capsys):
    args = parser().parse_args(["report", "--experiment", "dash-digits", "--out",
                                str(tmp_path / "cli"), "--tracking-uri", store["uri"],
                                "--sweep", "table2", "--no-log"])
    assert args.func(args) == 0
    assert (tmp_path / "cli" / "report.html").exists()
    assert "report: " in capsys.readouterr().out
    args = parser().parse_args(["report", "--experiment", "dash-broken", "--out",
                                str(tmp_path / "b"), "--tracking-uri", store["uri"], "--strict",
                                "--no-log"])
    assert args.func(args) == 1
    assert "broken-diverged" in capsys.readouterr().err
    args = parser().parse_args(["report", "--experiment", "nope", "--out", str(tmp_path / "n"),
                                "--tracking-uri", store["uri"]])
    assert args.func(args) == 1
    assert "experiment 'nope' not found" in capsys.readouterr().err


def test_cli_ui_defaults_to_localhost_and_documents_exposure(tmp_path, monkeypatch, capsys):
    from sal_ray.cli import ui
    from sal_ray.tracking.store import resolve_uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    args = parser().parse_args(["ui"])
    assert (args.host, args.port, args.tracking_uri) == ("127.0.0.1", 5000, None)
    cmd = ui.mlflow_server_command("sqlite:////x/mlflow.db", "0.0.0.0", 5001, "a.org")
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--allowed-hosts") + 1] == "a.org"
    with pytest.raises(SystemExit):
        parser().parse_args(["ui", "--help"])
    help_text = capsys.readouterr().out
    assert "--allowed-hosts" in help_text and "--host 0.0.0.0" in help_text
    bad = parser().parse_args(["ui", "--tracking-uri", "http://127.0.0.1:5000"])
    assert bad.func(bad) == 2


def test_dashboards_never_train():
    """dashboards/ reads MLflow only: no torch, no trainer, no Ray. Of sal_ray it
    uses the store's one URI resolver and redactor, and the published numbers."""
    allowed = {"sal_ray.tracking.store", "sal_ray.paper"}
    for path in sorted((REPO / "dashboards").glob("*.py")):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module)
        assert not {m.split(".")[0] for m in modules} & {"torch", "ray"}, (path.name, modules)
        assert {m for m in modules if m.split(".")[0] == "sal_ray"} <= allowed, path.name
    code = ("import sys, dashboards.report, dashboards.store, dashboards.paper\n"
            "bad = [m for m in ('torch', 'ray', 'sal_ray.trainer') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=REPO)


# ---- the real sweep layer ------------------------------------------------------------

@pytest.mark.ray
def test_report_on_a_real_tune_sweep(tmp_path, monkeypatch, request):
    """The contract end to end: a tiny grid sweep through sal_ray.tune (Ray Tune +
    Optuna + MLflow), then the report, checked against the store independently."""
    pytest.importorskip("ray")
    try:
        import sal_ray.sweep  # noqa: F401
    except ImportError as e:
        pytest.skip(f"sal_ray.sweep not importable: {e}")
    import ray

    import sal_ray
    from dashboards.report import generate

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:  # the session's shared Ray (tests/conftest.py), when there is one
        request.getfixturevalue("ray_local")
        own_ray = False
    except pytest.FixtureLookupError:
        own_ray = True
    try:
        sal_ray.tune(datasets=["digits"], methods=["sal", "bp"], space={"n_areas": [1, 4]},
                     sampler="grid", fixed=dict(epochs=2, width=32, lr=0.05, batch_size=32),
                     seeds=2, experiment="tune-digits", name="grid", tracking_uri=uri,
                     num_cpus=2, verbose=0, log_model="none",
                     storage_path=str(tmp_path / "ray"))
    finally:
        if own_ray:
            ray.shutdown()
    result = generate(["tune-digits"], tmp_path / "report", uri, sweep="grid")
    expected = expected_cells(uri, "tune-digits", "grid")
    assert set(expected) == {("digits", c) for c in ("Baseline", "SAL-1", "SAL-4")}
    shown = cells_of(read_tables(result.path)["table2"])
    assert set(shown) == set(expected)
    for key, want in expected.items():
        attrs, text = shown[key]
        assert float(attrs["data-mean"]) == pytest.approx(want["mean"], abs=1e-9), key
        assert float(attrs["data-std"]) == pytest.approx(want["std"], abs=1e-9), key
        assert (int(attrs["data-n"]), int(attrs["data-configs"])) == (2, 1), key
    assert len(result.logged_to) == 1 and result.notes == []
    assert {"accuracy_vs_n_areas.png", "curves_digits.png", "area_usage.png"} <= \
        {f.name for f in result.figures}
