#!/usr/bin/env bash
# Start a single-machine Ray cluster (head node) for `ray job submit`, with token authentication ON.
#
#   cluster/local/start-head.sh                  # all cores; NUM_CPUS=2 / NUM_GPUS=1 to limit
#   cluster/local/start-head.sh --temp-dir /tmp/my-ray   # extra arguments go to `ray start`
#   cluster/local/stop.sh                        # stop it again
#
# Environment knobs: NUM_CPUS (default: all cores), NUM_GPUS (default: autodetect), RAY_PORT (6379),
# DASHBOARD_PORT (8265), RAY_BIN (default: .venv/bin/ray if present, else ray on PATH).
# The dashboard/job API listens on 127.0.0.1 only. Ray keeps the token in ~/.ray/auth_token (created on first
# start); clients on this machine read it from there, others need it as RAY_AUTH_TOKEN.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${RAY_BIN:-}" ]]; then
    if [[ -x "$repo_root/.venv/bin/ray" ]]; then RAY_BIN="$repo_root/.venv/bin/ray"; else RAY_BIN="ray"; fi
fi
num_cpus="${NUM_CPUS:-$(nproc)}"
ray_port="${RAY_PORT:-6379}"
dashboard_port="${DASHBOARD_PORT:-8265}"

# Token authentication is not optional here: an unauthenticated job API runs anyone's code.
if [[ -n "${RAY_AUTH_MODE:-}" && "${RAY_AUTH_MODE}" != "token" ]]; then
    echo "note: ignoring RAY_AUTH_MODE=${RAY_AUTH_MODE}; this cluster always uses token authentication" >&2
fi
export RAY_AUTH_MODE=token
# With RAY_AUTH_MODE=token `ray start` refuses to run without a token: create ~/.ray/auth_token once (kept
# across restarts; RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH take precedence when set). The token is not printed.
"$RAY_BIN" get-auth-token --generate >/dev/null

args=(start --head --port "$ray_port" --num-cpus "$num_cpus"
      --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port")
if [[ -n "${NUM_GPUS:-}" ]]; then args+=(--num-gpus "$NUM_GPUS"); fi

"$RAY_BIN" "${args[@]}" "$@"

cat <<EOF

Ray head is up (token authentication on; token in ~/.ray/auth_token).
Submit the demo from the repository root ($repo_root):

  RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:${dashboard_port} --working-dir . -- \\
      python jobs/distill.py --config configs/demo.yaml

From another machine, tunnel the port (ssh -L ${dashboard_port}:127.0.0.1:${dashboard_port} …) and also export
RAY_AUTH_TOKEN="\$(cat ~/.ray/auth_token)" with this machine's token.
Dashboard: http://127.0.0.1:${dashboard_port}     Stop: cluster/local/stop.sh
EOF
