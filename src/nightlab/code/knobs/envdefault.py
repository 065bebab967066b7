"""The default of an environment variable a script reads its setting from:
``LR = float(os.environ.get("LR", "3e-4"))``. It applies whenever the variable is unset, as it is
in a run unless the run command sets it, so its literal is the knob; shared by the readers of
module settings (:mod:`.python`) and of ``main()``'s opening block (:mod:`.locals`)."""

from __future__ import annotations

import ast
import math
import re

from nightlab.code.knobs.command import command_words
from nightlab.code.knobs.reader import call_name

# Variables the harness or a launcher sets for every run: a default read from one never applies.
SET_BY_HARNESS = re.compile(
    r"^(NIGHTLAB_|OMP_|MKL_|CUDA_|PYTORCH_|TORCH|MASTER_|WANDB_|HF_)|RANK$|^WORLD_SIZE$"
)


def env_default(node: ast.expr) -> ast.expr | None:
    """The default of ``os.environ.get("X", default)`` or ``os.getenv("X", default)`` (or
    ``default=default``, or ``os.environ.setdefault``), also inside a cast (``float(...)``); of
    ``os.environ.get("X") or default``; and of ``... if "X" in os.environ else default``:
    unless the harness or a launcher sets ``X`` itself.

    Environment values are strings, so a default is often one too: ``int(os.getenv("BATCH",
    "64"))``. Under an ``int``/``float`` cast such a string is read as the number it holds (a
    knob that can be searched); setting it writes the new number as a string again
    (``os.environ.setdefault`` takes nothing else)."""
    if isinstance(node, ast.IfExp):  # float(os.environ["LR"]) if "LR" in os.environ else 3e-4
        return _unless_set(node)
    cast = None
    while (
        isinstance(node, ast.Call)
        and call_name(node) in ("float", "int", "bool", "str")
        and len(node.args) == 1
    ):
        cast = cast or call_name(node)
        node = node.args[0]
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) == 2:
        # int(os.environ.get("BATCH_SIZE") or 64): the default when the variable is unset or empty
        read, default = node.values
        if not (_variable(read) and isinstance(read, ast.Call) and len(read.args) == 1):
            return None
    else:
        default = _given_default(node)
        if default is None:
            return None
    if cast in ("int", "float") and isinstance(default, ast.Constant) and isinstance(default.value, str):
        number = _as_number(default.value, int if cast == "int" else float)
        if number is not None:  # the same span, read as the number it spells
            return ast.copy_location(ast.Constant(value=number), default)
    return default


def _as_number(text: str, kind: type) -> int | float | None:
    try:
        value = kind(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _variable(node: ast.expr) -> str:
    """The variable ``os.environ.get("X", ...)``, ``os.getenv("X", ...)`` or
    ``os.environ.setdefault("X", ...)`` reads, unless the harness or a launcher sets it; ""
    for anything else."""
    if not isinstance(node, ast.Call) or not node.args:
        return ""
    func = node.func
    on_environ = (
        isinstance(func, ast.Attribute)
        and func.attr in ("get", "setdefault")
        and call_name(func.value) == "environ"
    )
    if not (on_environ or call_name(node) == "getenv"):
        return ""
    variable = node.args[0]
    if not isinstance(variable, ast.Constant) or not isinstance(variable.value, str):
        return ""
    return "" if SET_BY_HARNESS.search(variable.value) else variable.value


def _given_default(node: ast.expr) -> ast.expr | None:
    """The default a reader of the environment passes, second or as ``default=``."""
    if not _variable(node) or not isinstance(node, ast.Call):
        return None
    if len(node.args) == 2 and not node.keywords:
        return node.args[1]
    given = [k.value for k in node.keywords if k.arg == "default"]
    return given[0] if len(node.args) == 1 and len(given) == 1 else None


def _unless_set(node: ast.IfExp) -> ast.expr | None:
    """``A if "X" in os.environ else DEFAULT`` (or ``DEFAULT if "X" not in os.environ else A``):
    the literal that applies when ``X`` is unset."""
    test = node.test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and len(test.comparators) == 1):
        return None
    key, where = test.left, test.comparators[0]
    if not (isinstance(key, ast.Constant) and isinstance(key.value, str)) or call_name(where) != "environ":
        return None
    if SET_BY_HARNESS.search(key.value):
        return None
    if isinstance(test.ops[0], ast.In):
        return node.orelse if isinstance(node.orelse, ast.Constant) else None
    if isinstance(test.ops[0], ast.NotIn):
        return node.body if isinstance(node.body, ast.Constant) else None
    return None


def argv_default(node: ast.expr, command: str, path: str) -> ast.expr | None:
    """The literal of ``float(sys.argv[1]) if len(sys.argv) > 1 else 3e-4`` (a quick script's
    positional settings) when the run ``command`` gives the script ``path`` too few arguments for
    the test to hold, so the literal is what runs; None for anything else, or when the command
    does give them (then the literal never applies)."""
    if not isinstance(node, ast.IfExp) or not isinstance(node.orelse, (ast.Constant, ast.UnaryOp)):
        return None
    test = node.test
    if not (
        isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Gt, ast.GtE))
    ):
        return None
    length, bound = test.left, test.comparators[0]
    if not (isinstance(length, ast.Call) and call_name(length) == "len" and len(length.args) == 1):
        return None
    if call_name(length.args[0]) != "argv" or not (
        isinstance(bound, ast.Constant) and type(bound.value) is int
    ):
        return None
    words = command_words(command) if command else [path]
    if path not in words:
        return None  # the command runs something else, which may give the script any arguments
    given = len(words) - words.index(path) - 1
    holds = 1 + given > bound.value if isinstance(test.ops[0], ast.Gt) else 1 + given >= bound.value
    return None if holds else node.orelse
