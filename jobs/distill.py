"""Distillation job entry point.

``ray job submit --working-dir . -- python jobs/distill.py --config configs/demo.yaml [key=value …]``

Also runs directly (``python jobs/distill.py …``), starting a local Ray cluster when ``RAY_ADDRESS`` is unset.
"""

import sys

from cmd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
