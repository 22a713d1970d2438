"""sal_ray: sweeps and scaling for SAL (Selective Adaptive Learning).

The core (config, data, layers, models, rules, train) needs only torch, numpy,
scikit-learn and torchvision. `sal_ray.tune` loads Ray, Optuna and MLflow on
first use, so `import sal_ray` works on a machine without them.
"""

from .config import Config, ConfigError, validate
from .train import Callback, RunResult, build, fit, train

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "validate", "Callback", "RunResult", "build", "fit",
           "train", "tune"]


def tune(*args, **kwargs):
    """Run a sweep with Ray Tune and Optuna, tracked in MLflow: see `sal_ray.sweep.tune`."""
    from .sweep import tune as _tune  # deferred: Ray, Optuna and MLflow load only here
    return _tune(*args, **kwargs)
