"""``nightlab init DIR --script train.py``: a workspace around a training script the user has.

The template ``init`` copies files into a new folder; a researcher's own script already lives in
a folder (often a git repository) with its data and helpers. Here nothing of theirs is copied or
changed: a ``nightlab.toml`` is written beside the script (it is the one editable file, run as
``python SCRIPT``, or ``python -m pkg.script`` when it imports relatively, its metric read from
its log), ``.nightlab/`` is added to ``.gitignore``, and
those are committed, with the script and the Python files of the folder it imports when git does
not hold them yet (nightlab runs committed code); those files are editable too, since settings
live there (``config.py``, a model's defaults), and so are the config files they read by a path
they spell (``config.yaml``, a Hydra ``config_path`` folder: :func:`config_files`). A Python file
they name without importing it (nanoGPT's ``exec(open('configurator.py').read())``) is committed,
not editable (:func:`named_scripts`). Other files are never staged: a folder of a user's may hold data or checkpoints.

The metric is the name given with ``--metric``, else the one the script prints
(:mod:`nightlab.workspace.script_metric`); its direction comes from its words
(:func:`nightlab.config.looks_like_a_score`). A setting the script reads from the environment
with no default is noted (:func:`script_notes`): every run fails without it.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from nightlab.code.knobs.envdefault import SET_BY_HARNESS
from nightlab.config import looks_like_a_score
from nightlab.errors import UserError
from nightlab.workspace.init import commit_all, git_step
from nightlab.workspace.script_metric import guess_metric, metric_name, metric_pattern

CONFIG_NAME = "nightlab.toml"
IGNORED = ".nightlab/"


def run_command(script: str, text: str) -> str:
    """``python train.py``; ``python -m pkg.train`` for a script of a package that imports
    relatively (``from .model import Net``), which fails when run as a file; ``... fit`` for a
    ``LightningCLI`` script."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return f"python {shlex.quote(script)}"
    relative = any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    command = f"python {shlex.quote(script)}"  # a folder or file name with a space stays one word
    if relative and "/" in script:
        command = f"python -m {script[: -len('.py')].replace('/', '.')}"
    return command + (" fit" if _lightning_cli_subcommand(tree) else "")


