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
for venv in build/wheel-venv build/wheel-venv-bench; do
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
done
build/wheel-venv/bin/python -m pip install -q --disable-pip-version-check "$wheel"
build/wheel-venv-bench/bin/python -m pip install -q --disable-pip-version-check "$wheel[bench]"
echo "wheel.sh: built $(cd "$out/dist" && ls) and installed it into build/wheel-venv{,-bench}"
