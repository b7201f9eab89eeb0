#!/usr/bin/env bash
# Start a multi-node Ray cluster on this machine: a head with no workload, data nodes (CPUs only, label
# cmd-ray.role=data) and train nodes (one `train_slot` each, standing in for a GPU; label cmd-ray.role=train),
# each its own raylet, with token authentication on and, optionally, an MLflow server every node reaches over HTTP.
#
#   cluster/local/start-multinode.sh                                   # 2 data nodes, 2 train nodes
#   cluster/local/start-multinode.sh --data-nodes 2 --train-nodes 3 --mlflow-artifacts /tmp/mlartifacts
#
# It stays in the foreground and prints the `ray job submit` command with the placement overrides; Ctrl-C stops
# every node. Arguments go to `python -m cmd_ray.local_cluster` (--help lists them). PYTHON defaults to .venv/bin/python.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo_root/.venv/bin/python" ]]; then PYTHON="$repo_root/.venv/bin/python"; else PYTHON="python3"; fi
fi
cd "$repo_root"
exec "$PYTHON" -m cmd_ray.local_cluster "$@"
