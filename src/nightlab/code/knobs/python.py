"""Knobs in Python files: where people keep the settings of a training script.

- ``constant``: a top-level assignment of a literal to an UPPER_CASE name, anywhere in the file
  (``MATRIX_LR = 0.04``), the autoresearch style;
- ``setting``: a lowercase top-level assignment of a literal in the file's leading block of
  settings: after the docstring and imports, up to the first statement that is neither an
  import nor an assignment (``batch_size = 12`` ... ``exec(open("configurator.py").read())``).
  A config file that is only assignments is all settings. Later lowercase assignments
  (``iter_num = 0`` in the middle of a script) are state, not settings, unless bound once and
  handed to a call (Keras's ``batch_size = 128`` then ``model.fit(batch_size=batch_size)``);
- ``argparse``/``click``: the ``default=`` literal of ``parser.add_argument("--lr", ...)`` or
  ``@click.option("--lr", ...)``, named after the option (``dest=`` when given);
- ``dataclass``: the default of a field of a ``@dataclass`` class (``lr: float = 3e-4``,
  ``field(default=3e-4)``, a list ``field(default_factory=lambda: [64, 64])``) that no call
  building the class passes, in this file or another editable one (:mod:`.callers`; a loaded
  config spread into it, ``Config(**yaml.safe_load(f))``, passes the config's keys); a class stored in a Hydra ``ConfigStore`` names its fields where
  Hydra places them, and a group option the run does not select gives none (:mod:`.structured`);
- ``class``: an attribute of a top-level class named as settings (``class CFG: lr = 1e-3``,
  ``class TrainConfig(BaseModel)``), the Kaggle and pydantic style; enums are data, not settings;
- ``dict``: an entry of a top-level dict named as settings (``config = dict(lr=3e-4)``,
  ``HPARAMS = {"optim": {"lr": 3e-4}}`` gives ``optim.lr``), the wandb style, or of a namespace
  (``args = argparse.Namespace(lr=3e-3)``), also under ``if __name__ == "__main__":``; of a merge
  (``{**defaults, "lr": 1e-2}``) only the entries that apply (:mod:`.mappings`);
- ``env``: the default of ``os.environ.get("LR", 3e-4)``/``os.getenv(...)`` assigned to a
  constant or setting, also inside a cast (``float(...)``): it applies whenever the variable is
  unset, as it is in a run unless the run command sets it. Variables the harness or a launcher
  sets (``NIGHTLAB_*``, ``OMP_*``, ``RANK``, ...) are not knobs: their defaults never apply;
- ``argv``: the fallback of ``float(sys.argv[1]) if len(sys.argv) > 1 else 3e-4`` at module
  level, unless the run command gives the script that many arguments.

The literal arguments of calls to well-known training APIs (``torch.optim.AdamW(params,
lr=3e-4)``, ``nn.Dropout(0.1)``) are read last, by :mod:`.calls`.

The values a script declares an option may take travel with the knob as its ``choices``
(:mod:`.choices`): argparse ``choices=[...]``, click ``type=click.Choice([...])``, a field
annotated ``Literal["sgd", "adam"]``, a bracketed list in an option's ``help=``
(``Choose between ["linear", "cosine"]``). The author wrote them down, so they are the space to search.

A name found twice keeps its first place; the later one is qualified (``TrainConfig.lr`` for a
field, ``--lr`` for an option), so every knob has one literal and an edit means one thing.
"""

from __future__ import annotations

import ast
import math
import re

from nightlab.code.knobs.absl import absl_flag, config_dict_knobs
from nightlab.code.knobs.attrs import attribute_knobs
from nightlab.code.knobs.callers import Callers, FileIndex, passed_by
from nightlab.code.knobs.calls import call_knobs
from nightlab.code.knobs.choices import annotated_choices, help_choices, listed_choices
from nightlab.code.knobs.entry import click_parameter, entry_knobs
from nightlab.code.knobs.envdefault import argv_default, env_default
from nightlab.code.knobs.hydra import HYDRA_SOURCE
from nightlab.code.knobs.literal import KnobValue, literal
from nightlab.code.knobs.loaded import loaded_sources, without_loaded_spread
from nightlab.code.knobs.locals import local_knobs
from nightlab.code.knobs.mappings import SettingsDicts, built_settings, function_settings, user_classes
from nightlab.code.knobs.model import Knob
from nightlab.code.knobs.reader import (
    Reader,
    as_annotated,
    call_name,
    is_field_module,
    keyword,
    main_block,
    simple_assignment,
    string_args,
)
from nightlab.code.knobs.signatures import signature_knobs
from nightlab.code.knobs.structured import Found, Placement, placements
from nightlab.errors import UserError

_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SETTING = re.compile(r"^[a-z][a-z0-9_]*$")


