"""Table 1 job: ``ray job submit --working-dir . -- python jobs/table1.py --config FILE [--seeds N] [key=value …]``.

Trains the paper's Table 1 rows in dependency order (B1, B2 -> B3; C1; D1-D5 from B3 + C1), evaluates every row and
seed on the TIR benchmark of the config, prints and logs Table 1 (mean ± std over seeds) and registers the best row.
A rerun skips the rows that already finished.
"""

import sys

from cmd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["table1", *sys.argv[1:]]))
