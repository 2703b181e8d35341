"""The shape the redesign gave the package, held: no import circles between sfu's
modules, aiortc and aioice only behind sfu/transport/ (and in the aiortc-based client
library), no metrics I/O, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

SFU = Path(__file__).resolve().parent.parent / "sfu"
# The lazy exports of sfu/__init__.py (`from sfu import Server`) point down into the
# package on attribute access only; they are no dependency of anything on it.
LAZY_PACKAGE_INIT = "sfu"
# Participants for backends and tests: an aiortc client by nature, not server code.
AIORTC_CLIENT = "sfu.client"
MAX_LINES = 600
MAX_SERVER_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SFU.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, type-checking-only imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SFU.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_circles() -> None:
    graph = package_graph()
    graph[LAZY_PACKAGE_INIT] = set()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                raise AssertionError("import circle: " + " -> ".join(
                    [*trail[trail.index(target):], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_aiortc_and_aioice_stay_behind_the_transport() -> None:
    offenders = []
    for path in SFU.rglob("*.py"):
        name = module_name(path)
        if name.startswith("sfu.transport") or name == AIORTC_CLIENT:
            continue
        touched = {m for m in imports(path) if m.split(".")[0] in ("aiortc", "aioice", "av")}
        if touched:
            offenders.append(f"{name}: {sorted(touched)}")
    assert offenders == []


def test_metrics_does_no_io() -> None:
    touched = {m.split(".")[0] for m in imports(SFU / "metrics.py")}
    assert not touched & {"aiohttp", "asyncio", "socket"}


def test_modules_stay_small() -> None:
    sizes = {path.relative_to(SFU.parent).as_posix(): len(path.read_text().splitlines())
             for path in SFU.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
    assert sizes["sfu/server.py"] < MAX_SERVER_LINES
