"""Width study (paper Fig. 3): the Depth study's residual net at depth 64 with
width in {1024, 2048, 4096}; SAL with 4 areas on the input and hidden layers
against BP. At width 4096 SAL holds about 1B active and over 4B total parameters:
that needs an 80 GB GPU per trial (see ray_cluster.yaml for the instance type).

    ray submit ray_cluster.yaml sweeps/width.py
    python sweeps/width.py --datasets semeion --gpus-per-trial 1
    # 24 GB cards: SAL's layers over 4 GPUs per trial, BP data parallel on 4
    ray submit ray_cluster.yaml sweeps/width.py --workers-per-trial 4 --gpus-per-trial 1 \
        --cpus-per-trial 4 --layout layer
    python sweeps/width.py --quick              # Digits, depth 4, width 64/128/256, 3 epochs

Prints the comparison table and accuracy per (method, width), then how to open
the MLflow UI.
"""

import sys

from sal_ray.sweep import run_main, run_script, script_parser, study_args

PROTOCOL = dict(arch="residual", routed="hidden", n_areas=4, depth=64, lr=1e-4,
                batch_size=16, epochs=25)


def main(argv=None):
    parser = script_parser(__doc__, datasets=["cifar10", "fer2013", "semeion", "stl10"], seeds=5)
    args = study_args(parser, argv)
    return run_script(args, study="width", methods=["sal", "bp"],
                      space={"width": [1024, 2048, 4096]}, fixed=PROTOCOL, sampler="grid",
                      quick={"seeds": 1, "fixed": {"depth": 4, "epochs": 3},
                             "space": {"width": [64, 128, 256]}},
                      gpus=1.0, cpus=2.0, by=("method", "width"))


if __name__ == "__main__":
    sys.exit(run_main(main))