def python_knobs(
    source: str,
    path: str,
    command: str = "",
    others: dict[str, FileIndex] | None = None,
    stored: Found | None = None,
) -> list[Knob]:
    """Every knob of a Python file, in file order.

    ``command`` is the run command and ``others`` the other editable Python files (indexed): a
    class of this file built there passes some of its defaults, which are then no knobs.
    ``stored`` is where a Hydra ConfigStore of those files places this file's dataclasses
    (:func:`~.structured.placements`); read from this file alone when not given."""
    try:
        mine = (others or {}).get(path)  # parsed already when the editable files are read together
        tree = mine.tree if mine is not None else ast.parse(source, filename=path)
    except SyntaxError as exc:
        line = exc.lineno or (source.count("\n", 0, source.find("\0")) + 1 if "\0" in source else "?")
        raise UserError(f"{path}: not valid Python ({exc.msg}, line {line}); fix the file") from None
    reader = Reader(source, path, command, Callers(path, others) if others else None)
    # Hydra structured configs: placed across the editable files when they are read together.
    placed, group_choices = (
        stored if stored is not None else placements({path: tree}, command).get(path, ({}, []))
    )
    local: dict[str, list[ast.Call]] = {}  # the file's own calls of a plain name: TrainConfig(...)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            local.setdefault(node.func.id, []).append(node)
    settings = _leading_block(tree.body) | _passed_settings(tree)
    mappings = SettingsDicts(reader)
    for stmt in tree.body + main_block(tree.body):
        mappings.override(stmt)  # config["lr"] = 1e-2, config.update(lr=1e-2)
        name, value = simple_assignment(stmt)
        if name is None or value is None:
            continue
        if stmt not in tree.body:  # under `if __name__ == "__main__":`, only a settings mapping
            mappings.read(name, value, stmt, _is_config_name(name))
            continue
        reader.names[name] = value  # what a choice list or a Literal alias may refer to
        kind = "constant" if _CONSTANT.match(name) else None
        if kind is None and stmt in settings and _SETTING.match(name) and not name.startswith("_"):
            kind = "setting"
        if kind is not None:
            default, outside = env_default(value), "env"
            if default is None:  # lr = float(sys.argv[1]) if len(sys.argv) > 1 else 3e-4
                default, outside = argv_default(value, reader.command, path), "argv"
            if default is not None:  # LR = float(os.environ.get("LR", 3e-4))
                reader.add(name, default, stmt, outside, replace=True)
            else:
                reader.add(name, value, stmt, kind, replace=True)
        # config = dict(lr=3e-4, ...), CONFIG = {"lr": 3e-4}, cfg = {**defaults, "lr": 1e-2}
        mappings.read(name, value, stmt, _is_config_name(name))
    function_settings(reader, tree, _is_config_name, mappings)  # def get_config(): return {"lr": 1e-3}
    # In file order, so the first of two knobs with one name keeps the plain name.
    nodes = sorted(
        (n for n in ast.walk(tree) if isinstance(n, (ast.Call, ast.ClassDef))),
        key=lambda n: (n.lineno, n.col_offset),
    )
    overrides = _set_defaults(tree)
    for node in nodes:
        if isinstance(node, ast.Call):
            _option(reader, node, overrides)
            absl_flag(reader, node)
        elif any(_is_dataclass(d) for d in node.decorator_list) or is_field_module(node):  # flax nn.Module
            place = placed.get(node.name) if node in tree.body else None
            if place is None or place.prefix is not None:  # None: an option the run does not select
                _fields(reader, node, "dataclass", _builders(reader, node, tree, local), place)
        elif node in tree.body and _is_config_name(node.name) and not _is_enum(node):
            # class CFG: lr = 1e-3 (a namespace of settings)
            _fields(reader, node, "class", _builders(reader, node, tree, local))
    for choice in group_choices:  # defaults: [{"optim": "adam"}]: the group's choice
        reader.add(choice.group, choice.node, choice.stmt, HYDRA_SOURCE, choices=choice.options)
    config_dict_knobs(reader, tree)  # def get_config(): config = ConfigDict(); config.lr = 0.05
    entry_knobs(reader, tree)  # fire.Fire(main), @app.command(), main() under __main__
    local_knobs(reader, tree)  # def main(): lr = 1e-3 ... (the settings block main opens with)
    signature_knobs(reader, tree)  # jsonargparse: parser.add_class_arguments(Optim, "optim")
    known = call_knobs(reader, tree)  # torch.optim.AdamW(params, lr=3e-4), nn.Dropout(0.1), ...
    classes = user_classes(
        tree, path, others
    )  # cfg = Config(lr=3e-4), MLP(16, hidden=128): values that apply
    built_settings(reader, tree, _is_config_name, known, classes)
    attribute_knobs(reader, tree, _is_config_name)  # cfg = Config(); cfg.lr = 3e-4; args.lr = 1e-3
    return sorted(reader.found.values(), key=lambda k: k.start)


