"""Who builds a file's classes in the other editable files: ``cfg = TrainConfig(noise=0.2)`` in
``train.py`` for ``@dataclass class TrainConfig`` in ``config.py``.

A class's defaults (a dataclass's fields, an ``__init__``'s keyword defaults) apply only where the
code that builds it leaves them out. When the class lives in one file and is built in another,
the file alone cannot say which defaults are live: ``config.py``'s ``noise: float = 0.1`` is dead
when ``train.py`` always passes ``noise=0.2``, and an experiment on it measures only noise. So the
editable Python files are read together: :class:`Callers` finds, in every other editable file,
the names that import a file's classes (``from config import TrainConfig as TC``, ``import
config`` then ``config.TrainConfig(...)``, relative imports too) and the calls made through them.

Only editable files are read: a frozen file that builds the class is not seen, so a class built
only there keeps its dataclass fields (as it always did) and gives no ``__init__`` knobs.
"""

from __future__ import annotations

import ast
import posixpath

__all__ = ["Callers", "passed_by", "module_of"]


def module_of(path: str) -> str:
    """The module a file is imported as from the repository root: ``pkg/config.py`` is
    ``pkg.config``, ``pkg/__init__.py`` is ``pkg``."""
    stem = path[: -len(".py")] if path.endswith(".py") else path
    parts = stem.split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def passed_by(calls: list[ast.Call], positional: list[str]) -> set[str] | None:
    """The parameters some of ``calls`` passes, by keyword or by position (``positional`` names
    the parameters a positional argument fills, in order); None when a call's arguments cannot
    be read (``*args``, ``**kwargs``, more positional arguments than parameters)."""
    passed: set[str] = set()
    for call in calls:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return None
        if len(call.args) > len(positional):
            return None
        passed.update(positional[: len(call.args)])
        passed.update(k.arg for k in call.keywords if k.arg)
    return passed


class Callers:
    """The calls to one file's top-level names made in the other editable Python files.

    ``others`` maps each other editable file to its parsed tree (unparsable files are left out
    by the caller). :meth:`calls` answers for one class name."""

    def __init__(self, path: str, others: dict[str, ast.Module]) -> None:
        self.path, self.module = path, module_of(path)
        self.others = {p: t for p, t in others.items() if p != path}

    def calls(self, name: str) -> tuple[list[ast.Call], bool]:
        """``(calls, other)``: every call that builds ``name`` in the other files, and whether
        one of them names it any other way (a base class, an argument: what it is called with
        there cannot be read)."""
        found: list[ast.Call] = []
        other = False
        for path, tree in self.others.items():
            direct, through = self._bindings(path, tree, name)
            if not direct and not through:
                continue
            counted = _annotations(tree)  # `cfg: TrainConfig` builds nothing and passes nothing
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and self._builds(node.func, direct, through, name):
                    found.append(node)
                    counted.add(id(node.func))
                    counted.update(id(n) for n in ast.walk(node.func))
            for node in ast.walk(tree):
                if id(node) in counted:
                    continue
                if isinstance(node, ast.Name) and node.id in direct and isinstance(node.ctx, ast.Load):
                    other = True
                elif isinstance(node, ast.Attribute) and node.attr == name and _root(node.value) in through:
                    other = True
        return found, other

    @staticmethod
    def _builds(func: ast.expr, direct: set[str], through: set[str], name: str) -> bool:
        if isinstance(func, ast.Name):
            return func.id in direct
        return isinstance(func, ast.Attribute) and func.attr == name and _root(func.value) in through

    def _bindings(self, path: str, tree: ast.Module, name: str) -> tuple[set[str], set[str]]:
        """The names ``path`` binds to the class (``TrainConfig``, ``TC``) and to its module
        (``config``, ``pkg.config`` as a dotted name)."""
        direct: set[str] = set()
        through: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and self._resolves(path, node) == self.module:
                for alias in node.names:
                    if alias.name in (name, "*"):
                        direct.add(alias.asname or name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == self.module:
                        through.add(alias.asname or alias.name)
        return direct, through

    @staticmethod
    def _resolves(path: str, node: ast.ImportFrom) -> str:
        """The module an ``from X import ...`` statement of file ``path`` names, relative
        imports resolved against the file's package."""
        if not node.level:
            return node.module or ""
        package = module_of(posixpath.dirname(path) + "/__init__.py") if "/" in path else ""
        parts = package.split(".") if package else []
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        return ".".join([*parts, *([node.module] if node.module else [])])


def _annotations(tree: ast.Module) -> set[int]:
    """The ids of every node inside a type annotation of ``tree``."""
    found: set[int] = set()
    for node in ast.walk(tree):
        hints: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            hints.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            hints.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            hints.append(node.returns)
        found.update(id(n) for hint in hints if hint is not None for n in ast.walk(hint))
    return found


def _root(node: ast.expr) -> str:
    """``pkg.config`` for the expression ``pkg.config``; "" for anything but names and attributes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])
