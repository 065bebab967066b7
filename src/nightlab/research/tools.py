"""What the session lends agents: a scratch checkout and a process runner (:class:`AgentTools`).

Agents run nothing and drive no git themselves (DESIGN.md). A coding CLI still has to edit
files somewhere and run under a deadline; this is where it gets both, from the same worktree
management the runs use and the same process handling the executor uses, so its process tree
is killed at the deadline exactly as a training run's is.

A CLI is not confined to its checkout: a worktree shares its branches with the user's
repository, and a CLI may write anywhere the user can. So the scratch checkout also notes what
the user's side looked like when it was lent and, when it is reset, undoes what the round did
there where that is safe (see :class:`Outside`), and says so in one line each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from nightlab import safefile
from nightlab.executor.process import Limits, run_process
from nightlab.types import RunResult, RunSpec
from nightlab.workspace.git import AGENT_WORKTREE, BRANCH_PREFIX, Workspace

# A coding CLI asked to stop gets two seconds before SIGKILL: it holds no training state.
AGENT_LIMITS = Limits(grace_seconds=2.0)
# The refs a round may create in the shared repository; the loop's own branches are not the CLI's.
_REF_SPACES = ("refs/heads/", "refs/tags/")
_OURS = f"refs/heads/{BRANCH_PREFIX}"
# The loop's own refs: its branches and every experiment's ref.
_LOOP_SPACES = ("refs/nightlab/", _OURS)


@dataclass
class Outside:
    """The user's side of the repository when a scratch checkout was lent: its branches and
    tags, its checkout's HEAD, and each uncommitted path of its checkout (status and stat).

    :meth:`undo` compares it with the present. Refs the round created are deleted (their commit
    is named, so nothing is lost); refs it moved or deleted are put back where they were, unless
    a worktree has that branch checked out (moving it would make that checkout look changed:
    reported instead). The loop's own ``nightlab/`` branches are the loop's: it may advance them
    during a round (pipelining), and it sets them from the ledger at each keep. Files it changed in the user's checkout are restored from
    ``HEAD`` only when the checkout was clean and at the same commit before the round, their
    changed copies moved to ``keep`` first; a checkout that held uncommitted work is only
    reported, because a user's own edit made meanwhile cannot be told from the CLI's.
    """

    workspace: Workspace
    refs: dict[str, str] = field(default_factory=dict)
    head: str = ""
    dirty: dict[str, tuple] = field(default_factory=dict)
    loop_refs: dict[str, str] = field(default_factory=dict)
    settings: dict[str, tuple] = field(default_factory=dict)

    @classmethod
    def now(cls, workspace: Workspace) -> Outside:
        loop = _refs(workspace, _LOOP_SPACES)
        dirty, settings = _dirty(workspace), _settings(workspace)
        return cls(workspace, _refs(workspace), workspace.head_commit(), dirty, loop, settings)

    def undo(self, keep: Path) -> list[str]:
        """Undo what changed since :meth:`now` where safe; one line per thing found, each
        saying what the round did ("created the branch x: deleted (...)")."""
        notes = self._drop_new_refs() + self._put_back_refs() + self._put_back_loop_refs()
        changed = sorted(
            k
            for k in {*self.settings, *_settings(self.workspace)}
            if _settings(self.workspace).get(k) != self.settings.get(k)
        )
        if changed:  # not undone: a user's own edit meanwhile cannot be told from the CLI's
            notes.append(
                f"changed the repository's {', '.join(changed)}: left as it is; nightlab's git runs no hook, "
                "file-system monitor, filter or merge driver from there, but yours does: check it"
            )
        note = self._restore_checkout(keep)
        return notes + ([note] if note else [])

    def _drop_new_refs(self) -> list[str]:
        dropped = []
        for ref, sha in sorted(_refs(self.workspace).items()):
            if ref in self.refs or ref.startswith(_OURS):
                continue
            self.workspace.git("update-ref", "-d", ref, sha, check=False)  # only if still there
            kind, name = ("branch", ref[11:]) if ref.startswith("refs/heads/") else ("tag", ref[10:])
            again = f"git branch {name} {sha[:12]}" if kind == "branch" else f"git tag {name} {sha[:12]}"
            dropped.append(f"created the {kind} {name}: deleted (`{again}` brings it back)")
        return dropped

    def _put_back_refs(self) -> list[str]:
        notes = []
        now = _refs(self.workspace)
        checked_out = _checked_out(self.workspace)
        for ref, sha in sorted(self.refs.items()):
            if now.get(ref) == sha or ref.startswith(_OURS):
                continue
            kind, name = ("branch", ref[11:]) if ref.startswith("refs/heads/") else ("tag", ref[10:])
            moved = now.get(ref)
            did = (
                f"moved the {kind} {name} from {sha[:12]} to {moved[:12]}"
                if moved
                else f"deleted the {kind} {name}"
            )
            if ref in checked_out:
                notes.append(f"{did}: left as it is, since a checkout has it; `git reflog {name}` shows it")
                continue
            # Compare-and-swap: a ref that changed again meanwhile is left as it is.
            self.workspace.git("update-ref", ref, sha, moved or "", check=False)
            if _refs(self.workspace).get(ref) != sha:
                notes.append(f"{did}: could not put it back; `git reflog {name}` shows it")
            elif moved:
                again = f"git {'branch' if kind == 'branch' else 'tag'} -f {name} {moved[:12]}"
                notes.append(f"{did}: put back (`{again}` redoes it)")
            else:
                notes.append(f"{did}: restored at {sha[:12]}")
        return notes

    def _put_back_loop_refs(self) -> list[str]:
        """The loop's refs the round deleted, and its branches the round pointed at a commit that
        is no experiment's, put back (compare-and-swap). The loop never deletes them and points
        its branches only at experiments' commits, whose refs it sets first; a CLI that deleted
        them lost the night's experiments to the next `git gc`, and one that moved
        ``nightlab/<tag>`` left the morning's best-code branch holding code nothing measured."""
        now = _refs(self.workspace, _LOOP_SPACES)
        measured = {sha for ref, sha in [*now.items(), *self.loop_refs.items()] if not ref.startswith(_OURS)}
        notes = []
        for ref, sha in sorted(self.loop_refs.items()):
            moved = now.get(ref)
            if moved == sha or (moved is not None and (not ref.startswith(_OURS) or moved in measured)):
                continue
            self.workspace.git("update-ref", ref, sha, moved or "", check=False)
            did = (
                f"moved nightlab's {ref} to {moved[:12]}, no experiment's commit"
                if moved
                else f"deleted nightlab's {ref}"
            )
            notes.append(f"{did}: put back at {sha[:12]}")
        return notes

    def _restore_checkout(self, keep: Path) -> str | None:
        now = _dirty(self.workspace)
        changed = sorted(p for p in {*now, *self.dirty} if now.get(p) != self.dirty.get(p))
        moved = self.workspace.head_commit() != self.head
        if not changed and not moved:
            return None
        root = self.workspace.root
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        what = f"changed your checkout {root} ({shown or 'its HEAD'})"
        if self.dirty or moved:
            why = "it held uncommitted work before the round" if self.dirty else "its HEAD moved"
            return f"{what}: left as it is, since {why}; `git status` there shows it"
        for path in changed:
            self._put_back(path, keep)
        return f"{what}: restored; the changed copies are in {keep}"

    def _put_back(self, path: str, keep: Path) -> None:
        """``path`` as ``HEAD`` has it (or gone, when ``HEAD`` lacks it); the changed copy kept."""
        target = self.workspace.root / path
        if target.is_file() or target.is_symlink():
            saved = keep / path
            saved.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(target, saved)
        in_head = bool(self.workspace.git("ls-tree", "HEAD", "--", path).strip())
        if in_head or self.workspace.git("ls-files", "--", path).strip():
            self.workspace.git("rm", "-q", "--cached", "--ignore-unmatch", "--", path)
        if in_head:
            self.workspace.git("checkout", "HEAD", "--", path)


