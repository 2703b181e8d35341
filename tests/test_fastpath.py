"""Which forwarder the server gets, and the fallback when the Cython one is unusable."""

from __future__ import annotations

import logging

import pytest

from sfu import fastpath
from sfu.fastpath import ForwarderUnavailable, cython_unavailable_reason, make_forwarder


def test_python_when_asked() -> None:
    assert make_forwarder("python", 1).implementation == "python"


@pytest.mark.skipif(cython_unavailable_reason() is not None, reason="no Cython forwarder")
def test_cython_by_default_when_usable() -> None:
    assert make_forwarder("auto", 1).implementation == "cython"
    assert make_forwarder("cython", 1).implementation == "cython"


def test_env_forces_pure_python(monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SFU_PUREPYTHON", "1")
    with caplog.at_level(logging.WARNING):
        assert make_forwarder("auto", 1).implementation == "python"
    assert "SFU_PUREPYTHON is set" in caplog.text
    with pytest.raises(ForwarderUnavailable, match="SFU_PUREPYTHON"):
        make_forwarder("cython", 1)


def test_failed_self_check_falls_back_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SFU_PUREPYTHON", raising=False)
    monkeypatch.setattr(fastpath, "_extension_problem",
                        lambda: "sfu._fastpath self-check failed: AEAD_AES_128_GCM: mismatch")
    with caplog.at_level(logging.WARNING):
        assert make_forwarder("auto", 1).implementation == "python"
    assert "self-check failed" in caplog.text
    with pytest.raises(ForwarderUnavailable, match="self-check failed"):
        make_forwarder("cython", 1)
