"""Knobs of a Hydra (OmegaConf) config tree: the group choices, and the values Hydra composes.

A Hydra app keeps its settings in a folder of YAML files: a primary config whose ``defaults:``
list picks one option file from each config group (``optim: adam`` loads ``optim/adam.yaml``
and places it at ``cfg.optim``), and group folders beside it. Read file by file, that tree
misleads a search: ``optim/sgd.yaml`` and ``optim/adam.yaml`` both define ``lr``, but only the
selected file is ever loaded, so edits to the other one are runs that change nothing; and the
choice of the optimizer itself, the most useful knob of all, is not a scalar of any file.

So a Hydra tree is read as Hydra composes it (:func:`hydra_layouts`):

- each ``group: option`` entry of a defaults list is a knob named as Hydra's command line names
  the group (``optim``, ``model/encoder``, ``db@backup``), whose choices are the option files in
  that group's folder (``optim/*.yaml``, relative to the including config's folder) and whose
  literal is the option in the defaults list, rewritten in place;
- only the *selected* option file of each group gives knobs, named by the package Hydra places
  it at (``optim.lr`` whichever optimizer is selected: the name the script reads, ``cfg.optim.lr``,
  and one that stays put when the selection changes); the other option files give none;
- when two configs of the composition set the same value, the one Hydra merges last (the order
  of the defaults list, ``_self_`` where it is written, at the end when it is not) owns the name:
  editing the one it overrides would change nothing.

Supported: nested groups (``model/encoder: small``, and ``encoder: small`` in ``model/mlp.yaml``),
``group@package: option``, ``# @package`` headers (``_global_``, ``_group_``, ``_name_``),
``optional``, ``override`` (the override's literal is the knob: it is the one that decides),
``_self_``, plain config entries (``- base``, ``- db/mysql``), and a run command's own group
overrides (``optim=sgd``, ``+group=option``, ``~group``: the command's selection is what runs).
Skipped without a knob: mandatory options (``???``), ``null``, lists of options, interpolated
options, groups of Hydra's own (``hydra/...``), values ``???`` and ``${...}``, and the ``hydra:``
section of a config (the app's runtime, not its method). A ``.yml`` file is a config only where
a defaults list names it with its suffix (``- optim: adam.yml``), as Hydra loads it (below
``version_base="1.2"``; a bare ``adam`` always means ``adam.yaml``).
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from dataclasses import dataclass, field

from nightlab.code.knobs.command import command_words
from nightlab.code.knobs.files import scalar_end, scalar_knob, yaml_knobs
from nightlab.code.knobs.model import Knob

__all__ = ["HYDRA_SOURCE", "Layout", "hydra_layouts"]

# Knob.source of a defaults-list entry: its literal is a YAML scalar, but it names a file.
HYDRA_SOURCE = "hydra"
_HEADER = re.compile(r"^#\s*@package\s+(\S+)\s*$")
_PATH = r"/?[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*"
_GROUP_KEY = re.compile(rf"^(?:(optional|override)\s+)?({_PATH})(?:@([A-Za-z0-9_.]*))?$")
_CONFIG = re.compile(rf"^({_PATH})(?:@([A-Za-z0-9_.]*))?$")
_OPTION = re.compile(r"^[A-Za-z0-9_.\-]+$")  # a plain option name: not ???, ${...} or a path
_COMMAND = re.compile(rf"^(\+{{0,2}}|~)({_PATH}(?:@[A-Za-z0-9_.]*)?)(?:=(.*))?$")
# A chain of group choices that put a file in the composition: ((group knob, option), ...).
Chain = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Default:
    """One entry of a defaults list, as written."""

    kind: str  # "self" | "config" | "group"
    target: str = ""  # the group (group entries) or the config path (config entries)
    option: str = ""  # the selected option of a group entry
    package: str | None = None  # "@package" as written
    modifier: str = ""  # "" | "optional" | "override"
    knob: Knob | None = None  # the option's literal, for a group entry with a plain option


@dataclass
class Layout:
    """One Hydra app: its primary config, the knobs of its composition and the files it reads.

    ``selected_by`` names, for a knob that comes from a group's option file, the group choices
    that selected the file: the knob's value means something else once one of them changes.
    ``files`` are the YAML files the layout accounts for (the primary, its group folders): their
    knobs are these, never their own file's.
    """

    primary: str
    knobs: dict[str, Knob] = field(default_factory=dict)
    selected_by: dict[str, Chain] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)


def hydra_layouts(files: dict[str, str], command: str = "") -> list[Layout]:
    """The Hydra apps among ``files`` (path -> text), read as Hydra composes them.

    A primary config is a ``.yaml`` file with a top-level ``defaults:`` list of which at least one
    entry names a file present in ``files``, and that no other primary includes; a file inside
    the folder of a primary already found is one of its configs, not another primary. ``command`` is the run command: its Hydra group
    overrides select options as they would at run time. Files of no layout are plain YAML.
    """
    yaml_paths = sorted((p for p in files if p.endswith((".yaml", ".yml"))), key=lambda p: (p.count("/"), p))
    layouts: list[Layout] = []
    for path in yaml_paths:
        root = posixpath.dirname(path)
        if any(_inside(path, posixpath.dirname(lay.primary)) for lay in layouts):
            continue
        defaults = _defaults(files[path], path)
        if defaults and any(_resolves(d, root, files) for d in defaults):
            layouts.append(_Composer(files, root, path, command).compose())
    # A config another one includes (``- base``) is part of that app, not an app of its own.
    return [lay for lay in layouts if not any(lay.primary in o.files for o in layouts if o is not lay)]


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies in a subfolder of ``folder`` (not directly in it)."""
    rest = path[len(folder) + 1 :] if folder else path
    return (not folder or path.startswith(folder + "/")) and "/" in rest


