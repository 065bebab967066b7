"""Command-line flags kept in an editable file, so every value an experiment ran with is in its
commit and its diff.

A script configured only by flags (``python train.py --lr=3e-4 --n_layer=6``) has no file for an
agent to edit. Write the flags into an editable TOML, YAML or JSON file instead (``lr = 3e-4``,
one key per flag) and name it in the run command with a placeholder::

    [target]
    editable = ["train.py", "flags.toml"]
    run = "python train.py {flags:flags.toml}"

Before each run the placeholder becomes ``--lr=0.0003 --n_layer=6`` from the file as committed
in the experiment (each value shell-quoted; booleans as ``True``/``False``). The file's values are
knobs like any other (:mod:`nightlab.code.knobs`).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from nightlab.code.knobs import find_knobs

PLACEHOLDER = re.compile(r"\{flags:([^}\s]+)\}")


def flag_files(command: str) -> list[str]:
    """The files named by ``{flags:FILE}`` placeholders in a command."""
    return PLACEHOLDER.findall(command)


def expand_flags(command: str, tree: Path) -> str:
    """``command`` with each placeholder replaced by ``--key=value`` flags from the file in ``tree``."""

    def flags(match: re.Match[str]) -> str:
        path = match.group(1)
        text = (tree / path).read_text()
        return " ".join(shlex.quote(f"--{k.name}={_text(k.value)}") for k in find_knobs(text, path))

    return PLACEHOLDER.sub(flags, command)


def _text(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)
