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


def test_the_autoscaler_s_node_types_come_from_what_ray_offers(monkeypatch, tmp_path, ray_local):
    from ray._private.state import state
    assert callable(state.get_cluster_config)  # what ray_compat and Ray Train read
    monkeypatch.setenv("HOME", str(tmp_path))
    # a local Ray: no autoscaler reports a config, and no launcher left one here
    assert ray_compat.autoscaler_node_types() is None
    (tmp_path / "ray_bootstrap_config.yaml").write_text(
        "max_workers: 2\nhead_node_type: h\navailable_node_types:\n"
        "  h: {resources: {CPU: 0}}\n  w: {resources: {CPU: 4, GPU: 1}, max_workers: 5}\n")
    assert ray_compat.autoscaler_node_types() == [
        {"name": "h", "resources": {"CPU": 0}, "max_count": 1, "head": True},
        {"name": "w", "resources": {"CPU": 4, "GPU": 1}, "max_count": 2, "head": False}]
