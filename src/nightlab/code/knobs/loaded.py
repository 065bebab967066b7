"""Values of a config file that the script replaces after loading it, which are then no knobs.

``cfg = yaml.safe_load(open("config.yaml"))`` and then ``cfg["lr"] = 1e-3`` (or ``cfg.optim.lr =
args.lr`` on an OmegaConf config): whatever ``config.yaml`` says of ``lr`` never reaches
training, so an experiment that edits it measures only noise; unless the new value is computed
from what was loaded (``cfg["lr"] = cfg["lr"] * 2``, or through a variable computed so); and
so are the keys the parsed options are merged over (``cfg.update(vars(args))``, a ``store_true``
flag's False included). :func:`overridden_keys` names such keys, per editable config file, from the plain statements (``with`` blocks included) of the
module and of each function of every editable Python file. A literal assigned that way is a knob
of the Python file (:mod:`.attrs`). The other way round, a loaded config made the parser's
defaults (timm's ``parser.set_defaults(**cfg)``) leaves dead the ``default=`` of each option it
sets: :func:`parser_defaults`; and an OmegaConf merge of a loaded config over a structured one
leaves dead the dataclass defaults it sets: :func:`structured_under`.
"""

from __future__ import annotations

import ast

from nightlab.code.knobs.attrs import assigned_path
from nightlab.code.knobs.reader import call_name

_LOADERS = ("safe_load", "load", "full_load", "unsafe_load", "loads")
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def overridden_keys(files: dict[str, str]) -> dict[str, set[str]]:
    """``{config file: {key path, ...}}`` for every key of an editable config file that a
    statement of an editable Python file sets after loading it (``optim`` covers ``optim.lr``)."""
    configs = {path for path in files if path.endswith(_CONFIG_SUFFIXES)}
    out: dict[str, set[str]] = {}
    if not configs:
        return out
    for _path, tree in _python_trees(files, ("",)):
        bodies = [tree.body] + [
            n.body for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        for body in bodies:
            loaded: dict[str, str] = {}
            for stmt, handles in _statements(body, {}):
                _read(stmt, handles, configs, loaded, out)
        for config, keys in _options_merged_over(tree, configs).items():
            out.setdefault(config, set()).update(keys)
    return out


def _options_merged_over(tree: ast.Module, configs: set[str]) -> dict[str, set[str]]:
    """The keys of a loaded config that the parsed options overwrite: ``cfg.update(vars(args))``,
    or ``cfg.update({k: v for k, v in vars(args).items() if v is not None})``, which only an
    option whose default is not None does (a ``store_true`` flag's False always does: the YAML's
    ``amp: true`` never applies). The config is the one the loader opens by name, else every
    editable config file the module names (``default="configs/default.yaml"``)."""
    options: dict[str, bool] = {}  # dest -> whether its default is None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and call_name(node) == "add_argument":
            options.update(_option(node))
    loaded, named = loaded_sources(tree), _named_configs(tree, configs)
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
        ):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id in loaded and len(node.args) == 1):
            continue
        merged, arg = None, node.args[0]
        if _parsed_namespace(arg):
            merged = set(options)
        elif isinstance(arg, ast.DictComp) and len(arg.generators) == 1:
            generator = arg.generators[0]
            items = generator.iter
            if (
                isinstance(items, ast.Call)
                and call_name(items) == "items"
                and isinstance(items.func, ast.Attribute)
            ):
                if _parsed_namespace(items.func.value):
                    skips_none = any("None" in ast.dump(test) for test in generator.ifs)
                    merged = {dest for dest, none in options.items() if not (skips_none and none)}
        if merged:
            for config in {loaded[owner.id]} & configs or named:
                out.setdefault(config, set()).update(merged)
    return out


def _parsed_namespace(node: ast.expr) -> bool:
    """``vars(args)`` or ``args.__dict__``."""
    return (isinstance(node, ast.Call) and call_name(node) == "vars") or (
        isinstance(node, ast.Attribute) and node.attr == "__dict__"
    )


def _option(call: ast.Call) -> dict[str, bool]:
    """``{dest: default is None}`` for ``parser.add_argument("--lr", ...)``; {} for a positional."""
    flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    longs = [f for f in flags if f.startswith("--")]
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    dest = keywords.get("dest")
    name = dest.value if isinstance(dest, ast.Constant) else (longs[0][2:] if longs else "")
    if not isinstance(name, str) or not name:
        return {}
    default, action = keywords.get("default"), keywords.get("action")
    if default is not None:
        none = isinstance(default, ast.Constant) and default.value is None
    else:
        none = not (isinstance(action, ast.Constant) and action.value in ("store_true", "store_false"))
    return {name.replace("-", "_"): none}


