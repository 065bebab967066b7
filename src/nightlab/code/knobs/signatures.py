"""Knobs of a jsonargparse parser built from signatures: ``parser.add_function_arguments(train,
"train")``, ``add_class_arguments(Optim, "optim")``, ``add_method_arguments(Trainer, "fit")``.

Such a parser takes its options and their defaults from the function's (or ``__init__``'s, or the
method's) keyword defaults, so those defaults are the script's settings even though nothing in
the file calls the function without them: the call is ``train(**cfg.train)``, with what the
parser read. Each is a knob named as jsonargparse's command line names it: the nested key, a dot,
the parameter (``optim.lr``, set by ``--optim.lr``), or the parameter alone without a nested key.
(``CLI(main)`` and ``auto_cli(main)`` are read with the other entry functions, :mod:`.entry`.)

Left out, since their defaults do not apply: parameters in ``skip={...}``, keys the file's
``parser.set_defaults(...)`` sets, a parameter a direct call passes by name, and every parameter
of a parser that reads config files (``ArgumentParser(default_config_files=[...])``, ``--config``
on the run command) or whose ``set_defaults`` cannot be read: what those files or values hold is
not in the source.
"""

from __future__ import annotations

import ast

from nightlab.code.knobs.choices import annotated_choices
from nightlab.code.knobs.entry import config_files_override, parameter_defaults
from nightlab.code.knobs.reader import Reader, as_annotated, call_name, keyword

_ADDERS = {"add_function_arguments": 0, "add_class_arguments": 0, "add_method_arguments": 1}


def signature_knobs(reader: Reader, tree: ast.Module) -> None:
    """Add the live defaults of every function or class a jsonargparse parser of the file reads."""
    if not _imports_jsonargparse(tree) or config_files_override(tree, reader.command):
        return
    preset = _preset(tree)
    if preset is None:
        return
    defined = {s.name: s for s in tree.body if isinstance(s, (ast.FunctionDef, ast.ClassDef))}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or call_name(node) not in _ADDERS or not node.args:
            continue
        target = node.args[0]
        owner = defined.get(target.id) if isinstance(target, ast.Name) else None
        function = _signature(node, owner)
        if owner is None or function is None:
            continue
        nested = _nested_key(node)
        prefix = f"{nested}." if nested else ""
        skipped = _strings(keyword(node, "skip"))
        passed = _passed_by_name(tree, owner.name)
        for param, default, _ in parameter_defaults(function, skip=0 if function is owner else 1):
            name = prefix + param.arg
            if param.arg in skipped or name in preset or param.arg in passed:
                continue
            choices = annotated_choices(param.annotation, reader.names)
            qualified = f"{owner.name}.{param.arg}"
            default = as_annotated(default, param.annotation)
            reader.add(name, default, default, "jsonargparse", qualified=qualified, choices=choices,
                       flags=(f"--{name}",))  # fmt: skip


def _signature(call: ast.Call, owner: ast.stmt | None) -> ast.FunctionDef | None:
    """The function whose parameters the call adds: the function itself, the class's
    ``__init__`` or the named method (a dataclass's fields are read as fields)."""
    if isinstance(owner, ast.FunctionDef):
        return owner if call_name(call) == "add_function_arguments" and not owner.decorator_list else None
    if not isinstance(owner, ast.ClassDef) or call_name(call) == "add_function_arguments":
        return None
    name = "__init__"
    if call_name(call) == "add_method_arguments":
        method = call.args[1] if len(call.args) > 1 else keyword(call, "method_name")
        if not (isinstance(method, ast.Constant) and isinstance(method.value, str)):
            return None
        name = method.value
    found = next((s for s in owner.body if isinstance(s, ast.FunctionDef) and s.name == name), None)
    return found if found is not None and not found.decorator_list else None


def _nested_key(call: ast.Call) -> str:
    """The ``nested_key`` argument: after the function (and the method name), or by keyword."""
    at = 1 + _ADDERS[call_name(call)]
    node = call.args[at] if len(call.args) > at else keyword(call, "nested_key")
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""


def _strings(node: ast.expr | None) -> set[str]:
    """The string literals of a set, list or tuple literal (``skip={"optim"}``)."""
    if not isinstance(node, (ast.Set, ast.List, ast.Tuple)):
        return set()
    return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def _preset(tree: ast.Module) -> set[str] | None:
    """The keys every ``set_defaults`` call of the file sets (``set_defaults({"optim.lr": 0.1})``,
    ``set_defaults(lr=0.1)``); None when one of them cannot be read."""
    keys: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or call_name(node) != "set_defaults":
            continue
        for arg in node.args:
            if not isinstance(arg, ast.Dict) or not all(
                isinstance(k, ast.Constant) and isinstance(k.value, str) for k in arg.keys
            ):
                return None
            keys.update(k.value for k in arg.keys if isinstance(k, ast.Constant))
        if any(k.arg is None for k in node.keywords):
            return None
        keys.update(k.arg for k in node.keywords if k.arg)
    return keys


def _passed_by_name(tree: ast.Module, name: str) -> set[str]:
    """The parameters some direct call of ``name`` in the file passes by keyword: those the
    parser's values never reach (``train(batch_size=32, **cfg.train)``)."""
    return {
        k.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
        for k in node.keywords
        if k.arg
    }


def _imports_jsonargparse(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "jsonargparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jsonargparse":
            return True
    return False
