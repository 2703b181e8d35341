"""Under CI=true a skipped test fails the run (tests/conftest.py): CI provides every
requirement a test can skip for, so a skip there means one went missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("ci", "returncode"), [("true", 1), ("", 0)])
def test_a_skip_fails_only_under_ci(tmp_path: Path, ci: str, returncode: int) -> None:
    (tmp_path / "test_needs_something.py").write_text(
        "import pytest\n\n"
        "def test_needs_something():\n"
        "    pytest.skip('something is missing')\n"
    )
    env = {**os.environ, "CI": ci}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == returncode, run.stdout + run.stderr
    if ci:
        assert "skipped under CI=true" in run.stdout
        assert "something is missing" in run.stdout
