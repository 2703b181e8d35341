"""The command line (sfu/cli.py): flags, errors as one line and exit status 2, --version."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import jwt
import pytest

import sfu
from sfu import cli, logs
from sfu.config import Config

SECRET = "0123456789abcdef" * 2


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """``sfu serve`` up to serving: the configs it would serve, the log level it set."""
    configs: list[Config] = []

    async def serve(config: Config) -> None:
        configs.append(config)

    monkeypatch.setattr(cli, "_serve", serve)
    monkeypatch.setattr(logs, "configure", lambda level, fmt: None)
    return configs


def test_serve_flags_override_file_and_environment(
    tmp_path: Path, served: list[Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sfu.toml"
    path.write_text('[server]\nhost = "::1"\nport = 9000\nlog_level = "warning"\n')
    monkeypatch.setenv("SFU_SERVER_PORT", "9001")
    assert cli.main(["serve", "--config", str(path), "--host", "127.0.0.2", "--port", "9002",
                     "--log-level", "debug"]) == 0
    server = served[0].server
    assert (server.host, server.port, server.log_level) == ("127.0.0.2", 9002, "debug")


def test_serve_without_flags_keeps_the_config(tmp_path: Path, served: list[Config]) -> None:
    path = tmp_path / "sfu.toml"
    path.write_text('[server]\nhost = "::1"\nport = 9000\n')
    assert cli.main(["serve", "--config", str(path)]) == 0
    assert (served[0].server.host, served[0].server.port) == ("::1", 9000)


def test_dev_serves_a_jwt_config_on_loopback_without_tokens(
    tmp_path: Path, served: list[Config]
) -> None:
    path = tmp_path / "sfu.toml"
    path.write_text(f'[server]\nhost = "0.0.0.0"\n[auth]\nmode = "jwt"\nsecret = "{SECRET}"\n')
    assert cli.main(["serve", "--config", str(path), "--dev"]) == 0
    assert (served[0].server.host, served[0].auth.mode) == ("127.0.0.1", "development")
    assert cli.main(["serve", "--config", str(path), "--dev", "--host", "::1"]) == 0
    assert served[1].server.host == "::1"


def test_dev_refuses_a_host_that_is_not_loopback(
    served: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--dev", "--host", "0.0.0.0"]) == 2
    assert "server.host" in capsys.readouterr().err
    assert served == []


def test_serve_help_says_what_dev_means(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["serve", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--log-level", "--dev"):
        assert flag in out
    assert "auth.mode = development" in " ".join(out.split())


def test_a_misspelt_sfu_variable_is_a_config_error(
    served: list[Config], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SFU_SERVER_PROT", "1")
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err.startswith("sfu: config error: unknown environment "
                                              "variable SFU_SERVER_PROT")
    assert served == []


def test_serve_on_a_port_in_use_is_one_line_and_exit_status_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "sfu", "serve"], capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, "SFU_SERVER_PORT": str(port)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == f"sfu: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_version_is_sfu_dunder_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"sfu {sfu.__version__}\n"
    # pyproject.toml reads the version from there: the installed metadata agrees.
    assert importlib.metadata.version("sfu") == sfu.__version__


def test_token_with_a_short_secret_is_a_config_error_not_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SFU_AUTH_SECRET", "0123456789abcdef")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["token", "--room", "r", "--identity", "i"]) == 2
    assert "auth.secret" in capsys.readouterr().err


def test_token_with_a_32_byte_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SFU_AUTH_SECRET", SECRET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["token", "--room", "r", "--identity", "i", "--no-publish"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["room"], claims["can_publish"]) == ("i", "r", False)


@pytest.mark.parametrize("missing", ["numpy", "matplotlib"])
def test_bench_without_the_bench_extra_says_so(
    missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import numpy` raises, named numpy
    assert cli.main(["bench", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'sfu[bench]'" in err and missing in err


def test_bench_lets_other_import_errors_through(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("bench.run", "sfu_bench.run"):  # the bench's name before and after its rename
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        cli.main(["bench", "--help"])
