#!/usr/bin/env bash
# Installs everything, then runs the linters and the whole test suite.
# As root the suite runs inside a fresh network namespace with only loopback
# (`unshare --net`), which the WebRTC tests need (docs/architecture.md, "Testing WebRTC here"); elsewhere they skip
# and say why. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== install ($(date +%T))"
scripts/install.sh --test
echo "== wheel ($(date +%T)) (sdist and wheel built, installed into fresh environments: tests/test_wheel.py)"
scripts/wheel.sh 2> >(grep -v "^WARNING: Location" >&2)

echo "== ruff ($(date +%T))"
.venv/bin/ruff check sfu tests bench examples
echo "== mypy ($(date +%T))"
.venv/bin/mypy

echo "== pytest ($(date +%T))"
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null; then
    exec unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python -m pytest "$@"' \
        pytest -ra --durations=25 "$@"
fi
echo "test.sh: not root: the WebRTC tests will skip (they need unshare --net)"
exec .venv/bin/python -m pytest -ra --durations=25 "$@"
