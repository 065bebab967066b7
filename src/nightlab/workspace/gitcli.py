"""How nightlab calls git: one runner with a clean environment, errors as one line, bytes as text.

Git is driven through its command line (``subprocess``): it is always installed where nightlab
runs, its behaviour is documented, and it needs no extra dependency. Paths and file contents go
through ``surrogateescape``, so any byte sequence git hands over comes back unchanged.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from nightlab.errors import UserError

REDIRECTING_VARS = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_NAMESPACE",
        "GIT_PREFIX",
    }
)


# Settings that make git run programs of the repository's choosing: a hook, a file-system
# monitor. nightlab's own git commands never want them, and a training script that could write
# the repository's .git/config (a workspace in /tmp, which the sandbox leaves writable) would
# otherwise run code outside the sandbox the next time nightlab commits or checks out.
HARDENING = ("-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null")

# Subcommands that may run a filter (clean, smudge, process) or merge driver that attributes
# name: before one of these, every such driver the repository's own config defines is switched
# off for that command (see :func:`driver_overrides`).
CONVERTING = frozenset(
    {
        "add",
        "apply",
        "archive",
        "cat-file",
        "checkout",
        "diff",
        "hash-object",
        "ls-files",
        "merge",
        "read-tree",
        "reset",
        "restore",
        "rm",
        "stash",
        "status",
        "switch",
        "update-index",
        "worktree",
    }
)
# Driver commands ``git lfs install --local`` writes: the user's, kept working.
LFS_COMMANDS = frozenset(
    {
        "git-lfs clean -- %f",
        "git-lfs smudge -- %f",
        "git-lfs smudge --skip -- %f",
        "git-lfs filter-process",
        "git-lfs filter-process --skip",
    }
)


class GitError(UserError):
    """A git command failed (disk full, permissions, a lock held by another program, ...)."""


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # Inherited GIT_DIR / GIT_INDEX_FILE / GIT_WORK_TREE (e.g. when started from a git hook)
    # would silently point every command at another repository or index.
    env = {k: v for k, v in os.environ.items() if k not in REDIRECTING_VARS}
    env.update({"LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"})
    # `git replace` refs would make every command see another blob or commit in place of the
    # real one: a run that wrote refs/replace/ could change what a frozen file reads as.
    env["GIT_NO_REPLACE_OBJECTS"] = "1"
    if extra:
        env.update(extra)
    return env


def run_git(
    args: Sequence[str],
    cwd: Path,
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(
            ["git", *HARDENING, *driver_overrides(args, cwd, env), *args],
            cwd=cwd,
            input=input,
            env=git_env(env),
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        raise UserError("git is not installed or not on PATH: install git first") from None
    if check and proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        first = detail[-1] if detail else f"exit code {proc.returncode}"
        raise GitError(f"git {args[0]} failed in {cwd}: {first}")
    return proc


def driver_overrides(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """``-c`` options that switch off each filter and merge driver the repository's own config
    (its ``.git/config``, a worktree's config, what they include) defines, for a command in
    :data:`CONVERTING`; none for other commands.

    Attributes (``.gitattributes``, ``.git/info/attributes``) name a driver, the config says what
    it runs, and git runs it while it checks out, hashes or compares files. A repository's config
    can be written by what nightlab runs (a coding CLI, a training run whose workspace lies in
    /tmp): its driver would run outside any sandbox the next time nightlab checks out a
    worktree. The user's own global config (git-lfs) is left alone, and so is a repository-local
    git-lfs set up by ``git lfs install --local``.
    """
    start = 0
    while start + 1 < len(args) and args[start] in ("--git-dir", "--work-tree"):
        start += 2
    if start >= len(args) or args[start] not in CONVERTING:
        return []
    listing = subprocess.run(
        [
            "git",
            *HARDENING,
            *args[:start],
            "config",
            "-z",
            "--show-scope",
            "--get-regexp",
            r"^(filter|merge)\..*\.",
        ],
        cwd=cwd,
        env=git_env(env),
        capture_output=True,
        check=False,
    ).stdout
    options: list[str] = []
    fields = listing.split(b"\0")
    for scope, entry in zip(fields[0::2], fields[1::2], strict=False):  # scope, then "key\nvalue"
        key, _, value = decode(entry).partition("\n")
        section, _, name = key.rpartition(".")
        if scope not in (b"local", b"worktree") or value in LFS_COMMANDS:
            continue
        if key.startswith("filter.") and name in ("clean", "smudge", "process"):
            options += ["-c", f"{key}=", "-c", f"{section}.required=false"]
        elif key.startswith("merge.") and name == "driver":
            options += ["-c", f"{key}=false"]  # a conflict: nightlab's reapply then says it could not
    return options


def decode(data: bytes) -> str:
    # surrogateescape makes any byte sequence round-trip through str and back to the same bytes.
    return data.decode("utf-8", errors="surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def porcelain_paths(out: bytes) -> list[str]:
    """Paths from ``git status --porcelain=v1 -z`` output (rename sources included)."""
    paths: list[str] = []
    entries = out.split(b"\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if not entry:
            continue
        paths.append(decode(entry[3:]))
        if entry[:1] in (b"R", b"C"):  # renames carry their source as the next entry
            paths.append(decode(entries[i]))
            i += 1
    return list(dict.fromkeys(paths))
