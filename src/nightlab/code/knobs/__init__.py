"""The knobs of a training script, found where people keep them, and rewritten in place.

A knob is one literal in an editable file: an UPPER_CASE constant or a lowercase setting of a
Python script (:mod:`.python`, which also reads argparse/click defaults and dataclass fields,
and :mod:`.calls`, the literal arguments of optimizer, scheduler, layer and DataLoader calls),
or a scalar in a YAML, JSON or TOML config file (:mod:`.files`). :func:`find_knobs` reads them
with their exact spans; :func:`set_knobs` rewrites only the literals' text, written the way the
author wrote them (:mod:`.literal`), so a file keeps every comment, space and line: the diff of an
experiment is exactly the values that changed, which is what a person reviewing the research
branch wants to see. :func:`set_by_command` names the knobs a run command overrides on its
command line (:mod:`.command`), which editing cannot change.

A training script's editable files are read together by :func:`find_all_knobs`: a Hydra config
tree as Hydra composes it (:mod:`.hydra`: the defaults list's group choices are knobs, and only
the selected option files give knobs, named by their package), every other file by itself, and
a name two files give qualified by the second file rather than dropped. :func:`plan_changes` and
:func:`set_all_knobs` write values into those files, a group switch first, so a value of the
switched group lands in the option file the run will load.

Example::

    >>> src = "LR = 3e-4  # peak\\nDEPTH = 4\\n"
    >>> [k.name for k in find_knobs(src)]
    ['LR', 'DEPTH']
    >>> set_knobs(src, {"LR": 0.0006, "DEPTH": 6})
    'LR = 6e-4  # peak\\nDEPTH = 6\\n'
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from dataclasses import dataclass, field

from nightlab.code.knobs.callers import FileIndex
from nightlab.code.knobs.choices import comment_choices
from nightlab.code.knobs.command import command_words, set_by_command
from nightlab.code.knobs.files import json_knobs, toml_knobs, yaml_knobs
from nightlab.code.knobs.hydra import HYDRA_SOURCE, hydra_layouts
from nightlab.code.knobs.literal import format_literal, format_value
from nightlab.code.knobs.loaded import overridden_keys, parser_defaults, spread_into, structured_under
from nightlab.code.knobs.model import Knob, KnobValue
from nightlab.code.knobs.python import python_knobs
from nightlab.code.knobs.structured import Found, placements
from nightlab.errors import UserError

__all__ = ["Knob", "KnobValue", "find_knobs", "format_literal", "format_value", "is_budget_name"]
__all__ += ["knob_values", "set_knobs", "set_by_command", "KNOB_SUFFIXES"]
__all__ += [
    "HYDRA_SOURCE",
    "EditableKnobs",
    "KnobChange",
    "find_all_knobs",
    "plan_changes",
    "apply_changes",
    "set_all_knobs",
]

_READERS = {
    ".py": python_knobs,
    ".yaml": yaml_knobs,
    ".yml": yaml_knobs,
    ".json": json_knobs,
    ".toml": toml_knobs,
}
# The files knobs can live in; any other editable file has none.
KNOB_SUFFIXES = tuple(_READERS)
# Names of knobs that are a script's budget rather than its method: the number of iterations,
# steps, epochs or tokens it trains for. Searching them buys results with compute. A warm-up's
# or a warm-down's length is method (nanoGPT's warmup_iters, modded-nanogpt's warmdown_iters), and a `max_` that names a learning rate, a norm or
# a clip is a setting's ceiling (OneCycleLR's max_lr, max_grad_norm), and a tree's size is the
# model (max_depth, max_leaf_nodes, max_features, max_bin), not how long training runs. Gradient
# accumulation's steps (gradient_accumulation_steps, grad_accum_steps) are the effective batch,
# and a rate per epoch (steps_per_epoch, saves_per_epoch) is no length.
_BUDGET = re.compile(
    r"(?<!warmup_)(?<!warmdown_)(?<!cooldown_)(?<!per_)(?<!accumulation_)(?<!accum_)(?:iters?|iterations|steps|epochs?)$"
    r"|^max_(?!.*(?:lr|learning|norm|grad|clip|momentum|beta|drop|temp|scale|std|decay|depth|lea[fv]|features|bin))"
    r"|^total_.*tokens$",
    re.IGNORECASE,
)


def find_knobs(
    source: str,
    path: str = "train.py",
    command: str = "",
    others: dict[str, FileIndex] | None = None,
    stored: Found | None = None,
) -> list[Knob]:
    """Every knob of the file ``path`` whose text is ``source``, in file order (none for a file
    of another kind). A Python file also reads the run ``command`` and the ``others`` editable
    Python files, indexed, that may build its classes (see :mod:`.callers`), and where a Hydra
    ConfigStore of those files places its dataclasses (``stored``, :mod:`.structured`)."""
    source = readable(source)
    try:
        if path.endswith(".py"):
            return [_with_comment_choices(k) for k in python_knobs(source, path, command, others, stored)]
        for suffix, reader in _READERS.items():
            if path.endswith(suffix):
                return [_with_comment_choices(k) for k in reader(source, path)]
    except RecursionError:
        raise UserError(_TOO_DEEP.format(path=path)) from None
    return []


# A file nested deeper than Python's recursion limit (a generated JSON of a thousand levels):
# every parser gives up with a RecursionError, which must not reach the user as a traceback.
_TOO_DEEP = "{path}: nested too deeply to read (brackets or blocks a thousand levels deep); flatten it"


_UNDECODED = re.compile("[\udc80-\udcff]")


def readable(text: str) -> str:
    """``text`` with each byte that was not UTF-8 (kept as a lone surrogate, as git's files are
    read: a Latin-1 script with its coding line) as U+FFFD: the parsers refuse surrogates, and one
    character for one keeps every offset, so a literal is still spliced into the file's own text
    with its bytes untouched."""
    return _UNDECODED.sub("\ufffd", text)


def _with_comment_choices(knob: Knob) -> Knob:
    """A string knob whose only list of alternatives is its trailing comment gets them as choices."""
    if knob.choices or knob.kind != "str":
        return knob
    listed = comment_choices(knob.value, knob.comment)
    return dataclasses.replace(knob, choices=listed) if listed else knob


def knob_values(source: str, path: str = "train.py") -> dict[str, KnobValue]:
    """``{name: value}`` for every knob of ``source``."""
    return {k.name: k.value for k in find_knobs(source, path)}


def is_budget_name(name: str) -> bool:
    """Whether a knob's name says it is the budget (``max_iters``, ``NUM_EPOCHS``, ``total_tokens``)."""
    return bool(_BUDGET.search(name.rsplit(".", 1)[-1].lstrip("-")))


