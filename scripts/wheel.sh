#!/usr/bin/env bash
# Builds the sdist and the wheel (from the sdist, as PyPA's build does) and installs the
# wheel (not editable) into two fresh virtual environments: build/wheel-venv (plain) and
# build/wheel-venv-bench (with the [bench] extra). tests/test_wheel.py then checks what was built and serves from it. Installing
# needs the package registry, so scripts/test.sh runs this before it enters the
# network namespace of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
out=build/wheel
rm -rf "$out" build/wheel-venv build/wheel-venv-bench
mkdir -p "$out"
# The sdist is what the wheel is built from (build's default), so both are checked.
.venv/bin/python -P -m build --outdir "$out/dist" . >"$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; exit 1; }
wheel=$(ls "$out"/dist/sfu-*.whl)
# The two environments install side by side (most of it is waiting on the index).
install() {
    "$python" -m venv "$1"
    "$1/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$1/bin/python" -m pip install -q --disable-pip-version-check "$2"
}
install build/wheel-venv "$wheel" & plain=$!
install build/wheel-venv-bench "$wheel[bench]" & bench=$!
wait "$plain"  # set -e: a failed install fails the script
wait "$bench"
echo "wheel.sh: built $(cd "$out/dist" && ls) and installed it into build/wheel-venv{,-bench}"
