"""A real hyperparameter search: SAL, BP and MoE, each tuned by its own Optuna TPE
study with the same budget on each dataset, ASHA stopping poor trials early.

Searched: learning rate (log-uniform 1e-5 to 0.3), n_areas = n_experts in
{1, 2, 4, 8, 16} (BP has one area), depth in {2, 4, 16}, width in
{64, 128, 256, 512}, batch size in {16, 64}; 25 epochs, 40 trials per method and
dataset, 2 seeds per configuration (Tune optimises their mean).

    python sweeps/search.py --quick             # Digits, 16 trials per method, 2 seeds,
                                                # 10 epochs: a few minutes on 2 cores
    python sweeps/search.py --datasets digits semeion usps --trials 40
    ray submit ray_cluster.yaml sweeps/search.py --datasets cifar10 svhn --trials 100

Prints, per (dataset, method), the best configuration with mean ± std over seeds
of its final validation accuracy and losses, then how to open the MLflow UI
(compare the best runs there: docs/sweeps.md).
"""

import sys

from sal_ray.config import DATASETS
from sal_ray.sweep import loguniform, run_main, run_script, script_parser, study_args

SPACE = {"lr": loguniform(1e-5, 0.3), "n_areas": [1, 2, 4, 8, 16], "depth": [2, 4, 16],
         "width": [64, 128, 256, 512], "batch_size": [16, 64]}
QUICK_SPACE = {"lr": loguniform(1e-4, 0.3), "n_areas": [1, 4, 16], "depth": [2, 3],
               "width": [64, 128, 256], "batch_size": [16, 64]}


def main(argv=None):
    args = study_args(script_parser(__doc__, datasets=DATASETS, seeds=2), argv)
    return run_script(args, study="search", methods=["sal", "bp", "moe"], space=SPACE,
                      fixed={"epochs": 25}, sampler="tpe", trials=40,
                      scheduler={"grace_period": 12, "reduction_factor": 3},
                      quick={"seeds": 2, "trials": 16, "fixed": {"epochs": 10},
                             "space": QUICK_SPACE,
                             "scheduler": {"grace_period": 5, "reduction_factor": 2}},
                      gpus=0.25)


if __name__ == "__main__":
    sys.exit(run_main(main))
