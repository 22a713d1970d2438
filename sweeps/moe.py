"""SAL against a mixture of experts (paper Figs. 4-5): the Convergence net with
n_areas = n_experts in {1, 2, 4, 8, 16} on the first layer; SAL trained by its
local rule, MoE (top-1 gate, gate value scales the expert) end to end by
backpropagation. Same data, learning rate 1e-4, batch 16, 25 epochs, 5 seeds.

    python sweeps/moe.py                        # ten datasets (those on disk)
    python sweeps/moe.py --datasets mnist usps
    python sweeps/moe.py --quick                # Digits, n 1/4/16, 2 seeds, 10 epochs

Prints the comparison table and accuracy per (method, n_areas), then how to open
the MLflow UI.
"""

import sys

from sal_ray.config import DATASETS
from sal_ray.sweep import run_main, run_script, script_parser, study_args

PROTOCOL = dict(arch="mlp", depth=2, width=256, routed="first", lr=1e-4, batch_size=16,
                epochs=25)


def main(argv=None):
    args = study_args(script_parser(__doc__, datasets=DATASETS, seeds=5), argv)
    return run_script(args, study="moe", methods=["sal", "moe"],
                      space={"n_areas": [1, 2, 4, 8, 16]}, fixed=PROTOCOL, sampler="grid",
                      quick={"seeds": 2, "fixed": {"epochs": 10},
                             "space": {"n_areas": [1, 4, 16]}},
                      by=("method", "n_areas"))


if __name__ == "__main__":
    sys.exit(run_main(main))
