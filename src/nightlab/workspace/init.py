"""``nightlab init``: a research workspace from a template, as a fresh git repository.

A template is a folder under ``nightlab/templates/`` holding the workspace files plus an
optional ``sizes.toml`` whose tables (``[cpu.train]``, ``[gpu.prepare]``, ``[gpu.budget]`` ...)
say which constants change with the size. Sizes rewrite only the literals, through the same
knob editor the search agent uses, so the files stay as a person wrote them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


def template_dir(name: str) -> Path:
    base = Path(str(resources.files("nightlab") / "templates"))
    path = base / name
    if not path.is_dir():
        names = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise UserError(f"--template '{name}' unknown; available: {', '.join(names)}")
    return path


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


def init_workspace(
    directory: Path, template: str = "gpt", size: str | None = None, force: bool = False
) -> str:
    """Write the template into ``directory`` and make the first commit; returns the size used."""
    directory = Path(directory)
    src = template_dir(template)
    sizes_path = src / SIZES_FILE
    sizes = tomllib.loads(sizes_path.read_text()) if sizes_path.is_file() else {}
    size = size or (default_size() if sizes else None)
    if sizes and size not in sizes:
        raise UserError(
            f"--size '{size}' unknown for template {template}; choose one of {', '.join(sorted(sizes))}"
        )
    if directory.exists() and any(directory.iterdir()) and not force:
        raise UserError(f"{directory} is not empty; choose a new directory or pass --force to write into it")
    if shutil.which("git") is None:
        raise UserError("git not found on PATH; nightlab keeps every experiment in git, so install git first")

    files = {
        p.relative_to(src).as_posix(): p.read_text()
        for p in sorted(src.rglob("*"))
        if p.is_file() and not (set(p.relative_to(src).parts) & SKIP) and p.suffix != ".pyc"
    }
    if sizes:
        files = apply_size(files, sizes, size)
    directory.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    gitignore = directory / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE)

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=directory, check=True, capture_output=True, text=True)

    if not (directory / ".git").exists():
        git("init", "-q")
        git("checkout", "-q", "-b", "main")
    git("add", "-A")
    label = f"{template}, {size} size" if size else template
    has_identity = (
        subprocess.run(["git", "config", "user.email"], cwd=directory, capture_output=True).returncode == 0
    )
    identity = [] if has_identity else ["-c", "user.name=nightlab", "-c", "user.email=nightlab@localhost"]
    subprocess.run(
        ["git", *identity, "commit", "-q", "-m", f"nightlab init ({label})"],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
    )
    return size or ""
