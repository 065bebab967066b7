"""Knobs in the defaults of the function (or class) a script runs: ``def main(lr=3e-3, hidden=32)``.

A script whose settings are its entry function's keyword defaults has no other place to edit
them. Those defaults are knobs only where they are *live*, where the function is called without
a value for them, since a default the caller always overrides is a dead knob and an experiment
on it measures only noise. The entry functions read:

- ``fire``: the function given to ``fire.Fire(main)``; with ``fire.Fire()`` and no argument,
  the one public module-level function nothing in the file calls or names (Fire exposes every
  function then, and the command picks one: with several, which one runs cannot be read). A
  class given to it (``fire.Fire(Trainer)``) gives its ``__init__`` defaults and those of the
  method the run command names (``python train.py train``): without a method, Fire only builds
  the class;
- ``jsonargparse``: the function (or class, as for fire) given to ``CLI(main)`` or
  ``auto_cli(main)``, spelled ``--lr``; the classes given to Lightning's ``LightningCLI(Model,
  Data)``, spelled ``--model.lr`` and ``--data.batch_size``;
- ``tyro``: the function given to ``tyro.cli(train)``, spelled as typer spells it (``--hidden-dim``,
  a boolean ``--x``/``--no-x``);
- ``typer``/``click``: a function decorated ``@app.command()`` or ``@click.command()``, and one
  given to ``typer.run(main)``. typer reads each parameter's default, also out of
  ``typer.Option(2e-3, ...)``/``typer.Argument(...)`` (and of ``Annotated[float,
  typer.Option()] = 2e-3``). A parameter a ``@click.option``/``@click.argument`` decorator
  declares is left to :mod:`.python`, which reads the option's own ``default=``: click always
  passes it, so the Python default is dead;
- ``main``: a module-level function called with no value for the parameter under
  ``if __name__ == "__main__":`` (``main()``, ``sys.exit(main())``) or in a statement of its own
  at the top level of the script, keyword-only parameters included;
- ``constructor``: an ``__init__`` default of a class that every instantiation leaves out
  (``model = Net(vocab)`` for ``def __init__(self, vocab, hidden=64)``): in this file when it
  has one of the entry functions above or an ``if __name__ == "__main__":`` block (a Lightning
  script's ``model = LitModel(hidden=128)`` there), and in the other editable files, which the reader's
  :class:`~.callers.Callers` holds (``from model import Net`` in train.py). A class built only in
  a frozen file is not read: whether that file passes the value cannot be seen.

Conservative on purpose: a parameter any call in the file passes (by position or keyword) is not
a knob; a function called with ``*args``/``**kwargs`` (``main(**vars(args))``), named other than
in a call (``partial(main, ...)``, ``mp.spawn(main, ...)``), or wrapped in a decorator that may
supply arguments (``@hydra.main``) gives none.
"""

from __future__ import annotations

import ast

from nightlab.code.knobs.callers import passed_by
from nightlab.code.knobs.choices import annotated_choices
from nightlab.code.knobs.command import command_words
from nightlab.code.knobs.reader import Reader, as_annotated, call_name, is_main_guard, keyword, string_args

_FUNCTION = (ast.FunctionDef, ast.AsyncFunctionDef)
_Function = ast.FunctionDef | ast.AsyncFunctionDef
# Decorators of a typer or click command that supply no argument the function's defaults would
# lose to (options and arguments are read one by one: see _declared_by_click).
_COMMAND_DECORATORS = {"command", "option", "argument", "pass_context", "pass_obj", "version_option",
                       "help_option", "password_option", "confirmation_option"}  # fmt: skip


