"""The study scripts in sweeps/: each declares its paper protocol (checked on the
plan, without Ray), takes --datasets/--trials/--quick, and one runs for real."""

from __future__ import annotations

import pathlib
import runpy
import signal

import pytest

from sal_ray.sweep import Plan, SweepResults

SWEEPS = pathlib.Path(__file__).resolve().parents[1] / "sweeps"
PAPER = dict(lr=1e-4, batch_size=16, epochs=25)


def script(name: str):
    return runpy.run_path(str(SWEEPS / f"{name}.py"), run_name="sweep_script")["main"]


def plan(name: str, *argv: str) -> Plan:
    p = script(name)(["--dry-run", "--verbose", "0", *argv])
    assert isinstance(p, Plan)
    return p


def fixed(p: Plan, method: str) -> dict:
    return next(x.fixed for x in p.studies if x.method == method)


def grid(p: Plan, method: str) -> list:
    return next(x.grid for x in p.studies if x.method == method)


@pytest.mark.parametrize("name", ["convergence", "depth", "width", "moe", "search"])
def test_every_script_has_help_and_a_quick_plan(name, capsys):
    with pytest.raises(SystemExit) as info:
        script(name)(["--help"])
    assert info.value.code == 0
    assert "--quick" in capsys.readouterr().out
    p = plan(name, "--quick")
    assert {x.dataset for x in p.studies} == {"digits"} and p.total_trials <= 60


def test_convergence_is_table_2():
    p = plan("convergence", "--datasets", "digits")
    assert [x.method for x in p.studies] == ["sal", "bp"] and p.seeds == 5
    sal = fixed(p, "sal")
    assert {k: sal[k] for k in PAPER} == PAPER
    assert (sal["arch"], sal["depth"], sal["width"], sal["routed"]) == ("mlp", 2, 256, "first")
    assert grid(p, "sal") == [{"n_areas": n} for n in (1, 2, 4, 8, 16)]
    assert grid(p, "bp") == [{}] and fixed(p, "bp")["n_areas"] == 1


def test_depth_and_width_protocols():
    d = plan("depth", "--datasets", "digits")
    sal = fixed(d, "sal")
    assert (sal["arch"], sal["routed"], sal["n_areas"], sal["width"]) == \
        ("residual", "hidden", 4, 256)
    assert {k: sal[k] for k in PAPER} == PAPER
    assert grid(d, "sal") == [{"depth": n} for n in (4, 16, 64, 128)]
    w = plan("width", "--datasets", "digits")
    assert fixed(w, "sal")["depth"] == 64 and fixed(w, "sal")["arch"] == "residual"
    assert grid(w, "bp") == [{"width": n} for n in (1024, 2048, 4096)]


def test_depth_and_width_default_to_the_papers_four_datasets():
    for name in ("depth", "width"):
        src = (SWEEPS / f"{name}.py").read_text()
        assert 'datasets=["cifar10", "fer2013", "semeion", "stl10"]' in src


def test_moe_pairs_sal_with_experts():
    p = plan("moe", "--datasets", "digits")
    assert [x.method for x in p.studies] == ["sal", "moe"]
    assert grid(p, "moe") == [{"n_areas": n} for n in (1, 2, 4, 8, 16)]


def test_search_gives_each_method_the_same_budget():
    p = plan("search", "--datasets", "digits", "--trials", "7")
    assert {x.budget for x in p.studies} == {7} and len(p.studies) == 3
    assert p.sampler == "tpe" and p.scheduler["name"] == "asha"
    assert "n_areas" not in next(x.space for x in p.studies if x.method == "bp")
    assert set(next(x.space for x in p.studies if x.method == "sal")) == \
        {"lr", "n_areas", "depth", "width", "batch_size"}


def test_command_line_overrides():
    p = plan("convergence", "--datasets", "digits", "--seeds", "2", "--epochs", "3",
             "--trials", "2", "--methods", "sal")
    assert p.seeds == 2 and fixed(p, "sal")["epochs"] == 3
    assert [x.method for x in p.studies] == ["sal"] and p.studies[0].budget == 2


@pytest.mark.ray
def test_a_script_runs_and_prints_its_tables(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Tune's folder (runs/ray) goes to the cwd
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sigint = signal.getsignal(signal.SIGINT)
    res = script("convergence")(["--quick", "--seeds", "1", "--epochs", "1", "--tracking-uri",
                                 uri, "--name", "conv-test"])
    assert isinstance(res, SweepResults) and len(res.trials) == 6
    assert signal.getsignal(signal.SIGINT) is sigint  # Tune's handler does not outlive the sweep
    out = capsys.readouterr().out
    assert "best configuration" in out and "final val_acc %" in out
    for label in ("sal n_areas=1", "sal n_areas=16", "bp n_areas=1"):  # the swept option named
        assert label in out
    assert "± —" in out and "± 0.00" not in out  # one seed: no std
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1" in out
    assert "tags.sweep = 'conv-test'" in out
    assert "viewStateShareKey=" in out  # the UI link, then the filter for the run list
    assert out.rstrip().endswith("(or filter runs:  tags.sweep = 'conv-test')")


def test_resume_finds_the_newest_sweep_of_the_study_or_says_there_is_none(tmp_path):
    from sal_ray.config import ConfigError
    store = tmp_path / "ray"
    with pytest.raises(ConfigError) as info:
        plan("moe", "--quick", "--resume", "--storage-path", str(store))
    assert info.value.option == "resume" and "moe-quick-" in str(info.value)
    for i, name in enumerate(["moe-quick-20260101-000000", "moe-quick-20260102-000000",
                              "depth-quick-20260103-000000"]):
        (store / name).mkdir(parents=True)
        (store / name / "tuner.pkl").write_bytes(b"")
        import os
        os.utime(store / name, (1000 + i, 1000 + i))
    assert plan("moe", "--quick", "--resume", "--storage-path", str(store)).name == \
        "moe-quick-20260102-000000"
    assert plan("moe", "--quick", "--resume", "moe-quick-20260101-000000",
                "--storage-path", str(store)).name == "moe-quick-20260101-000000"
    with pytest.raises(ConfigError) as info:  # a new sweep may not take an existing name
        plan("moe", "--quick", "--name", "moe-quick-20260101-000000",
             "--storage-path", str(store))
    assert info.value.option == "name" and "resume" in str(info.value)


def test_scripts_take_workers_and_a_layout_for_sal():
    from sal_ray.config import ConfigError
    from sal_ray.sweep.checks import layouts
    p = plan("width", "--quick", "--workers-per-trial", "2", "--layout", "layer")
    assert p.resources["workers"] == 2
    assert layouts(p.studies, p.workers, {"sal": "layer"}) == {"sal": "layer", "bp": "data"}
    with pytest.raises(ConfigError) as info:  # bp alone cannot go layer-parallel
        plan("width", "--quick", "--methods", "bp", "--workers-per-trial", "2",
             "--layout", "layer")
    assert info.value.option == "layout"
    with pytest.raises(ConfigError) as info:
        plan("width", "--quick", "--workers-per-trial", "0")
    assert info.value.option == "workers_per_trial"