def _refs(workspace: Workspace, spaces: tuple[str, ...] = _REF_SPACES) -> dict[str, str]:
    out = workspace.git("for-each-ref", "--format=%(refname) %(objectname)", *spaces)
    return dict(line.rsplit(" ", 1) for line in out.splitlines() if " " in line)


def _settings(workspace: Workspace) -> dict[str, tuple]:
    """What git reads from the repository's own folder and acts on, by path: its config, its
    attributes, its hooks (mode, size and a hash of the content of each: git rewrites its config
    unchanged when a branch is deleted, so times say nothing)."""
    common = Path(workspace.git("rev-parse", "--git-common-dir").strip())
    common = common if common.is_absolute() else workspace.root / common
    hooks = common / "hooks"
    paths = [
        common / "config",
        common / "info" / "attributes",
        *(sorted(hooks.iterdir()) if hooks.is_dir() else []),
    ]
    found: dict[str, tuple] = {}
    for path in paths:
        try:
            st = os.lstat(path)
            digest = (
                hashlib.sha256(safefile.read_bytes(path, 1 << 20)).hexdigest()
                if stat.S_ISREG(st.st_mode)
                else ""
            )
        except OSError:
            continue
        found[f".git/{path.relative_to(common).as_posix()}"] = (st.st_mode, st.st_size, digest)
    return found


def _checked_out(workspace: Workspace) -> set[str]:
    """The branches some worktree of the repository has checked out (``refs/heads/...``)."""
    listing = workspace.git("worktree", "list", "--porcelain")
    return {line[len("branch ") :] for line in listing.splitlines() if line.startswith("branch ")}


def _dirty(workspace: Workspace) -> dict[str, tuple]:
    """Each uncommitted path of the user's checkout: its status code and what ``lstat`` says
    (a write changes the size or the time), so a second change to a dirty file is seen too."""
    out = workspace.git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    found: dict[str, tuple] = {}
    for entry in out.split("\0"):
        if len(entry) > 3:
            try:
                st = os.lstat(workspace.root / entry[3:])
                stat: tuple = (st.st_size, st.st_mtime_ns, st.st_mode)
            except OSError:
                stat = ()
            found[entry[3:]] = (entry[:2], *stat)
    return found


@dataclass
class ScratchCheckout:
    """The agent's worktree, checked out at one commit, and the user's side as it was then."""

    workspace: Workspace
    path: Path
    commit: str
    outside: Outside

    def changed(self) -> list[str]:
        return self.workspace.modified_tracked_files(self.path)

    def reset(self, keep: Path) -> list[str]:
        self.workspace.checkout(self.path, self.commit)  # off any branch the CLI checked out
        return self.outside.undo(keep)


class SessionTools:
    """:class:`~nightlab.agents.base.AgentTools` over a workspace."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def scratch(self, commit: str) -> ScratchCheckout:
        tree = self.workspace.worktree(AGENT_WORKTREE)
        self.workspace.checkout(tree, commit)
        return ScratchCheckout(self.workspace, tree, commit, Outside.now(self.workspace))

    def run(self, spec: RunSpec, stop: threading.Event | None = None) -> RunResult:
        return run_process(spec, AGENT_LIMITS, stop=stop)

    def log_dir(self) -> Path:
        return self.workspace.state_dir / "agent"