def click_parameter(decls: list[str]) -> tuple[str | None, tuple[str, ...]]:
    """The parameter a click option's declarations name, and its command-line spellings.

    click takes a bare identifier (``click.option("--batch-size", "bs")``) as the name, else the
    first long option with its dashes made underscores; ``"--use-bn/--no-use-bn"`` is a boolean
    flag's two spellings of one parameter, ``use_bn``. None: only a short option, no name a
    person would search."""
    spellings: list[str] = []
    name = None
    for decl in decls:
        if decl.isidentifier():
            name = name or decl
            continue
        spellings += [part.strip() for part in decl.split("/") if part.strip()]
    if name is None:
        on = [d.split("/")[0].strip() for d in decls if not d.isidentifier()]
        long = next((d for d in on if d.startswith("--")), None)
        name = long[2:].replace("-", "_").lower() if long else None
    return name, tuple(spellings)


def entry_knobs(reader: Reader, tree: ast.Module) -> None:
    """Add the live defaults of the file's entry functions, then of the constructors of its
    classes (see the module docstring)."""
    functions = {s.name: s for s in tree.body if isinstance(s, _FUNCTION)}
    uses = _Uses(tree)
    entries = _entries(tree, functions, uses)
    classes = {s.name: s for s in tree.body if isinstance(s, ast.ClassDef)}
    commands = _class_entries(tree, classes)
    jsonargparse = "jsonargparse" in {*entries.values(), *commands.values()}
    unread = jsonargparse and config_files_override(tree, reader.command)
    for name, how in entries.items():
        function = functions[name]
        if not _decorators_allow(function, how) or (how == "jsonargparse" and unread):
            continue
        passed = uses.passed(name, len(function.args.posonlyargs) + len(function.args.args))
        if passed is None:
            continue
        declared = _declared_by_click(function)
        for param, default, key in parameter_defaults(function):
            if param.arg in passed or key in passed or param.arg in declared:
                continue
            _parameter(reader, function.name, param, default, how)
    for name, how in commands.items():
        if not (how == "jsonargparse" and unread):
            _command_class(reader, classes[name], how, uses)
    if not config_files_override(tree, reader.command):
        _lightning_cli(reader, tree, classes)
    runs = bool(entries or commands) or any(is_main_guard(s) for s in tree.body)
    for cls in classes.values():
        if cls.name not in commands:
            _constructor(reader, cls, uses, runs)


def _lightning_cli(reader: Reader, tree: ast.Module, classes: dict[str, ast.ClassDef]) -> None:
    """``LightningCLI(Model, Data)``: the ``__init__`` defaults of the module and data module
    classes of this file are the CLI's own, spelled ``--model.lr`` and ``--data.batch_size``;
    named so (``model.lr``), as a config file written for the CLI names them."""
    if "LightningCLI" not in reader.source:
        return  # a walk of the whole tree saved for almost every file
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or call_name(node) != "LightningCLI":
            continue
        for position, (word, prefix) in enumerate((("model_class", "model"), ("datamodule_class", "data"))):
            target = node.args[position] if len(node.args) > position else keyword(node, word)
            cls = classes.get(target.id) if isinstance(target, ast.Name) else None
            init = _method(cls, "__init__") if cls is not None else None
            if init is None or init.decorator_list:
                continue
            for param, default, _ in parameter_defaults(init, skip=1):
                name = f"{prefix}.{param.arg}"
                reader.add(
                    name,
                    default,
                    default,
                    "jsonargparse",
                    qualified=f"{cls.name}.{param.arg}",
                    flags=(f"--{name}",),
                )


def config_files_override(tree: ast.Module, command: str) -> bool:
    """Whether a jsonargparse parser of the file reads config files, whose values win over the
    signature's defaults: ``default_config_files`` given to a parser or to ``CLI`` (also inside
    ``parser_kwargs={...}``), or ``--config`` on the run command. What they hold is not in the
    source, so no default of that parser is a knob."""
    if any(w == "--config" or w.startswith("--config=") for w in command_words(command)):
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and keyword(node, "default_config_files") is not None:
            return True
        if isinstance(node, ast.Dict) and any(
            isinstance(k, ast.Constant) and k.value == "default_config_files" for k in node.keys
        ):
            return True
    return False