def _statements(body: list[ast.stmt], handles: dict[str, str]) -> list[tuple[ast.stmt, dict[str, str]]]:
    """The plain statements of ``body`` (those of ``with`` blocks in place), each with the files
    its ``with open("F") as f`` blocks have open (``{"f": "F"}``)."""
    out: list[tuple[ast.stmt, dict[str, str]]] = []
    for stmt in body:
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            inner = dict(handles)
            for item in stmt.items:
                opened = _opened(item.context_expr)
                if opened and isinstance(item.optional_vars, ast.Name):
                    inner[item.optional_vars.id] = opened
            out += _statements(stmt.body, inner)
        else:
            out.append((stmt, handles))
    return out


def _opened(node: ast.expr) -> str:
    """``F`` for ``open("F", ...)`` or ``Path("F").open()``; "" otherwise."""
    if isinstance(node, ast.Call) and call_name(node) in ("open", "read_text") and node.args[:1]:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _opened(node.func.value)  # Path("config.yaml").open(), .read_text()
    if isinstance(node, ast.Call) and call_name(node) == "Path" and node.args[:1]:
        first = node.args[0]
        return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
    return ""


def _read(
    stmt: ast.stmt,
    handles: dict[str, str],
    configs: set[str],
    loaded: dict[str, str],
    out: dict[str, set[str]],
) -> None:
    if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
        return
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    if len(targets) != 1:
        return
    target = targets[0]
    names = {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)}
    if isinstance(target, ast.Name):
        source = _source(stmt.value, handles)
        if source in configs:
            loaded[target.id] = source
        elif names & set(loaded):  # lr = cfg["lr"] * 2: computed from a loaded file
            loaded[target.id] = ""
        else:
            loaded.pop(target.id, None)  # rebound
        return
    path = assigned_path(target)
    if path is None or len(path) < 2 or not loaded.get(path[0]):
        return
    if not names & set(loaded):  # cfg["lr"] = cfg["lr"] * 2 still reads the file's value
        out.setdefault(loaded[path[0]], set()).add(".".join(path[1:]))


def _source(node: ast.expr, handles: dict[str, str]) -> str:
    """The file a loader call reads: ``yaml.safe_load(f)`` (``f`` an open handle),
    ``json.load(open("F"))``, ``OmegaConf.load("F")``; "" for anything else."""
    if not isinstance(node, ast.Call) or call_name(node) not in _LOADERS or not node.args:
        return ""
    first = node.args[0]
    if isinstance(first, ast.Name):
        return handles.get(first.id, "").removeprefix("./")
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value.removeprefix("./")
    return _opened(first).removeprefix("./")


def parser_defaults(files: dict[str, str]) -> dict[str, set[str]]:
    """``{python file: {config file, ...}}``: the editable config files whose values a Python
    file makes its command-line options' defaults, so that the ``default=`` it spells for a key
    the file sets never applies. timm's train.py: ``cfg = yaml.safe_load(f)`` then
    ``parser.set_defaults(**cfg)``; also ``vars(args).update(cfg)`` and
    ``args.__dict__.update(cfg)``. The config is the one the loader opens by name, else every
    editable config file the Python file names (timm opens ``args_config.config``, whose
    ``default='config.yaml'`` names it)."""
    configs = {path for path in files if path.endswith(_CONFIG_SUFFIXES)}
    out: dict[str, set[str]] = {}
    for path, tree in _python_trees(files, ("set_defaults", "update")) if configs else ():
        loaded, named = loaded_sources(tree), _named_configs(tree, configs)
        for node in ast.walk(tree):
            merged = _merged_into_options(node)
            if merged in loaded:
                out.setdefault(path, set()).update({loaded[merged]} & configs or named)
    return out


