#!/usr/bin/env bash
# Stop the local Ray cluster started by cluster/local/start-head.sh (all Ray processes of this user on this machine).
#
#   cluster/local/stop.sh            # RAY_BIN as in start-head.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${RAY_BIN:-}" ]]; then
    if [[ -x "$repo_root/.venv/bin/ray" ]]; then RAY_BIN="$repo_root/.venv/bin/ray"; else RAY_BIN="ray"; fi
fi

"$RAY_BIN" stop
echo "Ray stopped. The token in ~/.ray/auth_token is kept for the next start."