def _resolves(entry: _Default, root: str, files: dict[str, str]) -> bool:
    if entry.kind == "config":
        return _file(posixpath.join(root, entry.target.lstrip("/"))) in files
    return entry.kind == "group" and bool(_options(files, posixpath.join(root, entry.target.lstrip("/"))))


def _options(files: dict[str, str], folder: str) -> tuple[str, ...]:
    """The option names of a group folder as a defaults list names them, sorted: a ``.yaml``
    file's stem (``adam``), a ``.yml`` file's whole name (``adam.yml``, see :func:`_file`)."""
    prefix = folder.rstrip("/") + "/"
    found = {p[len(prefix) : -len(".yaml")] for p in files if p.startswith(prefix) and p.endswith(".yaml")}
    found |= {p[len(prefix) :] for p in files if p.startswith(prefix) and p.endswith(".yml")}
    return tuple(sorted(name for name in found if "/" not in name))


def _file(name: str) -> str:
    """The file Hydra loads for a config name: ``name.yaml``, or the name itself when it ends in
    ``.yaml`` or ``.yml``. Hydra never looks for ``adam.yml`` when a defaults list says ``adam``;
    it loads it (with a deprecation warning, and only under a ``version_base`` below 1.2) when
    the list says ``adam.yml``."""
    return name if name.endswith((".yaml", ".yml")) else name + ".yaml"


def _defaults(text: str, path: str) -> list[_Default] | None:
    """The defaults list of a config, entries it cannot read left out; None when it has none."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML().load(text)
    except YAMLError:
        return None  # reading the file as plain YAML reports the error
    if not isinstance(data, CommentedMap) or not isinstance(data.get("defaults"), CommentedSeq):
        return None
    seq = data["defaults"]
    flow = bool(seq.fa.flow_style())
    offsets = _line_starts(text)
    out: list[_Default] = []
    for item in seq:
        if item == "_self_":
            out.append(_Default("self"))
        elif isinstance(item, str) and (match := _CONFIG.match(item)):
            out.append(_Default("config", target=match.group(1), package=match.group(2)))
        elif isinstance(item, CommentedMap) and len(item) == 1:
            key, value = next(iter(item.items()))
            match = _GROUP_KEY.match(str(key))
            if not match:
                continue
            entry = _Default(
                "group", target=match.group(2), package=match.group(3), modifier=match.group(1) or ""
            )
            if isinstance(value, str) and _OPTION.match(value):
                line, col = item.lc.value(key)
                start = offsets[line] + col
                end = scalar_end(text, start, flow or bool(item.fa.flow_style()))
                knob = scalar_knob(str(key), str(value), text, start, end, path, HYDRA_SOURCE)
                entry = dataclasses.replace(entry, option=str(value), knob=knob)
            out.append(entry)  # with no option: ???, null, a list or an interpolation
    return out


def _line_starts(text: str) -> list[int]:
    starts, total = [], 0
    for line in text.splitlines(keepends=True) or [""]:
        starts.append(total)
        total += len(line)
    return [*starts, total]


def _header(text: str) -> str | None:
    """The ``# @package`` directive at the top of a config file, if any."""
    for line in text.splitlines():
        if match := _HEADER.match(line.strip()):
            return match.group(1)
        if line.strip() and not line.lstrip().startswith("#"):
            return None
    return None