def set_knobs(source: str, values: dict[str, KnobValue], path: str = "train.py") -> str:
    """``source`` with the named knobs' literals replaced; every other byte is unchanged.

    Raises :class:`UserError` for a name that is not a knob of the file, naming the knobs that
    are, so a typo in ``[scales.*] constants`` or a stale proposal is caught before a run; and
    for a value of another kind (a string for a number, a number for a bool, NaN), since the
    script would then run with a type its author never wrote.
    """
    knobs = {k.name: k for k in find_knobs(source, path)}
    _check(knobs, values, path)
    out = source
    for knob in sorted((knobs[n] for n in values), key=lambda k: k.start, reverse=True):
        new_text = format_value(knob.text, values[knob.name], knob.syntax)
        out = out[: knob.start] + new_text + out[knob.end :]
    return out


def _check(knobs: dict[str, Knob], values: dict[str, KnobValue], where: str) -> None:
    """Raise :class:`UserError` for a name that is not among ``knobs`` or a value its knob
    cannot take."""
    unknown = [name for name in values if name not in knobs]
    if unknown:
        known = ", ".join(knobs) or "none"
        raise UserError(f"{where}: no knob named {', '.join(unknown)} (knobs found: {known})")
    for name, value in values.items():
        problem = _incompatible(knobs[name], value)
        if problem:
            raise UserError(f"{where}: {name} is {problem}; cannot set it to {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _incompatible(knob: Knob, value: object) -> str:
    """Why ``value`` cannot replace ``knob``'s literal ("" when it can): the kind must stay."""
    article = "an" if knob.kind[:1] in "aeiou" else "a"
    what = f"{article} {knob.kind} knob ({knob.text})"
    if knob.source == HYDRA_SOURCE and value not in knob.choices:
        return f"a Hydra group with the options {', '.join(map(str, knob.choices))} ({knob.text})"
    if knob.kind == "bool":
        return "" if isinstance(value, bool) else what
    if knob.kind == "str":
        return "" if isinstance(value, str) else what
    if knob.kind in ("int", "float"):
        return "" if _is_number(value) else what
    ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_number(v) for v in value)
    return "" if ok else what


