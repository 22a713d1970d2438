"""A resume restores what the sweep started with and refuses, by name, what it
cannot honour (sal_ray/sweep/record.py). No Ray here: the record is read and
checked before anything starts."""

from __future__ import annotations

import pathlib
import runpy

import pytest

import sal_ray
from sal_ray import ConfigError
from sal_ray.sweep import record, storage
from sal_ray.sweep.space import Float

SWEEPS = pathlib.Path(__file__).resolve().parents[1] / "sweeps"
FIRST = dict(datasets=["digits"], methods=["sal", "bp"], space={"lr": Float(1e-3, 1e-1, True)},
             fixed={"epochs": 3, "width": 16}, trials=4, seeds=2, scheduler="asha",
             time_budget_s=600.0, max_failures=2, max_concurrent=1,
             resources={"cpu": 1.0, "gpu": 0.0}, experiment="resumes", sampler="tpe",
             tracking_uri="http://alice" + ":pw@127.0.0.1:5999")  # split: the scan of
# tracked files (test_safe_defaults.py) looks for URIs with passwords


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A sweep 'r1' started with FIRST, interrupted (its Tune folder exists)."""
    monkeypatch.setattr("sal_ray.sweep.runtime.init_ray", lambda *a: pytest.fail("no Ray"))
    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "tuner.pkl").write_bytes(b"")
    record.save(str(runs), "r1", {**FIRST, "name": "r1", "verbose": 1})
    return runs


def test_a_resume_takes_every_option_left_out_from_the_record(stored):
    p = sal_ray.tune(name="r1", resume=True, storage_path=str(stored), dry_run=True, verbose=0)
    assert [s.key for s in p.studies] == ["digits/sal", "digits/bp"]
    assert p.seeds == 2 and p.experiment == "resumes" and p.total_trials == 8
    assert p.studies[0].space["lr"] == Float(1e-3, 1e-1, True)
    assert p.scheduler == {"name": "asha"} and p.studies[0].fixed["epochs"] == 3
    text = record.path(str(stored), "r1").read_text()
    assert "127.0.0.1:5999" in text and "alice" not in text  # the store, not its secret


def test_the_same_store_with_its_secret_is_the_same_store(stored):
    p = sal_ray.tune(name="r1", resume=True, storage_path=str(stored), dry_run=True, verbose=0,
                     tracking_uri="http://bob" + ":other@127.0.0.1:5999")
    assert p.name == "r1"


@pytest.mark.parametrize("option, value, why", [
    ("scheduler", "fifo", "Tune restores its scheduler"),
    ("time_budget_s", 60.0, "Tune restores its time budget"),
    ("max_failures", 5, "Tune restores its failure count"),
    ("max_concurrent", 2, "Tune restores its concurrency"),
    ("resources", {"cpu": 2.0, "gpu": 0.0}, "each trial's resources"),
    ("seeds", 3, "the studies must be the ones"),
    ("space", {"lr": [0.01]}, "the studies must be the ones"),
    ("tracking_uri", "sqlite:////elsewhere/mlflow.db", "parent run and trial runs are in that"),
])
def test_an_option_given_again_differently_is_refused_by_name(stored, option, value, why):
    with pytest.raises(ConfigError) as info:
        sal_ray.tune(name="r1", resume=True, storage_path=str(stored), dry_run=True,
                     verbose=0, **{option: value})
    assert info.value.option == option and why in str(info.value)
    assert "leave it out to resume with the stored value" in str(info.value)


def test_the_same_value_again_and_this_sessions_options_are_honoured(stored, capsys):
    p = sal_ray.tune(name="r1", resume=True, storage_path=str(stored), dry_run=True,
                     seeds=2, max_failures=2, verbose=1, checkpoint_every=3, log_model="none",
                     finish_wait_s=5.0)
    assert p.seeds == 2 and "sweep r1:" in capsys.readouterr().out


def test_a_sampler_object_must_be_passed_again(tmp_path):
    optuna = pytest.importorskip("optuna")
    runs = tmp_path / "runs"
    (runs / "r2").mkdir(parents=True)
    (runs / "r2" / "tuner.pkl").write_bytes(b"")
    record.save(str(runs), "r2", {**FIRST, "sampler": optuna.samplers.RandomSampler()})
    with pytest.raises(ConfigError) as info:
        sal_ray.tune(name="r2", resume=True, storage_path=str(runs), dry_run=True, verbose=0)
    assert info.value.option == "sampler" and "RandomSampler object" in str(info.value)
    p = sal_ray.tune(name="r2", resume=True, storage_path=str(runs), dry_run=True, verbose=0,
                     sampler=optuna.samplers.RandomSampler())
    assert p.seeds == 2


def script(name: str):
    return runpy.run_path(str(SWEEPS / f"{name}.py"), run_name="sweep_script")["main"]


def test_a_study_script_resumes_with_the_flags_it_started_with(tmp_path):
    runs = tmp_path / "runs"
    first = script("depth")(["--dry-run", "--quick", "--epochs", "2", "--trials", "1",
                             "--methods", "sal", "--verbose", "0"])
    assert first.total_trials == 1
    # the flags a real start of that command stores (a dry run stores nothing)
    args = sal_ray.sweep.scripts.study_args(
        sal_ray.sweep.scripts.script_parser("x", datasets=["cifar10"], seeds=5),
        ["--quick", "--epochs", "2", "--trials", "1", "--methods", "sal"])
    (runs / "depth-quick-1").mkdir(parents=True)
    (runs / "depth-quick-1" / "tuner.pkl").write_bytes(b"")
    options = {"datasets": ["digits"], "methods": ["sal"], "space": {"depth": [4, 16]},
               "fixed": {**runpy.run_path(str(SWEEPS / "depth.py"))["PROTOCOL"],
                         "width": 64, "epochs": 2}, "trials": 1, "seeds": 1,
               "sampler": "grid", "experiment": "sal-depth",
               "resources": {"cpu": 1.0, "gpu": 0.0}}
    record.save(str(runs), "depth-quick-1", options, sal_ray.sweep.scripts.script_flags(args))
    resumed = script("depth")(["--resume", "depth-quick-1", "--storage-path", str(runs),
                               "--dry-run", "--verbose", "0"])
    assert resumed.name == "depth-quick-1" and resumed.total_trials == 1
    assert resumed.studies[0].fixed["epochs"] == 2 and [s.method for s in resumed.studies] == ["sal"]
    with pytest.raises(ConfigError) as info:
        script("depth")(["--resume", "depth-quick-1", "--storage-path", str(runs), "--dry-run",
                         "--epochs", "7"])
    assert info.value.option == "epochs" and "--epochs 2; resuming with 7 is refused" in str(info.value)


def test_a_record_is_stored_only_where_the_sweep_lives(tmp_path):
    record.save("s3://bucket/runs", "x", FIRST)  # a URI storage: Tune's to keep
    assert record.load("s3://bucket/runs", "x") is None
    assert storage.claim("s3://bucket/runs", "x") is None
