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

When a Python script named in the command declares the flag with argparse, the flag is written
the way that parser accepts it: under its own option string (``batch_size`` becomes
``--batch-size`` when that is what ``add_argument`` declares), and a switch
(``action="store_true"``/``"store_false"``, ``BooleanOptionalAction``) as the bare option when its
value asks for it and left out when not, since argparse refuses ``--switch=True``.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from nightlab.code.knobs import find_knobs
from nightlab.code.knobs.command import PLACEHOLDER, command_words


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
    """How a script's argparse declares one flag: its long option string and its action."""

    flag: str
    action: str = "store"


def _flag(name: str, value: object, option: Option | None) -> str | None:
    """One command-line word for a knob of the flags file (None: leave the switch out)."""
    if option is None:
        return f"--{name}={_text(value)}"
    if option.action in ("store_true", "store_false") and isinstance(value, bool):
        on = value if option.action == "store_true" else not value
        return option.flag if on else None
    if option.action == "BooleanOptionalAction" and isinstance(value, bool):
        return option.flag if value else "--no-" + option.flag[2:]
    return f"{option.flag}={_text(value)}"


def _key(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def _declared_options(command: str, tree: Path) -> dict[str, Option]:
    """The argparse options declared by the Python scripts the command names, by their dest."""
    found: dict[str, Option] = {}
    for word in command_words(command):
        path = tree / word
        if not word.endswith(".py") or not path.is_file():
            continue
        try:
            module = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(module):
            if isinstance(node, ast.Call):
                option = _add_argument(node)
                if option is not None:
                    found.setdefault(option[0], option[1])
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
