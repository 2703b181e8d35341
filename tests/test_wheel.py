"""The package as a user installs it: the sdist and the wheel that scripts/wheel.sh
builds (scripts/test.sh runs it first), installed non-editable into fresh virtual
environments, serve a room from outside the repository."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tarfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sfu
from tests.conftest import requires_isolated_network

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "build" / "wheel" / "dist"
VENV = ROOT / "build" / "wheel-venv"
BENCH_VENV = ROOT / "build" / "wheel-venv-bench"

pytestmark = pytest.mark.skipif(
    not (DIST.is_dir() and (VENV / "bin" / "sfu").exists()
         and (BENCH_VENV / "bin" / "sfu").exists()),
    reason="no built wheel: run scripts/wheel.sh (scripts/test.sh does)",
)


def only(pattern: str) -> Path:
    found = sorted(DIST.glob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0]


def test_wheel_holds_every_package_the_extensions_and_the_assets() -> None:
    with zipfile.ZipFile(only("sfu-*.whl")) as wheel:
        names = set(wheel.namelist())
    packages = {str(init.parent.relative_to(ROOT))
                for init in (ROOT / "sfu").rglob("__init__.py")}
    missing = {package for package in packages if f"{package}/__init__.py" not in names}
    assert not missing, f"packages left out of the wheel: {missing}"
    for extension in ("sfu/_fastpath.", "sfu_bench/_receiver."):
        assert any(name.startswith(extension) and name.endswith(".so") for name in names), \
            f"{extension}*.so is not in the wheel"
    for asset in ("sfu/py.typed", "sfu/_fastpath.pyi", "sfu/web/index.html", "sfu/web/app.js",
                  "sfu/web/sfu-client.js", "sfu_bench/scenarios.toml"):
        assert asset in names
    # The repository's bench/ is installed as sfu_bench: nothing generic named `bench`.
    assert not [name for name in names if name.startswith(("bench/", "tests/"))]
    metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(only("sfu-*.whl")) as wheel:
        metadata = wheel.read(metadata_name).decode()
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert f"Version: {sfu.__version__}\n" in metadata
    assert "License-Expression: MIT\n" in metadata


def test_sdist_holds_what_the_wheel_is_built_from() -> None:
    with tarfile.open(only("sfu-*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("LICENSE", "README.md", "pyproject.toml", "setup.py", "sfu/_fastpath.pyx",
                   "sfu/_fastpath.pxd", "bench/_receiver.pyx", "bench/scenarios.toml",
                   "config/sfu.toml"):
        assert needed in names, f"{needed} is not in the sdist"


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # From a directory outside the repository, so nothing is imported from the checkout.
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, text=True,
                          capture_output=True, timeout=120,
                          env={key: value for key, value in os.environ.items()
                               if not key.startswith(("SFU_", "PYTHON"))})


def test_version_and_no_generic_bench_package(tmp_path: Path) -> None:
    version = run(VENV, "sfu", "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"sfu {sfu.__version__}"
    probe = run(VENV, "python", "-c", "import bench", cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'bench'" in probe.stderr


def test_bench_runs_with_its_extra_and_says_so_without(tmp_path: Path) -> None:
    without = run(VENV, "sfu", "bench", "--help", cwd=tmp_path)
    assert without.returncode == 2
    assert "pip install 'sfu[bench]'" in without.stderr
    assert "Traceback" not in without.stderr
    with_extra = run(BENCH_VENV, "sfu", "bench", "--help", cwd=tmp_path)
    assert with_extra.returncode == 0, with_extra.stderr
    assert "--scenarios" in with_extra.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def installed_server(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SFU_")}
    env["SFU_SERVER_PORT"] = str(port)
    process = subprocess.Popen([str(VENV / "bin" / "sfu"), "serve"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "sfu serve did not answer /healthz"
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
        assert process.returncode == 0, output


@requires_isolated_network
def test_installed_wheel_serves_a_room(tmp_path: Path) -> None:
    with installed_server(tmp_path) as port:
        smoke = run(VENV, "python", str(Path(__file__).with_name("wheel_smoke.py")),
                    f"ws://127.0.0.1:{port}/ws", cwd=tmp_path)
    assert smoke.returncode == 0, smoke.stderr
    imported_from, frames = smoke.stdout.split()
    assert Path(imported_from).is_relative_to(VENV)
    assert int(frames) == 10