def _merged_into_options(node: ast.AST) -> str:
    """The variable whose keys ``node`` makes option values: ``parser.set_defaults(**cfg)``,
    ``vars(args).update(cfg)``, ``args.__dict__.update(cfg)``; "" for anything else."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return ""
    if node.func.attr == "set_defaults":
        spread = [k.value for k in node.keywords if k.arg is None]
        return spread[0].id if len(spread) == 1 and isinstance(spread[0], ast.Name) else ""
    owner = node.func.value
    on_args = (isinstance(owner, ast.Call) and call_name(owner) == "vars") or (
        isinstance(owner, ast.Attribute) and owner.attr == "__dict__"
    )
    if node.func.attr == "update" and on_args and len(node.args) == 1 and isinstance(node.args[0], ast.Name):
        return node.args[0].id
    return ""


def structured_under(files: dict[str, str], before: bool = False) -> dict[str, set[str]]:
    """``{python file: {config file, ...}}``: the editable config files an OmegaConf merge puts
    over a dataclass's defaults (``OmegaConf.merge(OmegaConf.structured(Config),
    OmegaConf.load("config.yaml"))``): a field the file sets has a default that never applies.
    With ``before``, the config files merged under it instead (``merge(OmegaConf.load(...),
    OmegaConf.structured(Config))``): the dataclass's defaults win over the keys they share.
    The config is the one the load names, else every editable config file the module names."""
    configs = {path for path in files if path.endswith(_CONFIG_SUFFIXES)}
    out: dict[str, set[str]] = {}
    for path, tree in _python_trees(files, ("structured",)) if configs else ():
        loaded, named = loaded_sources(tree), _named_configs(tree, configs)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and call_name(node) == "merge"):
                continue
            kinds = [_merged_part(arg, loaded) for arg in node.args]
            if "structured" not in kinds:
                continue
            at = kinds.index("structured") if not before else len(kinds) - kinds[::-1].index("structured")
            parts = list(zip(kinds, node.args, strict=True))
            for part, arg in parts[: at - 1] if before else parts[at + 1 :]:
                if part == "loaded":
                    source = arg if isinstance(arg, ast.Call) else None
                    by_name = (
                        _source(source, {}) if source is not None else loaded.get(getattr(arg, "id", ""), "")
                    )
                    out.setdefault(path, set()).update({by_name} & configs or named)
    return out


def _merged_part(node: ast.expr, loaded: dict[str, str]) -> str:
    """``structured`` for ``OmegaConf.structured(...)``, ``loaded`` for a config loaded from a
    file (a call or a variable holding one); "" for anything else (``OmegaConf.from_cli()``)."""
    if isinstance(node, ast.Call) and call_name(node) == "structured":
        return "structured"
    if (isinstance(node, ast.Call) and call_name(node) in _LOADERS) or (
        isinstance(node, ast.Name) and node.id in loaded
    ):
        return "loaded"
    return ""


def loaded_sources(tree: ast.Module) -> dict[str, str]:
    """``{variable: the file its loader reads}`` for each variable of a module bound to a loaded
    config (``hp = yaml.safe_load(f)``; "" when the loader names no file)."""
    return {
        n.targets[0].id: _source(n.value, {})
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        and len(n.targets) == 1
        and isinstance(n.targets[0], ast.Name)
        and isinstance(n.value, ast.Call)
        and call_name(n.value) in _LOADERS
    }


def _named_configs(tree: ast.Module, configs: set[str]) -> set[str]:
    """The editable config files a module names in a string (``default="configs/base.yaml"``):
    where a loader opens a path computed at run time, these are the files it may read."""
    return {
        n.value.removeprefix("./")
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.removeprefix("./") in configs
    }


def _python_trees(files: dict[str, str], needles: tuple[str, ...]) -> list[tuple[str, ast.Module]]:
    """``(path, tree)`` of each Python file that spells one of ``needles`` and parses (a file too
    deeply nested for the parser is skipped: its reader reports it)."""
    out: list[tuple[str, ast.Module]] = []
    for path, text in files.items():
        if not path.endswith(".py") or not any(needle in text for needle in needles):
            continue
        try:
            out.append((path, ast.parse(text)))
        except (SyntaxError, RecursionError):
            continue
    return out


def _is_loaded(node: ast.expr, names: set[str]) -> bool:
    return (isinstance(node, ast.Call) and call_name(node) in _LOADERS) or (
        isinstance(node, ast.Name) and node.id in names
    )


def without_loaded_spread(call: ast.Call, names: set[str]) -> ast.Call:
    """``call`` without its ``**cfg`` of a loaded config (``Config(**yaml.safe_load(f))``): what
    that passes is read from the config file itself (:func:`spread_into`), and the fields it
    leaves alone keep their defaults, which are knobs."""
    kept = [k for k in call.keywords if k.arg is not None or not _is_loaded(k.value, names)]
    return (
        call if len(kept) == len(call.keywords) else ast.Call(func=call.func, args=call.args, keywords=kept)
    )


def spread_into(files: dict[str, str]) -> dict[str, list[tuple[str, set[str]]]]:
    """``{python file: [(class, {config file, ...}), ...]}`` for each class the file builds with a
    loaded config's keys (``Config(**yaml.safe_load(f))``): a field the config sets has a default
    that never applies. The config is the one the loader opens by name, else every editable config
    file the module names; none when it names none (then no field's default is sure to apply)."""
    configs = {path for path in files if path.endswith(_CONFIG_SUFFIXES)}
    out: dict[str, list[tuple[str, set[str]]]] = {}
    for path, tree in _python_trees(files, ("**",)):
        sources = loaded_sources(tree)
        names, named = set(sources), _named_configs(tree, configs)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                for spread in (
                    k.value for k in node.keywords if k.arg is None and _is_loaded(k.value, names)
                ):
                    by_name = (
                        sources.get(spread.id, "") if isinstance(spread, ast.Name) else _source(spread, {})
                    )
                    out.setdefault(path, []).append((node.func.id, {by_name} & configs or named))
    return out
