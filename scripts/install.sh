#!/usr/bin/env bash
# Installs what sfu needs on Debian: system packages, then a virtual environment in
# .venv with sfu (and its Cython extension) installed editable. Safe to run again.
#   scripts/install.sh          the server
#   scripts/install.sh --test   the server and everything the test suite uses
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
[ "${1:-}" = "--test" ] && with_test=1

# coturn: the TURN server (`[turn] start_local`, and the TURN tests); chromium and
# firefox-esr: browsers in tests (Firefox driven by puppeteer-core from npm, hence
# nodejs); GStreamer's webrtcbin with Debian's python3 (and python3-websocket): the
# GStreamer participant; janus: a system `sfu bench` compares with; iptables: packet
# loss and firewalls in the tests' network namespaces; openssl: an independent HMAC for
# the TURN credential test; iproute2/util-linux: `ip` and `unshare` for those
# namespaces; build-essential/python3-dev: the Cython extensions; redis-server: the
# cluster tests' Redis; haproxy: the cluster example's load balancer, run by its test.
packages=(build-essential python3-dev python3-venv iproute2 util-linux coturn)
[ "$with_test" = 1 ] && packages+=(chromium janus iptables openssl procps firefox-esr nodejs
    redis-server haproxy
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-nice python3-gst-1.0 gir1.2-gst-plugins-base-1.0
    gir1.2-gst-plugins-bad-1.0 python3-websocket)
# Debian's nodejs comes without npm (NodeSource's, if that is installed, bundles it).
[ "$with_test" = 1 ] && ! command -v npm >/dev/null && packages+=(npm)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "install.sh: installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    # Debian's janus and coturn enable system-wide services; sfu starts its own.
    if command -v systemctl >/dev/null; then
        for service in janus coturn redis-server haproxy; do
            if [[ " ${missing[*]} " == *" $service "* ]]; then
                $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
            fi
        done
    fi
fi

if [ "$with_test" = 1 ]; then
    # puppeteer-core, pinned by tests/clients/package-lock.json; it downloads no browser.
    (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "install.sh: sfu needs Python >= 3.11 ($python is older)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
# setuptools too: `python setup.py build_ext --inplace` (rebuilding the extension in
# place) reads pyproject.toml, whose license field needs setuptools 77.
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip "setuptools>=77"
extras=""
[ "$with_test" = 1 ] && extras="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
.venv/bin/python -c 'from sfu.fastpath import cython_unavailable_reason as r; \
print("install.sh: sfu installed; Cython extension:", "built" if "not built" not in str(r()) \
else "NOT built")'
