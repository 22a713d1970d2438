"""Bad sweep input is refused before Ray starts, with one message naming the option;
the plan says what each (dataset, method) searches. No Ray here."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sal_ray
from sal_ray import ConfigError
from sal_ray import sweep as sw

BASE = {"epochs": 1, "width": 16}


@pytest.fixture(autouse=True)
def no_ray(monkeypatch, tmp_path):
    """Starting Ray here is a bug; so is writing an MLflow store in the cwd."""
    def refuse(*a, **k):
        raise AssertionError("Ray must not start for bad input")
    monkeypatch.setattr("sal_ray.sweep.runtime.init_ray", refuse)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    assert not (tmp_path / "mlflow.db").exists()


def refused(option: str, **kwargs) -> str:
    kwargs.setdefault("fixed", BASE)
    with pytest.raises(ConfigError) as info:
        sal_ray.tune(verbose=0, **kwargs)
    assert info.value.option == option, str(info.value)
    assert f"option '{option}'" in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("option, kwargs, words", [
    ("datasets", dict(datasets=["digitz"]), "unknown dataset 'digitz'"),
    ("datasets", dict(datasets=[]), "at least one"),
    ("methods", dict(methods=["sal", "sgd"]), "unknown method 'sgd'"),
    ("space", dict(space={}), "empty search space"),
    ("space", dict(space=[("lr", 1e-3)]), "must be a dict"),
    ("lrr", dict(space={"lrr": [1e-3, 1e-2]}), "did you mean lr"),
    ("lr", dict(space={"lr": sw.loguniform(0.0, 1.0)}), "log scale needs low > 0"),
    ("lr", dict(space={"lr": sw.loguniform(1e-1, 1e-3)}), "low < high"),
    ("lr", dict(space={"lr": []}), "empty choice"),
    ("lr", dict(space={"lr": {"low": 1e-3}}), "cannot read"),
    ("lr", dict(space={"lr": [1e-3, "fast"]}), "must be a float"),
    ("width", dict(space={"width": sw.uniform(8.0, 64.0)}, fixed={"epochs": 1}),
     "not a float option"),
    ("n_areas", dict(space={"n_areas": [0, 4]}), "n_areas"),
    ("d_f", dict(space={"d_f": [4, 16], "n_areas": 4}, methods=["sal"]), "10 classes"),
    ("lr", dict(space={"lr": [1e-3, 1e-2]}, fixed={"lr": 1e-3}), "both fixed and searched"),
    ("seed", dict(space={"seed": [0, 1]}), "use seeds="),
    ("method", dict(space={"method": ["sal"]}), "use methods="),
    ("dataset", dict(fixed={"dataset": "digits"}), "use datasets="),
    ("trials", dict(trials=0), "positive integer"),
    ("seeds", dict(seeds=0), "positive integer"),
    ("metric", dict(metric="accuracy"), "unknown metric 'accuracy'"),
    ("mode", dict(metric=["val_acc", "params_active"], mode="max"), "one mode per metric"),
    ("mode", dict(mode="maximize"), "'max' or 'min'"),
    ("sampler", dict(sampler="cmaes"), "unknown sampler"),
    ("lr", dict(sampler="grid", space={"lr": sw.loguniform(1e-3, 1e-1)}), "a grid needs a list"),
    ("scheduler", dict(scheduler="hyperband"), "unknown scheduler"),
    ("scheduler", dict(scheduler={"grace": 2}), "unknown ASHA setting"),
    ("resources", dict(resources={"cpu": -1}), "number >= 0"),
    ("log_model", dict(log_model="some"), "'best', 'all' or 'none'"),
    ("experiment", dict(experiment=""), "must be 1 to 200 of letters"),
    ("depth", dict(fixed={"depth": 1}), "depth"),
])
def test_bad_input_is_refused_naming_the_option(option, kwargs, words):
    assert words in refused(option, **kwargs)


def test_missing_data_is_refused_before_any_trial(monkeypatch, tmp_path):
    monkeypatch.setenv("SAL_RAY_DATA", str(tmp_path / "empty"))
    msg = refused("datasets", datasets=["digits", "semeion"])
    assert "semeion" in msg and "not on disk" in msg


def test_unreachable_tracking_store_is_refused_before_ray(tmp_path):
    msg = refused("tracking_uri", tracking_uri="http://127.0.0.1:9")  # nothing listens on 9
    assert "cannot reach the MLflow store http://127.0.0.1:9" in msg
    missing = tmp_path / "no" / "such" / "folder" / "mlflow.db"
    assert "does not exist" in refused("tracking_uri", tracking_uri=f"sqlite:///{missing}")


def test_credentials_never_appear_in_messages():
    msg = refused("tracking_uri", tracking_uri="http://alice:s3cret@127.0.0.1:9")
    # the server is named; its credential went to the environment, not the message
    assert "s3cret" not in msg and "alice" not in msg and "store http://127.0.0.1:9" in msg


def test_plan_drops_what_a_method_cannot_use():
    p = sal_ray.tune(["digits"], ["sal", "bp", "moe"],
                     {"lr": sw.loguniform(1e-3, 1e-1), "n_areas": [1, 4], "lambda_local": [0.5, 1.0],
                      "moe_balance": [0.0, 0.01]},
                     fixed={**BASE}, trials=4, dry_run=True, verbose=0)
    spaces = {x.method: set(x.space) for x in p.studies}
    assert spaces == {"sal": {"lr", "n_areas", "lambda_local"}, "bp": {"lr"},
                      "moe": {"lr", "n_areas", "moe_balance"}}
    assert {x.budget for x in p.studies} == {4}  # identical budgets
    bp = next(x for x in p.studies if x.method == "bp")
    assert bp.fixed["n_areas"] == 1 and any("n_areas" in n for n in bp.notes)


def test_bp_with_areas_fixed_elsewhere_runs_with_one_area():
    p = sal_ray.tune(["digits"], ["sal", "bp"], {"lr": [1e-3, 1e-2]}, fixed={**BASE, "n_areas": 4},
                     sampler="grid", dry_run=True, verbose=0)
    fixed = {x.method: x.fixed["n_areas"] for x in p.studies}
    assert fixed == {"sal": 4, "bp": 1}
    assert [x.budget for x in p.studies] == [2, 2]


def test_default_space_and_what_fixed_takes_out_of_it():
    p = sw.plan(["digits"], ["sal"], fixed={"width": 32})
    (pair,) = p.studies
    assert set(pair.space) == {"n_areas", "lr", "depth"} and pair.fixed["width"] == 32
    assert pair.budget == sw.DEFAULT_TRIALS
    assert pair.space["lr"].log and pair.space["lr"].low < 1e-4 < pair.space["lr"].high
    assert sw.DEFAULT_SPACE["depth"].values == (2, 4, 16, 64, 128)
    assert sw.DEFAULT_SPACE["n_areas"].values == (1, 2, 4, 8, 16)


def test_grid_is_the_product_of_the_lists_and_trials_caps_it():
    p = sw.plan(["digits"], ["sal", "moe"], {"n_areas": [1, 2, 4], "lr": [1e-3, 1e-2]},
                fixed=BASE, sampler="grid")
    assert [len(x.grid) for x in p.studies] == [6, 6]
    assert {tuple(sorted(g.items())) for g in p.studies[0].grid} == {
        (("lr", lr), ("n_areas", n)) for n in (1, 2, 4) for lr in (1e-3, 1e-2)}
    capped = sw.plan(["digits"], ["sal"], {"n_areas": [1, 2, 4]}, fixed=BASE, sampler="grid",
                     trials=2)
    assert capped.studies[0].budget == 2


def test_gpu_share_sets_device_cuda():
    p = sw.plan(["digits"], ["sal"], {"lr": [1e-3, 1e-2]}, fixed=BASE, sampler="grid",
                resources={"cpu": 2, "gpu": 0.25})
    assert p.studies[0].fixed["device"] == "cuda" and p.resources == {"cpu": 2, "gpu": 0.25}


def test_run_names_read_well():
    from sal_ray.tracking.sink import default_run_name as default_name
    flat = {**sal_ray.Config().to_flat(), "n_areas": 16, "lr": 1e-3, "seed": 0}
    assert default_name(flat) == "sal n16 lr0.001 s0 digits"
    assert default_name({**flat, "depth": 4, "width": 256}, ["lr", "depth", "width"], 7) == \
        "sal #7 lr0.001 d4 w256 s0 digits"
    # two learning rates one significant digit would merge stay apart (issue 14)
    assert default_name({**flat, "lr": 1.2e-3}, ["lr"]) != \
        default_name({**flat, "lr": 1.4e-3}, ["lr"])
    assert default_name({**flat, "lr": 1.2e-3}, ["lr"], 1) == "sal #1 lr0.0012 s0 digits"
    assert default_name({**flat, "feedback_scale": 0.5}, ["feedback_scale"], 2) == \
        "sal #2 feedback_scale=0.5 s0 digits"


def test_importing_the_sweep_module_loads_no_engine():
    code = ("import sys, sal_ray.sweep, sal_ray.tracking.store\n"
            "bad = [m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("kwargs, option", [
    ({"time_budget_s": -1}, "time_budget_s"), ({"flush_every_s": "x"}, "flush_every_s"),
    ({"finish_wait_s": -1}, "finish_wait_s"), ({"num_cpus": 0}, "num_cpus"),
    ({"max_failures": -1}, "max_failures"), ({"checkpoint_every": 1.5}, "checkpoint_every"),
    ({"checkpoint_every_s": -1}, "checkpoint_every_s"),
    ({"checkpoint_every_s": 1e9}, "checkpoint_every_s"),
    ({"checkpoint_every_s": float("nan")}, "checkpoint_every_s"),
    ({"resume": "yes"}, "resume"), ({"resume": True}, "name"),
    ({"resume": True, "name": "nosuch"}, "resume"),
    ({"resources": {"workers": 1.5}}, "resources"),
    # Ray Train places whole GPUs per worker: a share would ask for 1 GPU at run time
    ({"resources": {"workers": 2, "gpu": 0.5}}, "resources"),
    ({"resources": {"workers": 2}, "layout": "pipeline"}, "layout"),
])
def test_reliability_options_are_checked_before_anything_starts(kwargs, option, tmp_path):
    import sal_ray
    with pytest.raises(sal_ray.ConfigError) as info:
        sal_ray.tune("digits", ["sal"], {"lr": [0.1]}, sampler="grid", dry_run=True, verbose=0,
                     storage_path=tmp_path, **kwargs)
    assert info.value.option == option
    assert list(tmp_path.iterdir()) == []
