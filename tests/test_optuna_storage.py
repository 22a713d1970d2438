"""The sweep's Optuna studies are stored (Optuna's RDB storage, one SQLite file per
sweep beside Tune's storage): another process reads them while the sweep runs, and
a restored searcher continues them, telling Optuna what Tune never heard of."""

from __future__ import annotations

import pickle

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("ray")

from optuna.trial import TrialState  # noqa: E402

from sal_ray.sweep import storage  # noqa: E402
from sal_ray.sweep.plan import plan  # noqa: E402
from sal_ray.sweep.searcher import StudySearcher  # noqa: E402


def grid_plan():
    return plan(["digits"], ["sal", "bp"], {"lr": [0.01, 0.02, 0.04]}, sampler="grid",
                fixed={"epochs": 2}, data="skip", name="stored")


def test_the_studies_live_in_the_sweeps_sqlite_file(tmp_path):
    p = grid_plan()
    url = storage.optuna_url(str(tmp_path), p.name)
    assert url == f"sqlite:///{tmp_path}/.sweeps/stored.optuna.db"
    (tmp_path / ".sweeps").mkdir()
    s = StudySearcher(p, url)
    first = s.suggest("t1")
    s.on_trial_result("t1", {"mean_val_acc": 0.5, "training_iteration": 1})
    s.on_trial_complete("t1", {"mean_val_acc": 0.9, "trial_status": "completed"})
    s.suggest("t2")
    # what optuna-dashboard sees: read by another client of the file, not this searcher
    assert sorted(optuna.get_all_study_names(url)) == ["stored/digits/bp", "stored/digits/sal"]
    sal = optuna.load_study(study_name=f"stored/{first['dataset']}/{first['method']}",
                            storage=url)
    (done,) = [t for t in sal.trials if t.state == TrialState.COMPLETE]
    assert done.value == 0.9 and done.intermediate_values == {1: 0.5}
    assert done.user_attrs == {"tune_trial_id": "t1", "status": "completed"}
    # the rest of the grid waits in the study's queue
    assert [t.state for t in sal.trials] == [TrialState.COMPLETE] + [TrialState.WAITING] * 2


def test_a_restored_searcher_continues_the_stored_studies(tmp_path):
    p = grid_plan()
    url = storage.optuna_url(str(tmp_path), p.name)
    (tmp_path / ".sweeps").mkdir()
    s = StudySearcher(p, url)
    asked = [s.suggest(f"t{i}") for i in range(3)]
    s.on_trial_complete("t0", {"mean_val_acc": 0.8, "trial_status": "completed"})
    checkpoint = tmp_path / "searcher.pkl"
    s.save(str(checkpoint))                 # Tune's last checkpoint knows t0..t2
    lost = s.suggest("t3")                  # asked after it: Tune restarts without t3
    blob = pickle.dumps(s)
    assert b"RDBStorage" not in blob and b"optuna.study" not in blob  # no study in Tune's pickles

    again = pickle.loads(blob)              # Tuner.restore unpickles, then restores
    again.restore(str(checkpoint))
    assert set(again.known) == {"t0", "t1", "t2"} and again.told == {"t0": "completed"}
    again.on_trial_result("t1", {"mean_val_acc": 0.7, "training_iteration": 3})
    again.on_trial_complete("t1", {"mean_val_acc": 0.75, "trial_status": "completed"})
    resumed = [again.suggest(f"u{i}") for i in range(3)]
    assert again.suggest("u9") is StudySearcher.FINISHED
    # every grid point once among the trials Tune runs: the lost one is proposed again
    ran = [(c["method"], c["lr"]) for c in asked + resumed]
    assert sorted(ran) == sorted((m, lr) for m in ("sal", "bp") for lr in (0.01, 0.02, 0.04))
    assert (lost["method"], lost["lr"]) in ran[3:]
    study = optuna.load_study(study_name=f"stored/digits/{lost['method']}", storage=url)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.user_attrs for t in failed] == [{"tune_trial_id": "t3", "status": "lost"}]
    assert asked[1]["method"] == lost["method"]  # round-robin: t1 and t3 share a study
    t1 = next(t for t in study.trials if t.user_attrs.get("tune_trial_id") == "t1")
    assert t1.value == 0.75 and t1.intermediate_values == {3: 0.7}  # told after restoring


