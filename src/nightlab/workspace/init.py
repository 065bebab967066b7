"""``nightlab init``: a research workspace from a template, as a fresh git repository.

A template is a folder under ``nightlab/templates/`` holding the workspace files plus an
optional ``sizes.toml`` whose tables (``[cpu.train]``, ``[gpu.data]``, ``[gpu.budget]`` ...)
say which constants change with the size. Sizes, and ``--dataset`` (the template's ``DATASET``
constant), rewrite only the literals, through the same knob editor the search agent uses, so
the files stay as a person wrote them.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from nightlab.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SIZES_FILE = "sizes.toml"
SKIP = {SIZES_FILE, "__pycache__"}
GITIGNORE = ".nightlab/\nrun/\n__pycache__/\n*.pyc\n"
DATASET = "DATASET"  # the constant `--dataset` rewrites, in whichever template file defines it
DATASET_NAMES = "DATASET_NAMES"  # beside it, optional: the names DATASET may take besides a path
# Who commits when the user has no git identity configured (a fresh machine, a container).
FALLBACK_IDENTITY = ("-c", "user.name=nightlab", "-c", "user.email=nightlab@localhost")


def template_dir(name: str) -> Path:
    base = Path(str(resources.files("nightlab") / "templates"))
    names = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if name not in names:  # a name, not a path: `--template ..` copied the whole package
        raise UserError(f"--template '{name}' unknown; available: {', '.join(names)}")
    return base / name


def available_sizes(template: Path) -> list[str]:
    sizes_path = template / SIZES_FILE
    if not sizes_path.is_file():
        return []
    return sorted(tomllib.loads(sizes_path.read_text()))


def default_size() -> str:
    """``gpu`` where a CUDA device is present, ``cpu`` elsewhere (no torch import if avoidable)."""
    if shutil.which("nvidia-smi") is None:
        return "cpu"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return "gpu" if out.returncode == 0 and "GPU" in out.stdout else "cpu"


def set_toml_value(text: str, table: str, key: str, value: object) -> str:
    """Rewrite ``key = ...`` inside ``[table]`` of a TOML text, keeping everything else as is."""
    literal = _toml_literal(value)
    lines = text.splitlines(keepends=True)
    current = None
    for i, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if header:
            current = header.group(1).strip()
            continue
        if current == table and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            comment = ""
            if "#" in line:
                comment = "  " + line[line.index("#") :].rstrip("\n")
            lines[i] = f"{key} = {literal}{comment}\n"
            return "".join(lines)
    # Not present: add it at the end of the table (or a new table).
    out, inserted, current = [], False, None
    for line in lines:
        header = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if header and current == table and not inserted:
            out.append(f"{key} = {literal}\n")
            inserted = True
        if header:
            current = header.group(1).strip()
        out.append(line)
    if not inserted:
        if current != table:
            out.append(f"\n[{table}]\n")
        out.append(f"{key} = {literal}\n")
    return "".join(out)


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + " }"
    raise UserError(f"{SIZES_FILE}: cannot write {value!r} into nightlab.toml")


def apply_size(files: dict[str, str], sizes: dict, size: str) -> dict[str, str]:
    """Rewrite the size's constants (``[size.<file stem>]``), budget (``[size.budget]``) and
    search domains (``[size.space]``, into ``[agent.space]``: a batch size's valid range moves
    with the size)."""
    from nightlab.code.knobs import set_knobs

    out = dict(files)
    for section, values in sizes.get(size, {}).items():
        if section in ("budget", "space"):
            text = out["nightlab.toml"]
            table = "agent.space" if section == "space" else section
            for key, value in values.items():
                text = set_toml_value(text, table, key, value)
            out["nightlab.toml"] = text
            continue
        name = f"{section}.py"
        if name not in out:
            raise UserError(f"{SIZES_FILE}: [{size}.{section}] names {name}, which the template lacks")
        out[name] = set_knobs(out[name], values)
    return out


def apply_dataset(files: dict[str, str], dataset: str, template: str) -> dict[str, str]:
    """Set ``DATASET = "..."`` in the template file(s) that define it to ``dataset``.

    The value is stored as given, except a path that exists here, which becomes absolute: the
    workspace lives elsewhere, so a relative path would point at nothing from there.
    """
    from nightlab.code.knobs import find_knobs, set_knobs

    if not dataset.strip():
        raise UserError("--dataset is empty; give a dataset name or a path")
    holders = [
        rel
        for rel, text in files.items()
        if rel.endswith(".py") and any(k.name == DATASET for k in find_knobs(text, rel))
    ]
    if not holders:
        raise UserError(
            f"--dataset: template {template} has no {DATASET} constant to set; leave --dataset out"
        )
    local = Path(dataset).expanduser()
    value = str(local.resolve()) if local.exists() else dataset
    # A path that is not here may be where the runs run (a cluster's nodes): taken, and the CLI
    # says so. A bare word that is neither here nor a name the template declares is a typo.
    names = [n for rel in holders for n in _dataset_names(files[rel])]
    if names and dataset not in names and not local.exists() and not looks_like_a_path(dataset):
        raise UserError(
            f"--dataset {dataset}: neither a dataset of template {template} ({', '.join(names)}) "
            "nor a file or folder here; give one of those names, or the path of your text files"
        )
    out = dict(files)
    for rel in holders:
        out[rel] = set_knobs(out[rel], {DATASET: value}, rel)
    return out


def looks_like_a_path(value: str) -> bool:
    """A value a user meant as a path (``/data/x``, ``./x``, ``~/x``, ``x/y``), not as a name."""
    return "/" in value or os.sep in value or value.startswith(("~", "."))


def _dataset_names(text: str) -> list[str]:
    """The names a template file declares its ``DATASET_NAMES`` (a tuple of strings) may take;
    none declared: any name is taken, as the template's own preparation decides."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [DATASET_NAMES]:
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return []
            return [v for v in value if isinstance(v, str)] if isinstance(value, (tuple, list)) else []
    return []