def _lightning_cli_subcommand(tree: ast.Module) -> bool:
    """Whether the script runs a ``LightningCLI`` that wants a subcommand (``fit``), as it does
    unless built with ``run=False``: without one it prints its usage and exits 2."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "LightningCLI"
        ):
            run = next((k.value for k in node.keywords if k.arg == "run"), None)
            return not (isinstance(run, ast.Constant) and run.value is False)
    return False


def local_modules(directory: Path, script: str) -> list[str]:
    """The Python files of ``directory`` that ``script`` imports, directly or through each other
    (``import model``, ``from proj.model import Net``, ``from .config import Config``), with the
    ``__init__.py`` of the packages on their way: a run checks out only what git holds, so they
    must be committed with it, and the settings they hold are where a search looks."""
    found: list[str] = []
    queue = [script]
    while queue:
        rel = queue.pop(0)
        if rel in found:
            continue
        found.append(rel)
        try:
            tree = ast.parse((directory / rel).read_text(errors="replace"))
        except (SyntaxError, OSError):
            continue
        package = rel.rsplit("/", 1)[0].split("/") if "/" in rel else []
        for node in ast.walk(tree):
            names: list[list[str]] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = [*base, *(node.module.split(".") if node.module else [])]
                names = [module] + [[*module, a.name] for a in node.names]
            for parts in names:
                for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
                    if parts and (directory / candidate).is_file() and candidate not in found:
                        queue.append(candidate)
        for i in range(1, len(package) + 1):  # the packages a `python -m` run imports on its way
            init = "/".join(package[:i]) + "/__init__.py"
            if (directory / init).is_file() and init not in found:
                queue.append(init)
    return found


def named_scripts(directory: Path, modules: list[str]) -> list[str]:
    """The Python files of ``directory`` that ``modules`` name by a literal path without importing
    them: nanoGPT's ``exec(open('configurator.py').read())``, ``runpy.run_path("setup_env.py")``.
    A run checks out only what git holds, so each must be committed, or every run fails on a
    missing file; they are not made editable (a script run beside the training is not its
    settings)."""
    found: list[str] = []
    for module in modules:
        try:
            tree = ast.parse((directory / module).read_text(errors="replace"))
        except (SyntaxError, OSError, RecursionError):
            continue
        here = module.rsplit("/", 1)[0] + "/" if "/" in module else ""
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            text = node.value.removeprefix("./")
            if not text.endswith(".py") or text.startswith(("/", "~")) or ".." in text or len(text) > 200:
                continue
            for rel in (text, here + text):
                if (directory / rel).is_file() and rel not in modules and rel not in found:
                    found.append(rel)
                    break
    return found


def config_files(directory: Path, modules: list[str]) -> list[str]:
    """The config files ``modules`` read by a path written in their text (``open("config.yaml")``,
    ``default="configs/base.yaml"``), the YAML files of the folder a ``@hydra.main`` names as
    its ``config_path``, and the Python file an ml_collections ``DEFINE_config_file`` defaults to: the settings of such a script live there, so they are editable with it.

    A data file must not become a set of knobs (a ``vocab.json`` of ten thousand numbers, a
    dataset's ``train.json``): JSON counts only under a config-like name (``config.json``,
    ``hparams.json``), no file over 64 KB does, and no file the modules write (a config they
    save with the results)."""
    found: list[str] = []
    written: set[str] = set()
    for module in modules:
        try:
            tree = ast.parse((directory / module).read_text(errors="replace"))
        except (SyntaxError, OSError):
            continue
        here = module.rsplit("/", 1)[0] + "/" if "/" in module else ""
        written |= {here + w for w in _written(tree)} | _written(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "DEFINE_config_file":
                path = (
                    node.args[1]
                    if len(node.args) > 1
                    else next((k.value for k in node.keywords if k.arg == "default"), None)
                )
                if (
                    isinstance(path, ast.Constant)
                    and isinstance(path.value, str)
                    and path.value.endswith(".py")
                ):
                    # ml_collections: config_flags.DEFINE_config_file("config", "configs/default.py")
                    found += [p for p in (path.value, here + path.value) if (directory / p).is_file()][:1]
            if isinstance(node, ast.Call) and _hydra_main(node):
                folder = next((k.value for k in node.keywords if k.arg == "config_path"), None)
                if isinstance(folder, ast.Constant) and isinstance(folder.value, str):
                    found += _hydra_tree(directory, here, folder.value)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
                found += _config_file(directory, here, node.value)
    return [f for f in dict.fromkeys(found) if f not in written]


def _written(tree: ast.Module) -> set[str]:
    """The files a module writes by a literal path (``open("config.yaml", "w")``,
    ``Path("hparams.json").write_text(...)``): a config it saves is its output, not its settings."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        mode = (
            node.args[1]
            if len(node.args) > 1
            else next((k.value for k in node.keywords if k.arg == "mode"), None)
        )
        if (
            getattr(node.func, "id", getattr(node.func, "attr", "")) == "open"
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
            and isinstance(mode, ast.Constant)
            and isinstance(mode.value, str)
            and any(c in mode.value for c in "wax")
        ):
            out.add(first.value.removeprefix("./"))
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("write_text", "write_bytes"):
            target = func.value
            if isinstance(target, ast.Call) and target.args and isinstance(target.args[0], ast.Constant):
                out.add(str(target.args[0].value).removeprefix("./"))
    return out


_CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
_CONFIG_WORDS = re.compile(r"conf|cfg|hparam|hyper|param|setting|option|args|experiment|default|train", re.I)
_LARGEST_CONFIG = 64 * 1024


def _config_file(directory: Path, here: str, text: str) -> list[str]:
    """``text`` as a config file of ``directory`` (from the folder or the module's own), or []."""
    if not text.endswith(_CONFIG_SUFFIXES) or text.startswith(("/", "~")) or ".." in text:
        return []
    for rel in (text.removeprefix("./"), here + text.removeprefix("./")):
        path = directory / rel
        if not path.is_file() or path.name in (CONFIG_NAME, "pyproject.toml"):
            continue
        if path.stat().st_size > _LARGEST_CONFIG:
            return []
        if rel.endswith(".json") and not _CONFIG_WORDS.search(rel):
            return []  # vocab.json, data/train_samples.json: data, not settings
        return [Path(rel).as_posix()]
    return []