# -- several files at once -----------------------------------------------------------------------
@dataclass(frozen=True)
class EditableKnobs:
    """The knobs of all the editable files, each under a name of its own.

    ``selected_by`` maps a knob that comes from a Hydra group's option file to the group choices
    that selected that file (``{"optim.lr": (("optim", "sgd"),)}``).
    """

    knobs: list[Knob]
    selected_by: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict, repr=False)
    command: str = ""

    def values_if(self, group: str, option: KnobValue) -> dict[str, KnobValue]:
        """The values of the knobs that ``option`` of the Hydra group ``group`` would give once
        selected (``values_if("optim", "sgd")["optim.lr"]`` is sgd.yaml's lr): what a run that
        switches to it reads, so a move can be recorded, and compared, as what it runs."""
        after = self._switched(group, option)
        return {k.name: k.value for k in after.knobs if (group, option) in after.selected_by.get(k.name, ())}

    def _switched(self, group: str, option: KnobValue) -> EditableKnobs:
        changed = set_all_knobs(self.files, {group: option}, self.command)
        return find_all_knobs({**self.files, **changed}, self.command)

    def origins(self) -> dict[str, KnobValue]:
        """The values every other option file of every group holds, under names qualified by the
        choices that select it (``"optim=sgd:optim.lr"``): kept with the baseline's values, they
        let a knob's domain be inferred from its own file's first value once the search switches
        to it, rather than from whatever the incumbent holds by then."""
        out: dict[str, KnobValue] = {}
        for knob in self.knobs:
            for option in knob.choices if knob.source == HYDRA_SOURCE else ():
                if option != knob.value:
                    after = self._switched(knob.name, option)
                    chains = after.selected_by
                    out.update(
                        {_qualified(chains[k.name], k.name): k.value for k in after.knobs if k.name in chains}
                    )
        return out

    def origin(self, name: str, origin: dict[str, KnobValue]) -> KnobValue | None:
        """Knob ``name``'s value in ``origin`` (a version's values and :meth:`origins`, such as the
        baseline's), read from the option file selected here: None when it has none. The
        baseline's Adam ``optim.lr`` says nothing of the scale of SGD's."""
        chain = self.selected_by.get(name, ())
        if all(origin.get(group, option) == option for group, option in chain):
            return origin.get(name)
        return origin.get(_qualified(chain, name))


def find_all_knobs(files: dict[str, str], command: str = "") -> EditableKnobs:
    """The knobs of the editable ``files`` (path -> text) together, in path order.

    Hydra config trees are read as Hydra composes them (:mod:`.hydra`; ``command`` is the run
    command, whose group overrides select options); every other file by itself. A name two
    files give is kept by the first (in path order: what the search has always called it) and
    qualified by the file for the others, ``conf/b.yaml:lr`` (for a Hydra knob, by its primary
    config, since its own file changes with the selection), so none is dropped.
    """
    originals, files = files, {path: readable(text) for path, text in files.items()}
    try:
        return _find_all(originals, files, command)
    except RecursionError:
        for path in sorted(files):
            find_knobs(files[path], path)  # raises for the file nested too deeply
        raise UserError(_TOO_DEEP.format(path="the editable files")) from None


def _find_all(originals: dict[str, str], files: dict[str, str], command: str) -> EditableKnobs:
    """:func:`find_all_knobs` on ``files`` made readable; ``originals`` are kept with the knobs."""
    layouts = {layout.primary: layout for layout in hydra_layouts(files, command)}
    dead = _exec_overridden(files, command)
    replaced = overridden_keys(files)  # cfg = yaml.safe_load(...); cfg["lr"] = 1e-3
    owned = {path for layout in layouts.values() for path in layout.files}
    trees = _python_trees(files)
    stored = placements({p: index.tree for p, index in trees.items()}, command)
    found: dict[str, Knob] = {}
    selected_by: dict[str, tuple[tuple[str, str], ...]] = {}
    read = {
        path: find_knobs(files[path], path, command, trees, stored.get(path, ({}, [])))
        for path in sorted(files)
        if path not in layouts and path not in owned
    }
    # args.lr = 1e-3 in train.py after parsing: the option's default in options.py is dead too
    forced = {(path, name) for path, knobs in read.items() for k in knobs for name in k.replaces}
    # parser.set_defaults(**yaml.safe_load(f)): the option defaults config.yaml sets are dead
    defaulted = {
        (path, k.name.split(".")[0])
        for path, configs in parser_defaults(files).items()
        for config in configs
        for k in read.get(config, [])
    }
    # OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load("config.yaml")): the YAML wins
    under = {
        (path, k.name)
        for path, configs in structured_under(files).items()
        for config in configs
        for k in read.get(config, [])
    }
    under |= _spread_fields(spread_into(files), trees, read)  # Config(**yaml.safe_load(f))
    # OmegaConf.merge(OmegaConf.load("config.yaml"), OmegaConf.structured(Config)): the fields win
    over = {
        (config, k.name)
        for path, configs in structured_under(files, before=True).items()
        for config in configs
        for k in read.get(config, [])
        if any(f.source == "dataclass" and f.name == k.name for f in read.get(path, []))
    }
    for path in sorted(files):
        if path in layouts:
            layout = layouts[path]
            renamed = {name: _unique(name, path, found) for name in layout.knobs}
            for name, knob in layout.knobs.items():
                found[renamed[name]] = _with_comment_choices(dataclasses.replace(knob, name=renamed[name]))
                if name in layout.selected_by:
                    selected_by[renamed[name]] = tuple(
                        (renamed.get(g, g), o) for g, o in layout.selected_by[name]
                    )
        elif path not in owned:
            for knob in read[path]:
                if (path, knob.name) in dead or _replaced(knob.name, replaced.get(path, set())):
                    continue  # a config file the run command names, or the script, sets it again
                option = knob.name.lstrip("-").replace("-", "_")
                if (knob.source == "dataclass" and (path, knob.name) in under) or (path, knob.name) in over:
                    continue
                if knob.source in _OPTIONS and (
                    (path, option) in defaulted or any(p != path and n == option for p, n in forced)
                ):
                    continue
                name = _unique(knob.name, path, found)
                found[name] = knob if name == knob.name else dataclasses.replace(knob, name=name)
                if knob.selected_by:  # a field of a Hydra structured config's group option
                    selected_by[name] = knob.selected_by
    return EditableKnobs(list(found.values()), selected_by, originals, command)


