"""`fit_distributed` gives back the SIGINT handler it found: Ray Train's `fit`
installs its own and never restores the previous one."""

import signal

import pytest

from sal_ray import Config

pytestmark = pytest.mark.ray

CFG = Config().replace(method="sal", n_areas=4, width=16, epochs=1, dtype="float64", lr=0.05,
                       batch_size=64)


def test_fit_distributed_restores_the_sigint_handler(ray_local, tmp_path):
    from sal_ray.distributed import fit_distributed

    def sentinel(signum, frame):
        pass

    original = signal.signal(signal.SIGINT, sentinel)
    try:
        result = fit_distributed(CFG, num_workers=1, storage_path=str(tmp_path / "ray"),
                                 name="sigint-test", verbose=False)
        assert result.status == "completed", result.message
        assert signal.getsignal(signal.SIGINT) is sentinel
    finally:
        signal.signal(signal.SIGINT, original)