def _hydra_main(call: ast.Call) -> bool:
    """``@hydra.main(config_path=...)``, or the compose API's ``initialize(config_path=...)``."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "main" and getattr(func.value, "id", "") == "hydra":
        return True
    return getattr(func, "id", getattr(func, "attr", "")) == "initialize" and any(
        k.arg == "config_path" for k in call.keywords
    )


def _hydra_tree(directory: Path, here: str, folder: str) -> list[str]:
    """The YAML files under a Hydra ``config_path`` (relative to the module that names it)."""
    root = (directory / here / folder).resolve()
    if folder.startswith(("/", "pkg:")) or not root.is_dir() or not root.is_relative_to(directory.resolve()):
        return []  # ../configs from src/train.py is the workspace's configs/; nothing outside it
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    if len(files) > 200:
        return []  # a folder that large is not a script's own config tree
    return [p.relative_to(directory.resolve()).as_posix() for p in files]


def script_config(
    script: str, metric: str, printed: str, run: str = "", editable: list[str] | None = None
) -> str:
    """The text of a nightlab.toml for ``script`` whose log prints ``printed`` before the metric;
    ``editable`` defaults to the script alone."""
    run = run or f"python {shlex.quote(script)}"
    files = ", ".join(_toml_string(f) for f in (editable or [script]))
    direction = "maximize" if looks_like_a_score(metric) else "minimize"
    pattern = metric_pattern(printed).replace("'", "\\x27")
    return f"""\
# Written by `nightlab init --script {script}`; docs/ARBITRARY_TARGETS.md explains each key.
[target]
# what the agent may change: the script, the modules it imports and the config files it reads; add others
editable = [{files}]
frozen = []                       # files that must not change (an evaluation script, data preparation)
run = {_toml_string(run)}
# setup = "python prepare.py"     # run once before the runs (data, a tokenizer), its output linked into each run
# outputs = ["checkpoints/**"]    # files a run may write in its working directory

[budget]
seconds = 300                     # each run gets NIGHTLAB_BUDGET_SECONDS; train until it is spent
timeout = 900                     # hard kill of a run's whole process tree

[metric]
name = "{metric}"
direction = "{direction}"
source = "regex"                  # the last number printed after the name, in the run's log
pattern = '{pattern}'

[agent]
kind = "search"                   # no API key needed; see `nightlab agent show-space .`
"""


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string: a quote or a backslash in a path must not end it."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def init_script(directory: Path, script: str, metric: str | None = None) -> tuple[str, str, list[str]]:
    """Write and commit ``directory/nightlab.toml`` for ``directory/script``; returns the
    metric's name, its direction, and what was committed. Nothing of the user's is changed but
    ``.gitignore`` (one line added)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such folder; give the folder that holds your training script")
    path = directory / script
    rel = _relative(directory, path, script)
    if path.is_file() and path.suffix == ".ipynb":  # a run is one process with a log, not a kernel
        raise UserError(
            f"--script {script}: a notebook; export it as a script first "
            f"(jupyter nbconvert --to script {shlex.quote(rel)}) and give the .py"
        )
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"--script {script}: no Python file {rel} in {directory}; give your training script")
    if (directory / CONFIG_NAME).exists():
        raise UserError(
            f"{directory / CONFIG_NAME} exists already; edit it (docs/CONFIG.md), or move it away to write a new one"
        )
    if shutil.which("git") is None:
        raise UserError("git not found on PATH; nightlab keeps every experiment in git, so install git first")
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=directory, capture_output=True, text=True
    )
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() != directory.resolve():
        inner = directory.resolve().relative_to(Path(top.stdout.strip()).resolve()).as_posix()
        raise UserError(
            f"{directory} is inside the git repository {top.stdout.strip()}, whose root holds the workspace; "
            f"run `nightlab init {top.stdout.strip()} --script {inner}/{rel}` instead"
        )
    text = path.read_text(errors="replace")
    _check_parses(path, rel)
    imported = local_modules(directory, rel)
    others = [(directory / m).read_text(errors="replace") for m in imported if m != rel]
    printed = metric or guess_metric(text, *others)
    if printed is None:
        raise UserError(
            f"--metric: {rel} names no validation metric nightlab recognises (val_loss, val_acc, ...); "
            "give the name it prints before the number, e.g. --metric val_loss"
        )
    name = metric_name(printed)
    configs = config_files(directory, imported)
    modules = [m for m in imported if not m.endswith("__init__.py") or m == rel] + configs
    try:
        (directory / CONFIG_NAME).write_text(
            script_config(rel, name, printed, run_command(rel, text), modules)
        )
        _ignore(directory / ".gitignore")
        if not (directory / ".git").exists():
            git_step(directory, "init", "-q")
            git_step(directory, "checkout", "-q", "-b", "main")
        paths = [CONFIG_NAME, ".gitignore"]
        named = [f for f in named_scripts(directory, imported) if f not in configs]
        for needed in imported + configs + named:  # the script, what it imports and reads from here
            tracked = subprocess.run(
                ["git", "ls-files", "--error-unmatch", "--", needed], cwd=directory, capture_output=True
            )
            if tracked.returncode != 0:
                paths.append(needed)  # must be in git: runs check out commits
        commit_all(directory, f"nightlab init --script {rel}", paths)
    except (UserError, OSError) as exc:  # not committed: a second init must not find it "exists already"
        (directory / CONFIG_NAME).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"could not write {directory / CONFIG_NAME}: {exc.strerror or exc}") from None
        raise
    return name, "maximize" if looks_like_a_score(name) else "minimize", paths


