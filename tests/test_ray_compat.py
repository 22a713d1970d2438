"""`sal_ray/sweep/ray_compat.py` is the only place the sweep touches Ray internals:
these tests fail as soon as an installed Ray no longer has what it relies on (the
resume test in test_faults.py exercises the restored-Tuner paths for real)."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
from ray import tune as rt  # noqa: E402

from sal_ray.sweep import ray_compat  # noqa: E402


def test_the_cluster_probe_reads_the_address_file_ray_start_writes(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where Ray looks for its temp dir
    assert ray_compat.cluster_on_this_machine() is False
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379\n")
    assert ray_compat.cluster_on_this_machine() is True


class Marker(rt.Callback):
    pass


class NoSearch(rt.search.Searcher):
    def suggest(self, trial_id):
        return None


def test_a_tuner_holds_what_replace_callbacks_and_restored_search_alg_reach(tmp_path):
    searcher = NoSearch()
    tuner = rt.Tuner(lambda config: None,
                     tune_config=rt.TuneConfig(search_alg=searcher, num_samples=1),
                     run_config=rt.RunConfig(name="compat", storage_path=str(tmp_path)))
    mine = Marker()
    ray_compat.replace_callbacks(tuner, [mine])
    assert tuner._local_tuner.get_run_config().callbacks == [mine]
    assert ray_compat.restored_search_alg(tuner) is searcher
