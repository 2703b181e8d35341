#!/usr/bin/env bash
# Installs everything, then runs `sfu serve` (built-in default config unless given
# --config PATH). Open http://127.0.0.1:8080/ in a browser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/sfu serve "$@"
