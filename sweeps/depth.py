"""Depth study (paper Fig. 2): how SAL and BP train as the net deepens.

Residual net: first and last layers linear, tanh hidden layers with skip
connections, width 256, depth in {4, 16, 64, 128}; SAL with 4 areas on the input
and every hidden layer (routed "hidden"); lr 1e-4, batch 16, 25 epochs, 5 seeds;
CIFAR-10, FER2013, Semeion and STL-10 by default. Meant for GPUs:

    ray up ray_cluster.yaml && ray submit ray_cluster.yaml sweeps/depth.py
    python sweeps/depth.py --datasets semeion --gpus-per-trial 0.25   # one GPU box
    python sweeps/depth.py --quick              # Digits, depth 4/16, width 64, 3 epochs

On a cluster each trial takes a quarter of a GPU (--gpus-per-trial) and 2 CPUs.
Prints the comparison table and accuracy per (method, depth), then how to open
the MLflow UI.
"""

import sys

from sal_ray.sweep import run_main, run_script, script_parser, study_args

PROTOCOL = dict(arch="residual", routed="hidden", n_areas=4, width=256, lr=1e-4,
                batch_size=16, epochs=25)


def main(argv=None):
    parser = script_parser(__doc__, datasets=["cifar10", "fer2013", "semeion", "stl10"], seeds=5)
    args = study_args(parser, argv)
    return run_script(args, study="depth", methods=["sal", "bp"],
                      space={"depth": [4, 16, 64, 128]}, fixed=PROTOCOL, sampler="grid",
                      quick={"seeds": 1, "fixed": {"width": 64, "epochs": 3},
                             "space": {"depth": [4, 16]}},
                      gpus=0.25, by=("method", "depth"))


if __name__ == "__main__":
    sys.exit(run_main(main))