def _leading_block(body: list[ast.stmt]) -> set[ast.stmt]:
    """The statements of the leading settings block (see the module docstring)."""
    block: set[ast.stmt] = set()
    for i, stmt in enumerate(body):
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # the module docstring
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or _quiet_setup(stmt):
            continue
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            block.add(stmt)
            continue
        break
    return block


# Calls that set up logging or warnings before a script's settings (sentence-transformers' and
# Hugging Face's examples open with logging.basicConfig(...)): they bind no setting, so the block
# reads on past them; any other statement (exec(...) of a configurator) still ends it.
_QUIET_SETUP = frozenset({"basicConfig", "filterwarnings", "simplefilter", "set_verbosity_error", "setLevel"})


def _quiet_setup(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and call_name(stmt.value) in _QUIET_SETUP
    )


def _passed_settings(tree: ast.Module) -> set[ast.stmt]:
    """Top-level assignments after the leading block that are settings all the same: a name
    bound once in the whole file and handed to a call (the Keras MNIST example's ``batch_size =
    128`` after the model, then ``model.fit(..., batch_size=batch_size)``). A name bound again
    (``iter_num = 0`` then ``iter_num += 1``) is state."""
    stores: dict[str, int] = {}
    passed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            stores[node.id] = stores.get(node.id, 0) + 1
        elif isinstance(node, ast.Global):
            stores.update({name: 2 for name in node.names})
        elif isinstance(node, ast.Call):
            args = [*node.args, *(k.value for k in node.keywords)]
            passed.update(a.id for a in args if isinstance(a, ast.Name))
    return {
        stmt
        for stmt in tree.body
        if isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
        and stores.get(stmt.targets[0].id) == 1
        and stmt.targets[0].id in passed
    }


def _set_defaults(tree: ast.Module) -> dict[str, ast.expr]:
    """The literal keywords of argparse's ``parser.set_defaults(lr=1e-3)``: they win over the
    ``default=`` of ``add_argument("--lr", ...)``, which is then dead."""
    found: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and call_name(node) == "set_defaults":
            found.update({k.arg: k.value for k in node.keywords if k.arg is not None})
    return found


def _option(reader: Reader, call: ast.Call, overrides: dict[str, ast.expr] | None = None) -> None:
    """``add_argument("--lr", default=...)`` or ``click.option("--lr", default=...)``; for
    argparse, a ``set_defaults(lr=...)`` of the same name (``overrides``) is the value that
    applies, so its literal is the knob."""
    name = call_name(call)
    if name not in ("add_argument", "option"):
        return
    default = keyword(call, "default")
    if default is None and name == "option":
        return
    source = "argparse" if name == "add_argument" else "click"
    if source == "click":  # "--use-bn/--no-use-bn" is two spellings of one option `use_bn`
        knob, spellings = click_parameter(string_args(call))
        flags = list(spellings)
    else:
        flags = string_args(call)
        knob = None
    dest = keyword(call, "dest")
    long = next((f for f in flags if f.startswith("--")), None)
    if isinstance(dest, ast.Constant) and isinstance(dest.value, str):
        knob = dest.value
    elif knob is None and long is not None:
        knob = long[2:].replace("-", "_")
    if knob is None:
        return  # a positional argument or a short flag only: no name a person would search
    if source == "argparse" and knob in (overrides or {}):
        default = (overrides or {})[knob]  # parser.set_defaults(lr=1e-3) wins over default=
    if default is None:
        return
    choices = keyword(call, "choices")
    kind = keyword(call, "type")
    default = _typed_default(env_default(default) or default, kind)  # default=os.getenv("LR", "3e-4")
    if choices is None and isinstance(kind, ast.Call) and call_name(kind) == "Choice" and kind.args:
        choices = kind.args[0]  # click.Choice(["relu", "tanh"])
    listed = listed_choices(choices, reader.names)
    described = keyword(call, "help")
    if not listed and isinstance(described, ast.Constant) and isinstance(described.value, str):
        parsed = literal(default)  # help='... Choose between ["linear", "cosine"]'
        listed = help_choices(parsed[1], described.value) if parsed else ()
    reader.add(knob, default, call, source, qualified=long, choices=listed, flags=tuple(flags))


def _typed_default(default: ast.expr, kind: ast.expr | None) -> ast.expr:
    """argparse converts a string default with the option's ``type``: ``type=float,
    default="3e-4"`` is the number 3e-4, read at the same span (a new value is written as a
    string again, which the option's type converts the same way)."""
    if not (isinstance(kind, ast.Name) and kind.id in ("int", "float")):
        return default
    if not (isinstance(default, ast.Constant) and isinstance(default.value, str)):
        return as_annotated(default, kind)  # type=float, default=0: the float 0.0
    try:
        number = int(default.value) if kind.id == "int" else float(default.value)
    except ValueError:
        return default
    return ast.copy_location(ast.Constant(value=number), default) if math.isfinite(number) else default


