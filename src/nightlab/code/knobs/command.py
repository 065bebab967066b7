"""Knobs the run command sets: a value on the command line wins over the one in the file.

``run = "python train.py --lr=0.01 --hidden 64"`` runs with ``lr = 0.01`` whatever the argparse
default says, and nanoGPT's ``python train.py config/small.py --learning_rate=1e-3`` applies the
flag after the config file. Editing such a knob changes nothing the run sees: an experiment
spent on it measures only noise. :func:`set_by_command` names them, so the search leaves them
alone and says why.

Matched, with dashes and underscores read alike and case ignored:

- ``--name=value``, ``--name value`` and a bare ``--name`` (a switch): the knob whose name, or
  last dotted part, is ``name`` (``lr``, ``optim.lr``, ``TrainConfig.lr``), or whose option
  spellings include ``--name`` (an argparse ``dest`` of another name);
- a short option such as ``-l 0.01``: only a knob that declares that spelling;
- ``name=value`` without dashes (Hydra's overrides, ``+name=`` and ``++name=`` too): the knob of
  exactly that full name (``optim.lr=0.1``).

``{flags:FILE}`` placeholders are nightlab's own way to pass a file's knobs as flags: they are
the knobs being searched, not overrides, and are skipped.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from nightlab.code.knobs.model import Knob

# ``{flags:FILE}`` in a run command (expanded by nightlab.code.flags, which imports it from here).
PLACEHOLDER = re.compile(r"\{flags:([^}\s]+)\}")
_BARE = re.compile(r"^\+{0,2}([A-Za-z_][\w.\-]*)=")


def _key(name: str) -> str:
    """How a knob or flag name compares: its last dotted part, no dashes, upper case."""
    return name.strip("-").rsplit(".", 1)[-1].replace("-", "_").upper()


def command_words(command: str) -> list[str]:
    """The run command's words as the shell splits them, ``{flags:FILE}`` placeholders left out."""
    text = PLACEHOLDER.sub(" ", command)
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote: the words are still the best guess
        return text.split()


def set_by_command(command: str, knobs: Iterable[Knob]) -> dict[str, str]:
    """``{knob name: the command's words that set it}`` for every knob the run command sets
    (``{"lr": "--lr=0.01", "hidden": "--hidden 64"}``)."""
    tokens = command_words(command)
    by_key: dict[str, str] = {}  # "LR" -> the words as written, "--lr=0.01"
    spelled: dict[str, str] = {}  # "--lr" or "-l" -> the words as written
    exact: dict[str, str] = {}  # "optim.lr" -> "optim.lr=0.1"
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        name, eq, _ = token.partition("=")
        shown = token if eq or not following or following.startswith("-") else f"{token} {following}"
        if token.startswith("--") and len(name) > 2:
            by_key.setdefault(_key(name), shown)
            spelled.setdefault(name, shown)
        elif token.startswith("-") and len(name) > 1 and not name[1].isdigit() and name[1] != ".":
            spelled.setdefault(name, shown)  # -l 0.01; not a negative number
        else:
            match = _BARE.match(token)
            if match:
                exact.setdefault(match.group(1), token)
    found: dict[str, str] = {}
    for knob in knobs:
        candidates = [by_key.get(_key(knob.name)), exact.get(knob.name)]
        candidates += [spelled.get(flag) for flag in knob.flags]
        shown = next((c for c in candidates if c), None)
        if shown:
            found[knob.name] = shown
    return found
