"""Shared fixtures. Ray starts at most once per test session, on first use by a
test marked `ray` (about 7 s on 2 cores), and only then: the other tests never
import it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole session: 2 CPUs, no dashboard. A Ray a test
    already connected is used as is; one started here is shut down at the end."""
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        # address="local": never join a cluster that $RAY_ADDRESS or `ray start` names
        # configure_logging=False: a handler Ray would bind to the stderr of the test
        # that happens to start it is closed once that test's capture ends
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 logging_level="WARNING", configure_logging=False)
        started = True
    yield ray
    if started and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(ray_session):
    """The session's Ray, restarted if a test shut it down."""
    if not ray_session.is_initialized():
        ray_session.init(address="local", num_cpus=2, include_dashboard=False,
                         logging_level="WARNING", configure_logging=False)
    return ray_session


@pytest.fixture
def mlflow_uri(tmp_path):
    """A fresh SQLite MLflow store in the test's temporary folder (absolute URI)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