def script_notes(directory: Path, script: str) -> list[str]:
    """What the script (with the modules it imports from the folder) does not read yet and a
    night needs: ``NIGHTLAB_SEED`` (a fixed ``torch.manual_seed(42)`` makes every run the same
    seed, which a time-bounded loop hides behind timing noise that ``nightlab check`` cannot tell
    from seed noise) and ``NIGHTLAB_BUDGET_SECONDS`` (each run trains for that long)."""
    text = "\n".join((directory / m).read_text(errors="replace") for m in local_modules(directory, script))
    notes: list[str] = []
    if "NIGHTLAB_SEED" not in text:
        fixed = re.search(r"\b(?:manual_seed|seed|PRNGKey|set_seed|seed_everything)\(\s*(\d+)\s*\)", text)
        seed = fixed.group(1) if fixed else "0"
        notes.append(
            f"note: {script} does not read NIGHTLAB_SEED{' (it seeds with ' + seed + ')' if fixed else ''}: "
            f"every run would repeat one seed; seed it with int(os.environ.get('NIGHTLAB_SEED', {seed}))"
        )
    if "NIGHTLAB_BUDGET" not in text:
        notes.append(
            f"note: {script} does not read NIGHTLAB_BUDGET_SECONDS: train until "
            "float(os.environ['NIGHTLAB_BUDGET_SECONDS']) seconds are spent, so every run costs the same"
        )
    for module in local_modules(directory, script):
        for line, key in _required_environment((directory / module).read_text(errors="replace")):
            notes.append(
                f"note: {module}:{line} reads {key} from the environment with no default: a run fails "
                f"without it, and no edit can search it; give a default (os.environ.get('{key}', ...))"
            )
    return notes


def _required_environment(text: str) -> list[tuple[int, str]]:
    """``(line, name)`` of each ``os.environ["LR"]`` read unguarded (no ``"LR" in os.environ``
    test anywhere) of a variable neither nightlab nor a launcher sets."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, RecursionError, ValueError):
        return []
    guarded = {
        n.left.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Compare) and isinstance(n.left, ast.Constant) and isinstance(n.left.value, str)
    }
    return [
        (n.lineno, n.slice.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Subscript)
        and isinstance(n.ctx, ast.Load)
        and getattr(n.value, "attr", getattr(n.value, "id", "")) == "environ"
        and isinstance(n.slice, ast.Constant)
        and isinstance(n.slice.value, str)
        and n.slice.value not in guarded
        and not SET_BY_HARNESS.search(n.slice.value)
    ]


def _check_parses(path: Path, rel: str) -> None:
    """Refuse a script Python 3 cannot read (a Python 2 ``print "x"``, a merge conflict left in),
    in one line naming where: every run of it would fail, and nothing can read its knobs."""
    data = path.read_bytes()
    try:
        ast.parse(data, filename=rel)
    except SyntaxError as exc:
        line = exc.lineno or (data.count(b"\n", 0, data.find(b"\0")) + 1 if b"\0" in data else "?")
        raise UserError(
            f"{rel}: not valid Python ({exc.msg}, line {line}); fix it, then run init again"
        ) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise UserError(
            f"{rel}: cannot be read as Python ({type(exc).__name__}); fix it, then run init again"
        ) from None


def _relative(directory: Path, path: Path, given: str) -> str:
    """``script`` as a path inside ``directory``, with ``/`` separators; one line when outside."""
    try:
        return path.resolve().relative_to(directory.resolve()).as_posix()
    except ValueError:
        raise UserError(
            f"--script {given}: not inside {directory}; the script must be in the workspace"
        ) from None


def _ignore(gitignore: Path) -> None:
    """Add ``.nightlab/`` (nightlab's state: ledger, runs, worktrees) to ``.gitignore``."""
    text = gitignore.read_text() if gitignore.is_file() else ""
    if any(line.strip().rstrip("/") in (".nightlab", "/.nightlab") for line in text.splitlines()):
        return
    prefix = "\n" if text and not text.endswith("\n") else ""
    with gitignore.open("a") as handle:
        handle.write(f"{prefix}{IGNORED}\n")