_OPTIONS = ("argparse", "click", "absl")


def _replaced(name: str, keys: set[str]) -> bool:
    return any(name == key or name.startswith(key + ".") for key in keys)


def _exec_overridden(files: dict[str, str], command: str) -> set[tuple[str, str]]:
    """The ``(script, name)`` settings of the script a run command runs that a Python config file
    named after it sets again, where the script ``exec``s what it is given (nanoGPT's ``python
    train.py config/small.py``, read by ``exec(open('configurator.py').read())``): the config
    file's values apply, and the script's are dead. Only editable config files can be read."""
    words = [w for w in command_words(command) if w.endswith(".py")]
    if len(words) < 2 or words[0] not in files:
        return set()
    script, configs = words[0], [w for w in words[1:] if w in files]
    if not configs or not any("exec(" in text for path, text in files.items() if path.endswith(".py")):
        return set()
    dead: set[tuple[str, str]] = set()
    for config in configs:
        try:
            tree = ast.parse(files[config])
        except SyntaxError:
            continue
        for stmt in tree.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else []
            dead.update((script, t.id) for t in targets if isinstance(t, ast.Name))
    return dead


def _spread_fields(
    spread: dict[str, list[tuple[str, set[str]]]], trees: dict[str, FileIndex], read: dict[str, list[Knob]]
) -> set[tuple[str, str]]:
    """The ``(file, name)`` of each dataclass field a loaded config spread into its class sets
    (see :func:`~.loaded.spread_into`), or every field of the class when the config is unknown."""
    dead: set[tuple[str, str]] = set()
    for path, built in spread.items():
        body = trees[path].tree.body if path in trees else []
        for name, configs in built:
            keys = {k.name for config in configs for k in read.get(config, [])}
            for cls in (s for s in body if isinstance(s, ast.ClassDef) and s.name == name):
                span = range(cls.lineno, (cls.end_lineno or cls.lineno) + 1)
                dead |= {
                    (path, k.name)
                    for k in read.get(path, [])
                    if k.source == "dataclass" and k.line in span and (not configs or k.name in keys)
                }
    return dead


def _python_trees(files: dict[str, str]) -> dict[str, FileIndex]:
    """The editable Python files that parse, indexed: where a file's classes may be built (a
    file that does not parse is reported when its own knobs are read)."""
    trees: dict[str, FileIndex] = {}
    for path, text in files.items():
        if path.endswith(".py"):
            try:
                trees[path] = FileIndex(path, ast.parse(text, filename=path))
            except SyntaxError:
                continue
    return trees


def _qualified(chain: tuple[tuple[str, str], ...], name: str) -> str:
    return ",".join(f"{group}={option}" for group, option in chain) + ":" + name


def _unique(name: str, path: str, taken: dict[str, Knob]) -> str:
    if name not in taken:
        return name
    qualified, n = f"{path}:{name}", 2
    while qualified in taken:
        qualified, n = f"{path}:{name}#{n}", n + 1
    return qualified


