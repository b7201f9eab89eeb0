"""Teacher pretraining job entry point.

``ray job submit --working-dir . -- python jobs/pretrain.py --config configs/demo.yaml [key=value …]``

Also runs directly (``python jobs/pretrain.py …``): it joins the cluster that ``RAY_ADDRESS`` (or a running
``ray start`` on this machine) names, else starts a local one.
"""

import sys

from cmd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
