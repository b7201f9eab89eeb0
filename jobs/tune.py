"""Sweep job: ``ray job submit --working-dir . -- python jobs/tune.py --config configs/demo.yaml [key=value …]``.

Ray Tune over lr_bbe, lr_tcl and lambda with ASHA; every trial is a Ray Train run and a nested MLflow run.
"""

import sys

from cmd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
