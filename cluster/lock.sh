#!/usr/bin/env bash
# Regenerates the two lock files from pyproject.toml (run from anywhere; needs `uv` on PATH and the package index):
#   requirements.lock       the runtime closure: what cluster/Dockerfile installs (pip --require-hashes)
#   requirements-test.lock  the same runtime pins plus the test extras: what CI installs
# Both are resolved for CPython 3.11 on x86_64 Linux with glibc 2.36 (Debian bookworm: the image's base and the CI
# machine). The test lock is resolved under the runtime lock as a constraint, so every runtime package has the
# same version and hashes in both; tests/test_cluster_manifests.py checks that and that every pin satisfies
# pyproject.toml. Change pyproject.toml's dependencies, then run this and commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_36 --generate-hashes --quiet
        --custom-compile-command "cluster/lock.sh")
uv pip compile pyproject.toml "${common[@]}" -o requirements.lock
uv pip compile pyproject.toml --extra test -c requirements.lock "${common[@]}" -o requirements-test.lock