def commit_all(directory: Path, message: str, paths: Sequence[str] = ()) -> None:
    """Stage ``paths`` (everything when empty) and commit them, as nightlab when the user has no
    git identity: a first commit must not fail on a machine where git was never configured."""
    git_step(directory, "add", *(["--", *paths] if paths else ["-A"]))
    has_identity = (
        subprocess.run(["git", "config", "user.email"], cwd=directory, capture_output=True).returncode == 0
    )
    git_step(directory, "commit", "-q", "-m", message, options=() if has_identity else FALLBACK_IDENTITY)


def git_step(directory: Path, *args: str, options: Sequence[str] = ()) -> None:
    """Run ``git [options] args`` in ``directory``; a failure is one line naming the command and
    git's own reason, not a traceback."""
    proc = subprocess.run(["git", *options, *args], cwd=directory, capture_output=True, text=True)
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()  # `nothing to commit` is on stdout
        reason = said[-1] if said else f"exit code {proc.returncode}"
        raise UserError(f"git {args[0]} failed in {directory}: {reason}")


def _refuse_to_lose(directory: Path, files: dict[str, str]) -> None:
    """``--force`` overwrites the template's files, but never work that exists nowhere else.

    A file it would change is fine when git holds its current content (committed at HEAD); an
    uncommitted edit or an untracked file of the same name would be lost for good: refused,
    naming the files and how to keep them.
    """
    changed = [
        rel
        for rel, text in files.items()
        if (directory / rel).is_file() and (directory / rel).read_bytes() != text.encode()
    ]
    lost = [rel for rel in changed if _at_head(directory, rel) != (directory / rel).read_bytes()]
    if lost:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        raise UserError(
            f"--force would overwrite {shown} in {directory}, whose content git does not hold "
            "(uncommitted or untracked): commit it (git add -A && git commit) or move it away first"
        )


def _at_head(directory: Path, rel: str) -> bytes | None:
    """``rel`` as committed at HEAD of the repository in ``directory``; None when it is not."""
    if not (directory / ".git").exists():
        return None
    proc = subprocess.run(["git", "cat-file", "blob", f"HEAD:{rel}"], cwd=directory, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def init_workspace(
    directory: Path,
    template: str = "gpt",
    size: str | None = None,
    force: bool = False,
    dataset: str | None = None,
) -> tuple[str, list[str]]:
    """Write the template into ``directory`` and make the first commit; returns the size used
    and the files of ``directory`` that ``force`` replaced (their old content is in git).

    ``dataset`` (a name or a path) sets the template's ``DATASET`` constant, after the size's
    constants; a template without one is a :class:`UserError`.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file, not a folder: give the folder to create the workspace in")
    src = template_dir(template)
    sizes_path = src / SIZES_FILE
    sizes = tomllib.loads(sizes_path.read_text()) if sizes_path.is_file() else {}
    size = size or (default_size() if sizes else None)
    if sizes and size not in sizes:
        raise UserError(
            f"--size '{size}' unknown for template {template}; choose one of {', '.join(sorted(sizes))}"
        )
    if directory.exists() and any(directory.iterdir()) and not force:
        raise UserError(
            f"{directory} is not empty; choose a new directory for the {template} template, or pass --force "
            f"to write it over what is there (for your own training script: nightlab init {directory} "
            "--script train.py writes a nightlab.toml beside it, docs/ARBITRARY_TARGETS.md)"
        )
    if shutil.which("git") is None:
        raise UserError("git not found on PATH; nightlab keeps every experiment in git, so install git first")

    files = {
        p.relative_to(src).as_posix(): p.read_text()
        for p in sorted(src.rglob("*"))
        if p.is_file() and not (set(p.relative_to(src).parts) & SKIP) and p.suffix != ".pyc"
    }
    if sizes:
        files = apply_size(files, sizes, size)
    if dataset is not None:
        files = apply_dataset(files, dataset, template)
    replaced: list[str] = []
    if force:
        _refuse_to_lose(directory, files)
        replaced = [
            r
            for r, text in files.items()
            if (directory / r).is_file() and (directory / r).read_text(errors="replace") != text
        ]
    directory.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    gitignore = directory / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE)
    if not (directory / ".git").exists():
        git_step(directory, "init", "-q")
        git_step(directory, "checkout", "-q", "-b", "main")
    label = f"{template}, {size} size" if size else template
    clean = subprocess.run(["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True)
    if clean.returncode != 0 or clean.stdout.strip():  # --force over identical files: nothing to commit
        commit_all(directory, f"nightlab init ({label})")
    return size or "", replaced
