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

__all__ = ["Callers", "FileIndex", "import_source", "passed_by", "module_of"]


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


class FileIndex:
    """One editable Python file, read once for every other file's questions: its imports, the
    calls of plain and dotted names, and how often each such name is loaded at all (outside type
    annotations, which build nothing and pass nothing). Each file's classes are asked about
    against every other file, so walking the trees for each question would cost files × classes
    walks of whole trees."""

    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path, self.tree = path, tree
        self.imports: list[ast.Import | ast.ImportFrom] = []
        self.calls: dict[tuple[str, str], list[ast.Call]] = {}  # ("", "Net") or ("model", "Net")
        self.loads: dict[tuple[str, str], int] = {}
        hinted = _annotations(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.imports.append(node)
            elif isinstance(node, ast.Call):
                key = _key(node.func)
                if key is not None:
                    self.calls.setdefault(key, []).append(node)
            elif isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in hinted:
                key = _key(node)
                if key is not None and isinstance(node.ctx, ast.Load):
                    self.loads[key] = self.loads.get(key, 0) + 1


class Callers:
    """The calls to one file's top-level names made in the other editable Python files.

    ``others`` maps each editable Python file to its :class:`FileIndex` (unparsable files are
    left out by the caller). :meth:`calls` answers for one class name."""

    def __init__(self, path: str, others: dict[str, FileIndex]) -> None:
        self.path, self.module = path, module_of(path)
        # Each other file that imports this module: the names it imports from it (name -> local
        # names) and the names it binds the module to.
        self.imports: list[tuple[FileIndex, dict[str, set[str]], set[str]]] = []
        for other, index in others.items():
            if other == path:
                continue
            names: dict[str, set[str]] = {}
            through: set[str] = set()
            for node in index.imports:
                if isinstance(node, ast.Import):
                    through.update(
                        alias.asname or alias.name for alias in node.names if alias.name == self.module
                    )
                elif import_source(other, node) == self.module:
                    for alias in node.names:
                        names.setdefault(alias.name, set()).add(alias.asname or alias.name)
                else:  # from . import config; from pkg import config
                    package = import_source(other, node)
                    through.update(
                        alias.asname or alias.name
                        for alias in node.names
                        if ".".join(filter(None, [package, alias.name])) == self.module
                    )
            if names or through:
                self.imports.append((index, names, through))

    def calls(self, name: str) -> tuple[list[ast.Call], bool]:
        """``(calls, other)``: every call that builds ``name`` in the other files, and whether
        one of them names it any other way (a base class, an argument: what it is called with
        there cannot be read)."""
        found: list[ast.Call] = []
        other = False
        for index, names, through in self.imports:
            direct = names.get(name, set()) | ({name} if "*" in names else set())
            keys = [("", local) for local in direct] + [(module, name) for module in through]
            for key in keys:
                built = index.calls.get(key, [])
                found += built
                other = other or index.loads.get(key, 0) > len(built)
        return found, other


def import_source(path: str, node: ast.ImportFrom) -> str:
    """The module a ``from X import ...`` statement of file ``path`` names, relative imports
    resolved against the file's package."""
    if not node.level:
        return node.module or ""
    package = module_of(posixpath.dirname(path) + "/__init__.py") if "/" in path else ""
    parts = package.split(".") if package else []
    parts = parts[: max(0, len(parts) - (node.level - 1))]
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


def _key(node: ast.expr) -> tuple[str, str] | None:
    """``("", "Net")`` for the name ``Net``, ``("pkg.model", "Net")`` for ``pkg.model.Net``;
    None for anything else (a call's result, a subscript)."""
    if isinstance(node, ast.Name):
        return "", node.id
    parts: list[str] = []
    inner = node
    while isinstance(inner, ast.Attribute):
        parts.append(inner.attr)
        inner = inner.value
    if not isinstance(inner, ast.Name) or not parts:
        return None
    dotted = [inner.id, *reversed(parts)]
    return ".".join(dotted[:-1]), dotted[-1]
