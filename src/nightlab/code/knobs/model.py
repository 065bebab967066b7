"""What a knob is: one literal in an editable file, a name, and where it was found."""

from __future__ import annotations

from dataclasses import dataclass

KnobValue = object  # int | float | bool | str | tuple | list of numbers


@dataclass(frozen=True)
class Knob:
    """One setting of a script.

    ``line``/``col`` and ``end_line``/``end_col`` locate the literal (lines from 1, columns in
    characters from 0, end exclusive); ``start``/``end`` are the same span as offsets into the
    file's text. ``text`` is the literal exactly as written, ``comment`` the trailing comment
    without its ``#`` (empty when there is none), ``source`` where it was found (``constant``,
    ``setting``, ``argparse``, ``click``, ``dataclass``, ``class``, ``dict``, ``env``, ``argv``, ``call``
    for an argument of a training API's call, ``yaml``, ``json``, ``toml``).

    ``choices`` are the values the script itself declares the knob may take (argparse
    ``choices=``, ``click.Choice``, a ``Literal[...]`` annotation), so a string knob can be
    searched without the user repeating them in nightlab.toml. ``flags`` are an option's
    command-line spellings (``("-l", "--lr")``), so a run command that sets the option can be
    matched to the knob even when its ``dest`` is another name. ``selected_by`` are the Hydra
    group choices that select the config a knob belongs to (``(("optim", "adam"),)`` for a field of
    the structured config stored as ``optim/adam``): its value means something else once one of
    them changes (a YAML tree's are kept beside the knobs, in ``EditableKnobs.selected_by``).
    ``replaces`` names the command-line options whose defaults this knob makes dead wherever
    they are declared (``args.lr = 1e-3`` after parsing: ``("lr",)``), so a parser kept in another
    editable file gives no knob for them.
    """

    name: str
    value: KnobValue
    kind: str  # "int" | "float" | "bool" | "str" | "tuple" | "list"
    text: str
    line: int
    col: int
    end_line: int
    end_col: int
    start: int
    end: int
    comment: str = ""
    path: str = "train.py"
    source: str = "constant"
    choices: tuple[KnobValue, ...] = ()
    flags: tuple[str, ...] = ()
    selected_by: tuple[tuple[str, str], ...] = ()
    replaces: tuple[str, ...] = ()

    @property
    def syntax(self) -> str:
        """The language its literal is written in, for :func:`~nightlab.code.knobs.format_value`."""
        return self.source if self.source in ("yaml", "json", "toml") else "python"