def test_resume_refuses_when_the_studies_file_is_gone(tmp_path):
    from sal_ray import ConfigError
    p = grid_plan()
    (tmp_path / ".sweeps").mkdir()
    s = StudySearcher(p, storage.optuna_url(str(tmp_path), p.name))
    s.suggest("t0")
    blob = pickle.dumps(s)
    storage.optuna_db(str(tmp_path), p.name).unlink()
    with pytest.raises(ConfigError, match="Optuna studies of sweep 'stored' are not at"):
        pickle.loads(blob)


def long_grid_plan():
    return plan(["digits"], ["sal"], {"lr": [0.01 * (i + 1) for i in range(7)]},
                sampler="grid", fixed={"epochs": 2}, data="skip", name="long")


def states(url: str) -> list[str]:
    study = optuna.load_study(study_name="long/digits/sal", storage=url)
    return [t.state.name for t in study.trials]


def test_a_long_grid_waits_a_few_points_at_a_time_and_asks_each_once_in_order(
        tmp_path, monkeypatch):
    """Every ask reads every waiting trial: the queue holds GRID_AHEAD points, not
    the whole grid, so a grid of N points does not cost O(N^2)."""
    from sal_ray.sweep import searcher
    monkeypatch.setattr(searcher, "GRID_AHEAD", 2)
    p = long_grid_plan()
    url = storage.optuna_url(str(tmp_path), p.name)
    (tmp_path / ".sweeps").mkdir()
    s = StudySearcher(p, url)
    assert states(url) == ["WAITING"] * 2
    asked = [s.suggest(f"t{i}")["lr"] for i in range(3)]
    assert states(url) == ["RUNNING"] * 3 + ["WAITING"] * 2  # one in, one out
    asked += [s.suggest(f"t{i}")["lr"] for i in range(3, 7)]
    assert s.suggest("t7") is StudySearcher.FINISHED
    assert asked == [0.01 * (i + 1) for i in range(7)]
    assert states(url) == ["RUNNING"] * 7


def test_a_resumed_long_grid_queues_each_point_it_has_not_yet_held_once(
        tmp_path, monkeypatch):
    """A resumed searcher works out which points are still to queue from the
    stored trials: the ones asked, waiting, lost (queued again) or from a sweep
    that queued its whole grid at once are not queued twice."""
    from sal_ray.sweep import searcher
    p = long_grid_plan()
    url = storage.optuna_url(str(tmp_path), p.name)
    (tmp_path / ".sweeps").mkdir()
    monkeypatch.setattr(searcher, "GRID_AHEAD", 2)
    s = StudySearcher(p, url)
    first = [s.suggest(f"t{i}")["lr"] for i in range(2)]
    s.on_trial_complete("t0", {"mean_val_acc": 0.8, "trial_status": "completed"})
    checkpoint = tmp_path / "searcher.pkl"
    s.save(str(checkpoint))                 # Tune's last checkpoint knows t0, t1
    lost = s.suggest("t2")["lr"]            # asked after it: lost on resume
    again = pickle.loads(pickle.dumps(s))
    again.restore(str(checkpoint))
    resumed = []
    while (c := again.suggest(f"u{len(resumed)}")) is not StudySearcher.FINISHED:
        resumed.append(c["lr"])
    grid = [0.01 * (i + 1) for i in range(7)]
    assert lost == grid[2] and lost in resumed  # the lost point is asked again
    assert sorted(first + resumed) == grid and len(resumed) == 5  # every point once
    study = optuna.load_study(study_name="long/digits/sal", storage=url)
    assert [t.user_attrs.get("status") for t in study.trials
            if t.state == TrialState.FAIL] == ["lost"]

    # a sweep from before the window: its whole grid waits in the queue already
    url2 = storage.optuna_url(str(tmp_path), "long2")
    p2 = plan(["digits"], ["sal"], {"lr": grid}, sampler="grid", fixed={"epochs": 2},
              data="skip", name="long2")
    monkeypatch.setattr(searcher, "GRID_AHEAD", 100)
    old = StudySearcher(p2, url2)
    before = [old.suggest(f"t{i}")["lr"] for i in range(2)]
    monkeypatch.setattr(searcher, "GRID_AHEAD", 2)
    back = pickle.loads(pickle.dumps(old))
    after = []
    while (c := back.suggest(f"u{len(after)}")) is not StudySearcher.FINISHED:
        after.append(c["lr"])
    assert before + after == grid
    assert len(optuna.load_study(study_name="long2/digits/sal", storage=url2).trials) == 7
