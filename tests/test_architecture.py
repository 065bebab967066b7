"""The layout DESIGN.md promises, checked on the source: parts, arrows between them, sizes.

Imports are read with ``ast`` (every ``import``, also those inside functions and under
TYPE_CHECKING), so a cycle or a forbidden arrow fails here, not in a reviewer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "nightlab"
MAX_LINES = 500

# The parts (one folder each) and the leaf modules every part may use.
PARTS = {"research", "code", "agents", "executor", "store", "workspace", "studies", "report", "cli"}
LEAVES = {
    "types",
    "errors",
    "config",
    "paths",
    "stats",
    "metrics",
    "events",
    "formatting",
    "plugins",
    "secrets",
    "safefile",
}
# Which parts each part may import (besides the leaves and itself). Arrows point down:
# cli uses everything, nothing uses cli; agents get what they need through the context and the
# tools the session lends them, never from the executor, the store or git.
ALLOWED = {
    "cli": PARTS - {"cli"},
    "studies": {"research", "code", "executor", "store", "workspace", "report"},
    "research": {"agents", "code", "executor", "store", "workspace"},
    "report": {"store", "studies", "workspace"},  # the dashboard asks whether a harness is alive
    "agents": {"code"},
    "code": set(),
    "executor": set(),
    "store": {"workspace"},  # recovery rebuilds the ledger from git refs
    "workspace": {"code"},
}
# The leaves' own arrows: each may use only the leaves listed (types and errors use nothing).
LEAF_ALLOWED = {
    "types": set(),
    "errors": set(),
    "paths": set(),
    "formatting": set(),
    "secrets": set(),
    "safefile": {"paths"},
    "stats": set(),
    "events": set(),
    "metrics": {"errors", "safefile"},
    "config": {"errors", "paths", "types"},
    "plugins": {"config", "errors", "paths"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "templates" in path.parts:
            continue
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The nightlab modules ``path`` imports (a package's ``from X import submodule`` resolved)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("nightlab")
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nightlab"))
    return {m for m in out if m in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: every component of more than one node is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def forbidden(module: str, targets: set[str]) -> set[str]:
    """The parts ``module`` imports that DESIGN.md does not let it use."""
    part = _part(module)
    used = {_part(m) for m in targets if m != "nightlab"} - {part}
    allowed = LEAF_ALLOWED[part] if part in LEAVES else ALLOWED[part] | LEAVES
    return used - allowed


def test_the_import_graph_has_no_cycles() -> None:
    assert len(GRAPH) > 60  # the walk really saw the package
    assert find_cycles(GRAPH) == []


def test_every_module_belongs_to_a_part_or_is_a_leaf() -> None:
    top = {_part(m) for m in MODULES if m != "nightlab"}
    assert top <= PARTS | LEAVES, sorted(top - PARTS - LEAVES)
    assert PARTS <= top  # every part has a folder


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "nightlab"))
def test_arrows_between_parts_follow_the_design(module: str) -> None:
    assert forbidden(module, GRAPH[module]) == set()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_passes_500_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it"


def test_templates_import_nothing_from_nightlab() -> None:
    for path in (PACKAGE / "templates").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n.startswith("nightlab") for n in names), f"{path} imports {names}"


def test_the_checkers_can_fail() -> None:
    """A cycle and the arrows DESIGN.md forbids are seen, so the tests above are not vacuous."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert forbidden("nightlab.agents.command", {"nightlab.executor.local", "nightlab.paths"}) == {"executor"}
    assert forbidden("nightlab.store.export", {"nightlab.report.summary"}) == {"report"}
    assert forbidden("nightlab.research.loop", {"nightlab.cli.app"}) == {"cli"}
    assert forbidden("nightlab.types", {"nightlab.config"}) == {"config"}


def test_test_modules_outside_packages_have_unique_names() -> None:
    """pytest imports a test file in a folder without ``__init__.py`` under its bare name, so two
    such files of one name (tests/research/test_resume.py, tests/studies/test_resume.py) stop
    the whole suite at collection with "import file mismatch"."""
    tests = Path(__file__).resolve().parent
    seen: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        if "fixtures" in path.relative_to(tests).parts or (path.parent / "__init__.py").exists():
            continue
        seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    clashes = {name: where for name, where in seen.items() if len(where) > 1}
    assert not clashes, f"rename one of each: {clashes}"