def _builders(
    reader: Reader, cls: ast.ClassDef, tree: ast.Module, local: dict[str, list[ast.Call]]
) -> list[ast.Call]:
    """The calls that build a top-level class, in this file and in the other editable ones."""
    if cls not in tree.body:
        return []
    calls = list(local.get(cls.name, []))
    calls += reader.callers.calls(cls.name)[0] if reader.callers is not None else []
    names = set(loaded_sources(tree))  # Config(**yaml.safe_load(f)): what the config sets is read there
    return [without_loaded_spread(call, names) for call in calls]


def _fields(
    reader: Reader, cls: ast.ClassDef, source: str, calls: list[ast.Call], place: Placement | None = None
) -> None:
    """The fields' defaults, but those a call that builds the class passes (``calls``, in this
    file or another editable one: ``TrainConfig(noise=0.2)``), and none when such a call's
    arguments cannot be read (``TrainConfig(**overrides)``): those defaults never apply. A class
    a Hydra ConfigStore places (``place``) names its fields as Hydra does (``optim.lr``)."""
    passed = passed_by(calls, _init_fields(cls))
    if passed is None:
        return
    prefix = place.prefix or "" if place is not None else ""
    chain = place.selected_by if place is not None else ()
    for stmt in cls.body:
        name, value = simple_assignment(stmt)
        if name is None or value is None or name.startswith("_") or name in passed:
            continue
        listed: tuple[KnobValue, ...] = ()
        if isinstance(value, ast.Call) and call_name(value) == "field":
            # HfArgumentParser's way: field(default="linear", metadata={"choices": [...]})
            listed = _metadata_choices(keyword(value, "metadata"), reader.names)
            factory = keyword(value, "default_factory")
            value = keyword(value, "default")
            if value is None and isinstance(factory, ast.Lambda):
                value = factory.body  # field(default_factory=lambda: [64, 64]): a list of numbers
            if value is None:
                continue
        value = env_default(value) or value  # lr: float = float(os.environ.get("LR", 3e-4))
        annotation = stmt.annotation if isinstance(stmt, ast.AnnAssign) else None
        value = as_annotated(value, annotation)  # weight_decay: float = 0
        allowed = annotated_choices(annotation, reader.names) or listed
        qualified = f"{cls.name}.{name}"
        reader.add(
            prefix + name, value, stmt, source, qualified=qualified, choices=allowed, selected_by=chain
        )


def _init_fields(cls: ast.ClassDef) -> list[str]:
    """The fields a dataclass's ``__init__`` takes by position, in order: annotated class
    attributes, but ``ClassVar`` ones and ``field(init=False)``."""
    names: list[str] = []
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(stmt.annotation):
            continue
        init = keyword(stmt.value, "init") if isinstance(stmt.value, ast.Call) else None
        if isinstance(init, ast.Constant) and init.value is False:
            continue
        names.append(stmt.target.id)
    return names


def _metadata_choices(metadata: ast.expr | None, names: dict[str, ast.expr]) -> tuple[KnobValue, ...]:
    """The ``"choices"`` list of a field's ``metadata={...}`` (as transformers' argument
    dataclasses declare them, and as ``HfArgumentParser`` passes them on to argparse)."""
    if isinstance(metadata, ast.Dict):
        for key, value in zip(metadata.keys, metadata.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "choices":
                return listed_choices(value, names)
    elif isinstance(metadata, ast.Call) and call_name(metadata) == "dict":
        return listed_choices(keyword(metadata, "choices"), names)
    return ()


# Names that say a dict or a class holds settings: `config`, `train_cfg`, `HPARAMS`, `class CFG`,
# `class TrainingArguments`. A dict or class of other names (a lookup table, an enum of
# constants) is not read: its entries are data, not settings.
_CONFIG_WORD = re.compile(
    r"(^|_)(CONFIG|CONFIGS|CFG|CONF|HPARAMS|HYPERPARAMS|HYPERPARAMETERS|HP|PARAMS|ARGS|ARGUMENTS"
    r"|SETTINGS|OPTIONS|OPTS|DEFAULTS)(_|$)"
)


def _is_config_name(name: str) -> bool:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return bool(_CONFIG_WORD.search(spaced.upper()))


def _is_enum(cls: ast.ClassDef) -> bool:
    return any(call_name(base).endswith(("Enum", "Flag")) for base in cls.bases)


def _is_dataclass(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return call_name(target) == "dataclass"