def _class_entries(tree: ast.Module, classes: dict[str, ast.ClassDef]) -> dict[str, str]:
    """``{class name: how it is run}`` for a class handed to a command-line parser itself:
    ``fire.Fire(Trainer)``, jsonargparse's ``CLI(Trainer)``/``auto_cli(Trainer)``, or an instance
    of it (``fire.Fire(Trainer(lr=0.1))``: that call's arguments count as any call's)."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _registers(node):
            target = node.args[0] if node.args else keyword(node, "component")
            if isinstance(target, ast.Call):  # fire.Fire(Trainer(lr=0.1)): an instance, built here
                target = target.func
            if isinstance(target, ast.Name) and target.id in classes:
                found.setdefault(target.id, _how(node))
    return found


def _command_class(reader: Reader, cls: ast.ClassDef, how: str, uses: _Uses) -> None:
    """A class a parser builds from the command line (``fire.Fire(Trainer)``): its
    ``__init__`` defaults, and those of the method the run command calls (``python train.py
    train``), both spelled ``--name``. A default a call in the file passes is still left out."""
    init = _method(cls, "__init__")
    if init is not None and not init.decorator_list:
        positional = len(init.args.posonlyargs) + len(init.args.args) - 1
        passed = uses.passed(cls.name, positional)
        for param, default, key in parameter_defaults(init, skip=1) if passed is not None else []:
            if param.arg not in passed and key not in passed:
                _parameter(reader, cls.name, param, default, how)
    name = _called_method(reader.command, reader.path, cls)
    method = _method(cls, name) if name else None
    if method is None:
        return
    static = [call_name(d) for d in method.decorator_list]
    if any(d not in ("staticmethod", "classmethod") for d in static):
        return  # a wrapper may supply arguments
    for param, default, _ in parameter_defaults(method, skip=0 if "staticmethod" in static else 1):
        _parameter(reader, f"{cls.name}.{method.name}", param, default, how)


def _method(cls: ast.ClassDef, name: str) -> _Function | None:
    return next((s for s in cls.body if isinstance(s, _FUNCTION) and s.name == name), None)


def _called_method(command: str, path: str, cls: ast.ClassDef) -> str:
    """The public method of ``cls`` the run command names after the script ``path``
    (``python train.py --lr=0.1 train`` calls ``train``); "" when it names none or runs another
    script: the class alone is then built and nothing of its methods runs."""
    words = command_words(command)
    at = next((i for i, w in enumerate(words) if w == path or w.endswith("/" + path)), None)
    methods = {s.name for s in cls.body if isinstance(s, _FUNCTION) and not s.name.startswith("_")}
    if at is None:
        return ""
    return next((w for w in words[at + 1 :] if w in methods), "")


def _constructor(reader: Reader, cls: ast.ClassDef, uses: _Uses, runs: bool) -> None:
    """The ``__init__`` defaults of ``cls`` that every call building it leaves out: calls in this
    file count when it runs something (``runs``; a library's own calls may never run), calls in
    the other editable files always (``from model import Net`` and ``Net(vocab)`` in train.py)."""
    init = next((s for s in cls.body if isinstance(s, _FUNCTION) and s.name == "__init__"), None)
    if init is None or init.decorator_list or cls.name in uses.other:
        return  # also a class subclassed in the file (its name is a base)
    outside, named = reader.callers.calls(cls.name) if reader.callers is not None else ([], False)
    local = uses.calls.get(cls.name, [])
    if named or not (outside or (runs and local)):
        return
    positional = len(init.args.posonlyargs) + len(init.args.args) - 1
    passed = uses.passed(cls.name, positional)
    elsewhere = passed_by(outside, [f"#{i}" for i in range(positional)])
    if passed is None or elsewhere is None:
        return
    for param, default, key in parameter_defaults(init, skip=1):
        if not {param.arg, key} & (passed | elsewhere):
            _parameter(reader, cls.name, param, default, "constructor")


class _Uses:
    """How each module-level name is used in the file: the calls to it, and whether anything
    else names it (a base class, an argument, an annotation: then what it is called with cannot
    be read, and its defaults are left out)."""

    def __init__(self, tree: ast.Module) -> None:
        self.calls: dict[str, list[ast.Call]] = {}
        self.other: set[str] = set()
        callees: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                if isinstance(node.func, ast.Name):
                    self.calls.setdefault(node.func.id, []).append(node)
                    callees.add(id(node.func))
                if _registers(node):  # fire.Fire(main), typer.run(main): the entry itself
                    callees.update(id(a) for a in [*node.args[:1], *[k.value for k in node.keywords]])
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and id(node) not in callees:
                self.other.add(node.id)

    def passed(self, name: str, positional: int) -> set[str] | None:
        """The parameters of ``name`` some call passes, by keyword or by position (``"#0"``,
        ``"#1"``, ...); None when a call's arguments cannot be read (``*args``, ``**kwargs``, more
        of them than the ``positional`` parameters) or the name is used otherwise."""
        if name in self.other:
            return None
        passed: set[str] = set()
        for call in self.calls.get(name, []):
            if any(isinstance(a, ast.Starred) for a in call.args) or any(
                k.arg is None for k in call.keywords
            ):
                return None
            if len(call.args) > positional:
                return None  # more arguments than parameters: a name the file binds to another thing
            passed.update(f"#{i}" for i in range(len(call.args)))
            passed.update(k.arg for k in call.keywords if k.arg)
        return passed


def _registers(call: ast.Call) -> bool:
    """``fire.Fire(f)``, ``typer.run(f)``, jsonargparse's ``CLI(f)``/``auto_cli(f)``: a call that
    hands ``f`` to a command-line parser."""
    func = call.func
    if call_name(call) in ("Fire", "CLI", "auto_cli"):
        return True
    if isinstance(func, ast.Attribute) and func.attr == "cli" and call_name(func.value) == "tyro":
        return True  # tyro.cli(train): the function's defaults are its options
    return isinstance(func, ast.Attribute) and func.attr == "run" and call_name(func.value) == "typer"


def _how(call: ast.Call) -> str:
    """The parser a registering call names: ``fire``, ``jsonargparse``, ``tyro`` or ``typer``."""
    return {"Fire": "fire", "CLI": "jsonargparse", "auto_cli": "jsonargparse", "cli": "tyro"}.get(
        call_name(call), "typer"
    )


def _entries(tree: ast.Module, functions: dict[str, _Function], uses: _Uses) -> dict[str, str]:
    """``{function name: how it is run}`` for the file's entry functions."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not _registers(node):
            continue
        how = _how(node)
        target = node.args[0] if node.args else keyword(node, "component")
        if isinstance(target, ast.Name) and target.id in functions:
            found.setdefault(target.id, how)
        elif target is None and how == "fire":
            idle = [
                n for n in functions if not n.startswith("_") and n not in uses.calls and n not in uses.other
            ]
            if len(idle) == 1:
                found.setdefault(idle[0], how)
    cli = "typer" if _imports(tree, "typer") else "click" if _imports(tree, "click") else ""
    for name, function in functions.items():
        if cli and any(call_name(d) == "command" for d in function.decorator_list):
            found.setdefault(name, cli)
    for stmt in tree.body:
        # Under `if __name__ == "__main__":`, or a bare `main()` statement ending a script.
        if is_main_guard(stmt) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
            for node in ast.walk(stmt):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in functions
                ):
                    found.setdefault(node.func.id, "main")
    return found


