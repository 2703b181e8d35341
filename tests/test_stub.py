"""The twin, the Cython forwarder and sfu/_fastpath.pyi describe one interface."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from sfu import _fastpath_fallback
from sfu.fastpath import cython_unavailable_reason

STUB = Path(__file__).parent.parent / "sfu" / "_fastpath.pyi"


def stub_methods() -> dict[str, list[str]]:
    """Forwarder method name → parameter names, from the stub."""
    tree = ast.parse(STUB.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Forwarder"]
    return {
        f.name: [a.arg for a in f.args.args]
        for f in cls.body
        if isinstance(f, ast.FunctionDef)
    }


def test_twin_matches_the_stub() -> None:
    methods = stub_methods()
    public = {
        name for name, member in inspect.getmembers(_fastpath_fallback.Forwarder)
        if callable(member) and (not name.startswith("_") or name == "__init__")
    }
    assert public == set(methods)
    for name, params in methods.items():
        signature = inspect.signature(getattr(_fastpath_fallback.Forwarder, name))
        assert list(signature.parameters) == params, name


@pytest.mark.skipif(cython_unavailable_reason() is not None, reason="no Cython forwarder")
def test_cython_forwarder_matches_the_stub() -> None:
    from sfu import _fastpath

    methods = stub_methods()
    public = {
        name for name in dir(_fastpath.Forwarder)
        if callable(getattr(_fastpath.Forwarder, name)) and not name.startswith("_")
    }
    assert public == set(methods) - {"__init__"}
    for name, params in methods.items():
        if name != "__init__":
            signature = inspect.signature(getattr(_fastpath.Forwarder, name))
            assert list(signature.parameters) == params, name
    assert _fastpath.Forwarder.implementation == "cython"
    assert _fastpath_fallback.Forwarder.implementation == "python"