@dataclass(frozen=True)
class KnobChange:
    """One literal to rewrite: the knob, located in its file's text as given, the new value and
    the text that replaces the literal."""

    knob: Knob
    value: KnobValue
    text: str


def plan_changes(files: dict[str, str], values: dict[str, KnobValue], command: str = "") -> list[KnobChange]:
    """Where each of ``values`` (knob name -> new value) lands in the editable ``files``.

    A Hydra group choice is applied first (an outer group before the groups its option files
    hold), and every other value then goes to the file that choice selects: ``{"optim": "sgd",
    "optim.lr": 0.1}`` rewrites ``optim: adam`` in the defaults list and ``lr`` in
    ``optim/sgd.yaml``, the file the run will load, not ``adam.yaml``. A value for a knob the
    newly selected file lacks (``optim.betas`` once SGD is chosen) is left out: there is nothing
    it could set. Raises :class:`UserError` as :func:`set_knobs` does.
    """
    found = find_all_knobs(files, command)
    knobs = {k.name: k for k in found.knobs}
    _check(knobs, values, "the editable files")
    current, splices, changes = dict(files), {}, []
    pending = [name for name in values if knobs[name].source == HYDRA_SOURCE]
    while pending:
        waiting = set(pending)
        ready = [
            n
            for n in pending
            if n in knobs and not any(g in waiting for g, _ in found.selected_by.get(n, ()) if g != n)
        ]
        changes += [_change(knobs[name], values[name], files, splices) for name in ready]
        for knob in sorted((knobs[n] for n in ready), key=lambda k: k.start, reverse=True):
            text = format_value(knob.text, values[knob.name], _group_syntax(knob))
            current[knob.path] = current[knob.path][: knob.start] + text + current[knob.path][knob.end :]
            splices.setdefault(knob.path, []).append((knob.start, knob.end - knob.start, len(text)))
        pending = [n for n in pending if n not in ready and n in knobs] if ready else []
        found = find_all_knobs(current, command)
        knobs = {k.name: k for k in found.knobs}
    rest = {name: value for name, value in values.items() if name not in {c.knob.name for c in changes}}
    if changes:  # after a switch: what the new file lacks, or already holds, is no edit
        rest = {n: v for n, v in rest.items() if n in knobs and not _holds(knobs[n], v)}
    _check(knobs, rest, "the editable files")
    changes += [_change(knobs[name], value, files, splices) for name, value in rest.items()]
    return changes


def _group_syntax(knob: Knob) -> str:
    """How a Hydra group's option is written: a YAML scalar in a defaults list, a Python string
    in a structured config's (``{"optim": "adam"}``)."""
    return "python" if knob.path.endswith(".py") else "yaml"


def _holds(knob: Knob, value: KnobValue) -> bool:
    return knob.value == value and isinstance(knob.value, bool) == isinstance(value, bool)


def _change(
    knob: Knob, value: KnobValue, files: dict[str, str], splices: dict[str, list[tuple[int, int, int]]]
) -> KnobChange:
    """The change of ``knob`` (found after the ``splices`` made so far), located in ``files``."""
    syntax = _group_syntax(knob) if knob.source == HYDRA_SOURCE else knob.syntax
    text = format_value(knob.text, value, syntax)
    start, end = knob.start, knob.end
    for at, old, new in reversed(splices.get(knob.path, [])):
        if start >= at + new:
            start, end = start - new + old, end - new + old
    if (start, end) != (knob.start, knob.end):
        source = files[knob.path]
        line, end_line = source.count("\n", 0, start) + 1, source.count("\n", 0, end) + 1
        col = start - (source.rfind("\n", 0, start) + 1)
        end_col = end - (source.rfind("\n", 0, end) + 1)
        knob = dataclasses.replace(
            knob, start=start, end=end, line=line, col=col, end_line=end_line, end_col=end_col
        )
    return KnobChange(knob, value, text)


def apply_changes(files: dict[str, str], changes: list[KnobChange]) -> dict[str, str]:
    """The new text of every file ``changes`` touch (each literal replaced, nothing else)."""
    out: dict[str, str] = {}
    for change in sorted(changes, key=lambda c: c.knob.start, reverse=True):
        path = change.knob.path
        text = out.get(path, files[path])
        out[path] = text[: change.knob.start] + change.text + text[change.knob.end :]
    return out


def set_all_knobs(files: dict[str, str], values: dict[str, KnobValue], command: str = "") -> dict[str, str]:
    """The new text of every editable file that setting ``values`` changes (see :func:`plan_changes`)."""
    return apply_changes(files, plan_changes(files, values, command))
