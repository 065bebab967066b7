"""Knobs in the settings block at the top of the function a script runs:

```python
def main():
    # hyperparameters
    lr = 1e-3
    batch_size = 64
    model = Net()
```

A script whose settings are local variables of ``main`` keeps them nowhere else. The block read
is the run of literal assignments (or literal defaults of environment variables, ``wd =
float(os.environ.get("WD", "0.1"))``, or of positional arguments, ``lr = float(sys.argv[1]) if
len(sys.argv) > 1 else 3e-4``, when the run command does not give them) that opens the body of a module-level function the script runs
(called under ``if __name__ == "__main__":`` or by a statement of its own at the top level),
after its docstring, up to the first statement that is anything else: later assignments are the
training's state (``step = 0`` after the model is built). A counter or a running best at the very
top (``step``, ``epoch``, ``best_...``) is state too, not a setting, and is left out.
"""

from __future__ import annotations

import ast
import re

from nightlab.code.knobs.envdefault import argv_default, env_default
from nightlab.code.knobs.literal import literal
from nightlab.code.knobs.reader import Reader, is_main_guard

SOURCE = "local"
# Names of a training's state: counters, running sums and bests (``step = 0``, ``total_loss = 0.0``).
_STATE = re.compile(
    r"^(best|total|running|sum_|correct|num_correct|history|global_step$|steps?$|iter(_num)?$|it$"
    r"|epoch$|i$|t$|n_seen|seen$|count)"
)


def local_knobs(reader: Reader, tree: ast.Module) -> None:
    """Add the leading literal settings of the functions the script runs (module docstring)."""
    functions = {s.name: s for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for name in _run(tree):
        function = functions.get(name)
        if function is None or function.decorator_list:
            continue  # a decorator (a CLI, hydra) may be what supplies its settings
        body = function.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        for stmt in body:
            target, value = _literal_assignment(stmt)
            if target is None or value is None:
                break
            default = env_default(value)
            given = argv_default(value, reader.command, reader.path)
            if default is not None:  # wd = float(os.environ.get("WD", "0.1"))
                reader.add(target, default, stmt, "env", qualified=f"{name}.{target}")
            elif given is not None:  # lr = float(sys.argv[1]) if len(sys.argv) > 1 else 3e-4
                reader.add(target, given, stmt, "argv", qualified=f"{name}.{target}")
            elif _is_argv(value):
                continue  # the run command gives it: the fallback never applies
            elif not _STATE.match(target):
                reader.add(target, value, stmt, SOURCE, qualified=f"{name}.{target}")


def _run(tree: ast.Module) -> list[str]:
    """The functions called by name under ``if __name__ == "__main__":`` or in a top-level
    statement of their own (``main()``, ``sys.exit(main())``), in order."""
    statements: list[ast.stmt] = []
    for stmt in tree.body:
        if is_main_guard(stmt):
            statements += stmt.body
        elif isinstance(stmt, ast.Expr):
            statements.append(stmt)
    names: list[str] = []
    for stmt in statements:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in names:
                names.append(node.func.id)
    return names


def _literal_assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    """``(name, value)`` of ``name = <literal>`` (or annotated), or of a literal default read
    from the environment (``float(os.environ.get("WD", "0.1"))``); ``(None, None)`` otherwise."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        target, value = stmt.targets[0].id, stmt.value
    elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        target, value = stmt.target.id, stmt.value
    else:
        return None, None
    ok = literal(value) is not None or env_default(value) is not None or _is_argv(value)
    return (target, value) if ok else (None, None)


def _is_argv(value: ast.expr) -> bool:
    """Whether ``value`` is a positional argument's fallback (``... if len(sys.argv) > 1 else
    3e-4``), whatever the run command gives: a setting of the block either way."""
    return argv_default(value, "", "train.py") is not None