def _imports(tree: ast.Module, module: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == module for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == module:
            return True
    return False


def _decorators_allow(function: _Function, how: str) -> bool:
    """A command's own decorators supply nothing its defaults lose to; any other decorator
    (``@hydra.main``, a wrapper) may, so the function is left out."""
    if how in ("typer", "click"):
        return all(call_name(d) in _COMMAND_DECORATORS for d in function.decorator_list)
    return not function.decorator_list


def _declared_by_click(function: _Function) -> set[str]:
    """The parameters ``@click.option``/``@click.argument`` decorators declare."""
    declared: set[str] = set()
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and call_name(decorator) in ("option", "argument"):
            decls = string_args(decorator)
            if call_name(decorator) == "argument":
                declared.update(d.replace("-", "_").lower() for d in decls[:1])
            else:
                name, _ = click_parameter(decls)
                declared.update([name] if name else [])
    return declared


def parameter_defaults(function: _Function, skip: int = 0) -> list[tuple[ast.arg, ast.expr, str]]:
    """``(parameter, default, key)`` for each parameter with a default, in order: ``key`` is
    ``"#i"`` for the i-th positional parameter (counting after ``skip``, the ``self`` a
    constructor call never passes), as :meth:`_Uses.passed` names a positional argument."""
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    first = len(positional) - len(args.defaults)
    found = [
        (a, d, f"#{first + i - skip}")
        for i, (a, d) in enumerate(zip(positional[first:], args.defaults, strict=True))
    ]
    found += [(a, d, "") for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
    return found


def _parameter(reader: Reader, owner: str, param: ast.arg, default: ast.expr, how: str) -> None:
    """One parameter's default as a knob, out of ``typer.Option(default, ...)`` when it is one."""
    annotation = param.annotation
    declared = _annotated_parameter(annotation)  # Annotated[float, typer.Option("--lr")]
    names = [s for s in string_args(declared) if s.startswith("-")] if declared else []
    positional = declared is not None and call_name(declared) == "Argument"
    if isinstance(default, ast.Call) and call_name(default) in ("Option", "Argument"):
        # typer.Option(48, "--width", "-w"): the first argument is the default, the rest names.
        positional = call_name(default) == "Argument"
        value = keyword(default, "default")
        rest = default.args
        if value is None and default.args:
            value, rest = default.args[0], default.args[1:]
        names += [a.value for a in rest if isinstance(a, ast.Constant) and str(a.value).startswith("-")]
        if value is None:
            return
        default = value
    flags = _spellings(param, names, how, positional, default)
    choices = annotated_choices(annotation, reader.names)
    default = as_annotated(default, annotation)  # def main(dropout: float = 0)
    reader.add(
        param.arg, default, default, how, qualified=f"{owner}.{param.arg}", choices=choices, flags=flags
    )


def _annotated_parameter(annotation: ast.expr | None) -> ast.Call | None:
    """The ``typer.Option(...)``/``typer.Argument(...)`` inside ``Annotated[T, ...]``, if any."""
    if not isinstance(annotation, ast.Subscript) or call_name(annotation.value) != "Annotated":
        return None
    members = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else []
    for member in members[1:]:
        if isinstance(member, ast.Call) and call_name(member) in ("Option", "Argument"):
            return member
    return None


def _spellings(
    param: ast.arg, names: list[str], how: str, positional: bool, default: ast.expr
) -> tuple[str, ...]:
    """How the command line sets the parameter: fire takes ``--name``; typer and click the
    declared names, else the name with dashes (``--grad-clip``), a boolean both ``--x`` and
    ``--no-x``. A function called from the script itself has none."""
    if how in ("fire", "jsonargparse"):
        return (f"--{param.arg}",)
    if how == "tyro":  # as typer: --hidden-dim, a boolean --x/--no-x
        how = "typer"
    if how not in ("typer", "click") or positional:
        return ()
    if names:
        return tuple(part for n in names for part in n.split("/") if part)
    option = "--" + param.arg.replace("_", "-")
    if isinstance(default, ast.Constant) and isinstance(default.value, bool):
        return (option, "--no-" + option[2:])
    return (option,)
