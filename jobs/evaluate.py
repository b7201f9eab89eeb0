"""Evaluation job entry point.

``ray job submit --working-dir . -- python jobs/evaluate.py --config configs/demo.yaml [key=value …]``

One Ray task per (tracker, sequence) of ``evaluation``; result files under ``evaluation.results_dir``, OPE tables,
success / precision plots and one MLflow run. Sequences with complete results are skipped on a rerun.
``evaluation.root`` and ``evaluation.results_dir`` may be ``s3://`` prefixes: then no node needs a shared disk (each
task reads its frames from S3 and writes its result files there; tables and plots are uploaded by the driver).
Also runs directly (``python jobs/evaluate.py …``): it joins the cluster ``RAY_ADDRESS`` names, else starts a local one.
"""

import sys

from cmd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
