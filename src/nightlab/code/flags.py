"""Command-line flags kept in an editable file, so every value an experiment ran with is in its
commit and its diff.

A script configured only by flags (``python train.py --lr=3e-4 --n_layer=6``) has no file for an
agent to edit. Write the flags into an editable TOML, YAML or JSON file instead (``lr = 3e-4``,
one key per flag) and name it in the run command with a placeholder::

    [target]
    editable = ["train.py", "flags.toml"]
    run = "python train.py {flags:flags.toml}"

Before each run the placeholder becomes ``--lr=0.0003 --n_layer=6`` from the file as committed
in the experiment (each value shell-quoted; booleans as ``True``/``False``, as a configurator
that evaluates ``--key=value`` literals expects). The file's values are knobs like any other
(:mod:`nightlab.code.knobs`).

When a Python script named in the command declares the flag with argparse, click or typer, the
flag is written the way that parser accepts it: under its own option string (``batch_size``
becomes ``--batch-size`` when that is what ``add_argument`` or ``@click.option`` declares, and
always for a typer or tyro parameter, which they spell with dashes), and a switch
(``action="store_true"``/``"store_false"``, ``BooleanOptionalAction``, click's ``is_flag`` and
``--x/--no-x``, a typer boolean) as the bare option its value asks for, or left out when it asks
for none, since these parsers refuse ``--switch=True``. absl and fire take ``--key=value`` as is.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from nightlab.code.knobs import find_knobs
from nightlab.code.knobs.command import PLACEHOLDER, command_words
from nightlab.code.knobs.entry import click_parameter
from nightlab.code.knobs.reader import call_name, keyword, string_args


def flag_files(command: str) -> list[str]:
    """The files named by ``{flags:FILE}`` placeholders in a command."""
    return PLACEHOLDER.findall(command)


def expand_flags(command: str, tree: Path) -> str:
    """``command`` with each placeholder replaced by flags from the file in ``tree``."""
    options = _declared_options(command, tree)

    def flags(match: re.Match[str]) -> str:
        path = match.group(1)
        text = (tree / path).read_text()
        words = (_flag(k.name, k.value, options.get(_key(k.name))) for k in find_knobs(text, path))
        return " ".join(shlex.quote(w) for w in words if w is not None)

    return PLACEHOLDER.sub(flags, command)


@dataclass(frozen=True)
class Option:
    """How a script declares one flag: its long option string and its action (argparse's
    ``store``, ``store_true``, ``store_false``, ``BooleanOptionalAction``; ``pair`` for click's and
    typer's ``--x/--no-x``, whose ``off`` spelling is its own)."""

    flag: str
    action: str = "store"
    off: str = ""


def _flag(name: str, value: object, option: Option | None) -> str | None:
    """One command-line word for a knob of the flags file (None: leave the switch out)."""
    if option is None:
        return f"--{name}={_text(value)}"
    if option.action in ("store_true", "store_false") and isinstance(value, bool):
        on = value if option.action == "store_true" else not value
        return option.flag if on else None
    if option.action == "BooleanOptionalAction" and isinstance(value, bool):
        return option.flag if value else "--no-" + option.flag[2:]
    if option.action == "pair" and isinstance(value, bool):
        return option.flag if value else option.off
    return f"{option.flag}={_text(value)}"


def _key(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def _declared_options(command: str, tree: Path) -> dict[str, Option]:
    """The options declared by the Python scripts the command names (argparse, click and typer),
    by their parameter's name."""
    found: dict[str, Option] = {}
    for word in command_words(command):
        path = tree / word
        if not word.endswith(".py") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        try:
            module = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(module):
            if isinstance(node, ast.Call):
                option = _add_argument(node) or _click_option(node)
                if option is not None:
                    found.setdefault(option[0], option[1])
        for name, option in _typer_options(text, word):
            found.setdefault(name, option)
    return found


def _click_option(call: ast.Call) -> tuple[str, Option] | None:
    """``(parameter, Option)`` of a ``@click.option("--batch-size", ...)`` decorator: click takes
    ``--batch-size``, never ``--batch_size``; ``--x/--no-x`` and ``is_flag=True`` are switches
    that take no value."""
    if call_name(call) != "option":
        return None
    decls = string_args(call)
    name, spellings = click_parameter(decls)
    long = next((s for s in spellings if s.startswith("--")), None)
    if name is None or long is None:
        return None
    pair = next((d.split("/", 1) for d in decls if "/" in d), None)
    if pair and pair[0].strip().startswith("--") and pair[1].strip():
        return _key(name), Option(flag=pair[0].strip(), action="pair", off=pair[1].strip())
    is_flag = keyword(call, "is_flag")
    if isinstance(is_flag, ast.Constant) and is_flag.value is True:
        return _key(name), Option(flag=long, action="store_true")
    return _key(name), Option(flag=long)


def _typer_options(text: str, path: str) -> list[tuple[str, Option]]:
    """The options of a typer command's parameters, from their knobs' spellings: the parameter
    ``grad_clip`` is ``--grad-clip`` (or the name ``typer.Option("--clip")`` declares), and a
    boolean ``--x/--no-x`` unless it declares a single name."""
    found = []
    for knob in find_knobs(text, path):
        long = next((f for f in knob.flags if f.startswith("--")), None)
        if knob.source not in ("typer", "tyro") or long is None:
            continue
        off = next((f for f in knob.flags if f.startswith("--") and f != long), "")
        if knob.kind == "bool":
            option = (
                Option(flag=long, action="pair", off=off) if off else Option(flag=long, action="store_true")
            )
        else:
            option = Option(flag=long)
        found += [(_key(knob.name), option), (_key(long), option)]
    return found


def _add_argument(call: ast.Call) -> tuple[str, Option] | None:
    """``(dest, Option)`` of a ``parser.add_argument("--lr", ...)`` call; None for anything else."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "add_argument"):
        return None
    strings = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    long = next((s for s in strings if s.startswith("--")), None)
    if long is None:
        return None
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    dest = keywords.get("dest")
    name = dest.value if isinstance(dest, ast.Constant) and isinstance(dest.value, str) else _key(long)
    action = keywords.get("action")
    if isinstance(action, ast.Constant) and isinstance(action.value, str):
        kind = action.value
    elif isinstance(action, ast.Attribute):  # argparse.BooleanOptionalAction
        kind = action.attr
    elif isinstance(action, ast.Name):  # from argparse import BooleanOptionalAction
        kind = action.id
    else:
        kind = "store"
    return _key(name), Option(flag=long, action=kind)


def _text(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)
