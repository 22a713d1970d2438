"""Convergence study (paper Table 2): fixed hyperparameters, n_areas x seeds x datasets.

Two-layer ReLU net d_in -> 256 -> C (Kaiming init), SAL routed on the first layer,
plain SGD at lr 1e-4, batch 16, 25 epochs, 5 seeds; SAL with n_areas 1, 2, 4, 8, 16
against the BP baseline, on all ten datasets (those not on disk are refused up
front: `sal-ray data list`).

    python sweeps/convergence.py                         # the protocol, ten datasets
    python sweeps/convergence.py --datasets digits usps  # some of them
    python sweeps/convergence.py --quick                 # Digits, 2 seeds: about a minute

Prints the comparison table and Table 2's layout (mean ± std of the final
validation accuracy over seeds), then how to open the MLflow UI.
"""

import sys

from sal_ray.config import DATASETS
from sal_ray.sweep import run_main, run_script, script_parser, study_args

PROTOCOL = dict(arch="mlp", depth=2, width=256, routed="first", lr=1e-4, batch_size=16,
                epochs=25)


def main(argv=None):
    args = study_args(script_parser(__doc__, datasets=DATASETS, seeds=5), argv)
    return run_script(args, study="convergence", methods=["sal", "bp"],
                      space={"n_areas": [1, 2, 4, 8, 16]}, fixed=PROTOCOL, sampler="grid",
                      quick={"seeds": 2}, by=("method", "n_areas"))


if __name__ == "__main__":
    sys.exit(run_main(main))
