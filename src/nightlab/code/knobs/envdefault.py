"""The default of an environment variable a script reads its setting from:
``LR = float(os.environ.get("LR", "3e-4"))``. It applies whenever the variable is unset, as it is
in a run unless the run command sets it, so its literal is the knob; shared by the readers of
module settings (:mod:`.python`) and of ``main()``'s opening block (:mod:`.locals`)."""

from __future__ import annotations

import ast
import math
import re

from nightlab.code.knobs.reader import call_name

# Variables the harness or a launcher sets for every run: a default read from one never applies.
_SET_BY_HARNESS = re.compile(
    r"^(NIGHTLAB_|OMP_|MKL_|CUDA_|PYTORCH_|TORCH|MASTER_|WANDB_|HF_)|RANK$|^WORLD_SIZE$"
)


def env_default(node: ast.expr) -> ast.expr | None:
    """The default of ``os.environ.get("X", default)`` or ``os.getenv("X", default)``, also
    inside a cast (``float(...)``), unless the harness or a launcher sets ``X`` itself.

    Environment values are strings, so a default is often one too: ``int(os.getenv("BATCH",
    "64"))``. Under an ``int``/``float`` cast such a string is read as the number it holds (a
    knob that can be searched); setting it writes the number bare, which the cast accepts."""
    cast = None
    while (
        isinstance(node, ast.Call)
        and call_name(node) in ("float", "int", "bool", "str")
        and len(node.args) == 1
    ):
        cast = cast or call_name(node)
        node = node.args[0]
    if not isinstance(node, ast.Call) or len(node.args) != 2:
        return None
    func = node.func
    on_environ = isinstance(func, ast.Attribute) and func.attr == "get" and call_name(func.value) == "environ"
    if not (on_environ or call_name(node) == "getenv"):
        return None
    variable = node.args[0]
    if not isinstance(variable, ast.Constant) or not isinstance(variable.value, str):
        return None
    if _SET_BY_HARNESS.search(variable.value):
        return None
    default = node.args[1]
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