def _join(parent: str, child: str) -> str:
    """``child`` placed under ``parent``; a ``_global_`` anywhere restarts at the top."""
    joined = ".".join(part for part in (parent, child) if part)
    at = joined.rfind("_global_")
    return joined if at < 0 else joined[at + len("_global_") :].lstrip(".")


def _substitute(package: str, group: str, name: str) -> str:
    parts = [
        group.replace("/", ".") if p == "_group_" else name if p == "_name_" else p
        for p in package.split(".")
    ]
    return ".".join(part for part in parts if part)


class _Composer:
    """Walks one app's defaults lists depth first, in the order Hydra merges them."""

    def __init__(self, files: dict[str, str], root: str, primary: str, command: str) -> None:
        self.files, self.root = files, root
        self.layout = Layout(primary=primary, files={primary})
        self.groups: dict[str, Knob] = {}
        self.values: dict[str, Knob] = {}
        self.spans: dict[tuple[str, int], set[str]] = {}  # a literal -> the names it was read as
        self.stack: list[str] = []
        self.seen: set[str] = set()  # the groups already composed
        self.chosen, self.removed, self.added = _command_choices(command)
        for path in files:  # every file that declares a package is a config of the tree
            if path.endswith((".yaml", ".yml")) and _inside(path, root) and _header(files[path]) is not None:
                self.layout.files.add(path)

    def compose(self) -> Layout:
        extra = [_Default("group", target=k.split("@")[0], option=v, package=_pkg(k)) for k, v in self.added]
        self._visit(self.layout.primary, "", "", (), {}, extra)
        # A config placed twice (``model@a: mlp`` and ``model@b: mlp``) has one literal for two
        # names: an edit meant for one would move both, so neither is a knob.
        shared = {name for names in self.spans.values() if len(names) > 1 for name in names}
        values = {k: v for k, v in self.values.items() if k not in self.groups and k not in shared}
        self.layout.knobs = {**self.groups, **values}
        return self.layout

    def _visit(
        self,
        path: str,
        package: str,
        group: str,
        chain: Chain,
        overrides: dict[str, _Default],
        extra: list[_Default] | None = None,
    ) -> None:
        if path in self.stack:
            return  # a config that includes itself: Hydra refuses it, and so does nothing here
        self.stack.append(path)
        self.layout.files.add(path)
        entries = [*(_defaults(self.files[path], path) or []), *(extra or [])]
        overrides = dict(overrides)
        for entry in entries:  # an including config's override wins over its configs' own
            if entry.kind == "group" and entry.modifier == "override":
                overrides.setdefault(self._key(entry, group), entry)
        if not any(e.kind == "self" for e in entries):
            entries.append(_Default("self"))
        for entry in entries:
            if entry.kind == "self":
                self._emit(path, package, chain)
            elif entry.kind == "config":
                self._config(entry, package, group, chain, overrides)
            elif entry.modifier != "override":
                self._group(entry, package, group, chain, overrides)
        self.stack.pop()

    def _key(self, entry: _Default, group: str) -> str:
        """How Hydra's command line names the group of ``entry``: its absolute path, @package."""
        target = _absolute(entry.target, group)
        return target if entry.package is None else f"{target}@{entry.package}"

    def _config(self, entry: _Default, package: str, group: str, chain: Chain, overrides: dict) -> None:
        target = _absolute(entry.target, group)
        path = _file(posixpath.join(self.root, target))
        if path not in self.files:
            return
        folder, name = posixpath.split(target)
        self._visit(path, self._package(entry, package, folder, name, path), folder, chain, overrides)

    def _group(self, entry: _Default, package: str, group: str, chain: Chain, overrides: dict) -> None:
        key = self._key(entry, group)
        target = key.split("@")[0]
        folder = posixpath.join(self.root, target)
        options = _options(self.files, folder)
        self.layout.files.update(_file(f"{folder}/{name}") for name in options)
        if key in self.removed or key in self.seen or target.split("/")[0] == "hydra":
            return  # removed by the command, appended by it but already listed, or Hydra's own
        self.seen.add(key)
        decisive = overrides.get(key, entry)
        option = self.chosen.get(key, decisive.option)
        plain = key not in self.chosen or re.fullmatch(r"\w+", key)  # the command's is pinned by name
        if decisive.knob is not None and options and plain:
            knob = dataclasses.replace(decisive.knob, name=key, choices=options)
            self.groups[key] = knob
            if chain:
                self.layout.selected_by[key] = chain
        path = _file(f"{folder}/{option}")
        if not option or path not in self.files:
            return  # a mandatory or null option, or a file not among the editable ones
        package = self._package(entry, package, target, option, path)
        self._visit(path, package, target, (*chain, (key, option)), overrides)

    def _package(self, entry: _Default, parent: str, group: str, name: str, path: str) -> str:
        """Where Hydra places a config: the defaults list's @package (relative to the including
        config's package), else the file's ``# @package`` header (absolute), else its group."""
        if entry.package is not None:
            return _join(parent, _substitute(entry.package, group, name))
        header = _header(self.files[path])
        if header is not None:
            return _join("", _substitute(header, group, name))
        if entry.target.startswith("/"):
            return group.replace("/", ".")
        relative = entry.target.split("@")[0]
        relative = relative if entry.kind == "group" else posixpath.dirname(relative)
        return _join(parent, relative.replace("/", "."))

    def _emit(self, path: str, package: str, chain: Chain) -> None:
        """This config's own values, at its package; a later config overrides an earlier one."""
        for knob in yaml_knobs(self.files[path], path):
            name = _join(package, knob.name)
            value = knob.value
            if knob.name == "defaults" or name == "hydra" or name.startswith("hydra."):
                continue
            if value == "???" or (isinstance(value, str) and "${" in value):
                continue
            self.values[name] = dataclasses.replace(knob, name=name)
            self.spans.setdefault((path, knob.start), set()).add(name)
            if chain:
                self.layout.selected_by[name] = chain
            else:
                self.layout.selected_by.pop(name, None)


def _absolute(target: str, group: str) -> str:
    """A group or config path as written, relative to the including config's group unless it
    starts with ``/``."""
    if target.startswith("/"):
        return target.lstrip("/")
    return posixpath.join(group, target) if group else target


def _pkg(key: str) -> str | None:
    return key.split("@", 1)[1] if "@" in key else None


def _command_choices(command: str) -> tuple[dict[str, str], set[str], list[tuple[str, str]]]:
    """The run command's group overrides: ``{group: option}`` it selects, the groups it removes
    (``~group``), and the ones it appends (``+group=option``). A word such as ``optim.lr=0.1``
    names a value, not a group; it is told apart later, since no group folder bears its name."""
    chosen: dict[str, str] = {}
    removed: set[str] = set()
    added: list[tuple[str, str]] = []
    for word in command_words(command):
        match = _COMMAND.match(word)
        if not match or "." in match.group(2).split("@")[0]:
            continue
        prefix, key, option = match.groups()
        if prefix == "~":
            removed.add(key)
        elif option is not None and _OPTION.match(option):
            chosen[key] = option
            if prefix.startswith("+"):
                added.append((key, option))
    return chosen, removed, added
