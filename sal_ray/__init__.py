"""sal_ray: sweeps and scaling for SAL (Selective Adaptive Learning).

The core (config, data, layers, models, rules, trainer) needs only torch, numpy,
scikit-learn and torchvision; `sal_ray.tune` loads Ray, Optuna and MLflow. Both
load on first use: `import sal_ray` itself costs nothing, so the CLI's messages
and `dashboards/` use `sal_ray.tracking.store` without torch.

    result = sal_ray.train(method="sal", n_areas=16, epochs=25)
    res = sal_ray.tune(datasets=["digits"], methods=["sal", "bp"], trials=10)
"""

from .config import Config, ConfigError, validate

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "validate", "Callback", "RunResult", "build", "fit",
           "train", "tune"]
TRAINER = ("Callback", "RunResult", "build", "fit", "train")


def __getattr__(name):
    if name in TRAINER:
        from . import trainer  # torch loads here, on first use of the trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'sal_ray' has no attribute {name!r}")


def tune(*args, **kwargs):
    """Run a sweep with Ray Tune and Optuna, tracked in MLflow: see `sal_ray.sweep.tune`."""
    from .sweep import tune as _tune  # the sweep's engines load behind this, on first use
    return _tune(*args, **kwargs)
