"""Git for the research loop: experiment commits, refs, the research branch and run worktrees.

Everything here is built so the user's own checkout is never touched. Experiment commits are
made with plumbing on a temporary index (no working tree involved), the research branch
``nightlab/<tag>`` moves only by compare-and-swap, every experiment keeps a ref under
``refs/nightlab/experiments/`` so nothing tried is ever garbage-collected, and training runs in
persistent detached worktrees under ``.nightlab/worktrees/`` that are reset between runs.

Git is driven through its command line, by :mod:`nightlab.workspace.gitcli`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from nightlab.errors import LostWorktree, UserError
from nightlab.paths import matches, normalize
from nightlab.workspace.gitcli import GitError, decode, encode, porcelain_paths, run_git

STATE_DIR = ".nightlab"
BRANCH_PREFIX = "nightlab/"
EXPERIMENT_REFS = "refs/nightlab/experiments/"
IDENTITY = {
    "GIT_AUTHOR_NAME": "nightlab",
    "GIT_AUTHOR_EMAIL": "nightlab@localhost",
    "GIT_COMMITTER_NAME": "nightlab",
    "GIT_COMMITTER_EMAIL": "nightlab@localhost",
}
# Files a Python run always leaves behind and that are harmless once removed: `restore` deletes
# them anyway, so a planted .pyc cannot survive into the evaluation.
DEFAULT_ALLOWED = ("**/__pycache__", "**/*.pyc")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WORKTREE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
# The coding agent's scratch checkout (agents never share a worktree with a run).
AGENT_WORKTREE = "agent"


def run_worktree(slot: int = 0) -> str:
    """The name of the worktree that run slot ``slot`` trains in."""
    return f"run-{slot}"


class StaleBranchError(UserError):
    """The research branch moved under us: another run uses the same tag, or a person moved it."""


def _check_relpath(path: str) -> str:
    try:
        return normalize(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None


class Workspace:
    """A git repository holding a research target; see the module docstring for the guarantees.

    Example::

        ws = Workspace(Path("my-research"))
        ws.ensure_clean()
        base = ws.head_commit()
        commit = ws.commit_files(base, {"train.py": new_text}, "LR 0.01 -> 0.02")
        ws.set_experiment_ref(7, commit)
        tree = ws.worktree(run_worktree(0))
        ws.checkout(tree, commit)      # then run the training command in `tree`
    """

    def __init__(self, root: Path | str) -> None:
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise UserError(f"{root} is not a directory: create it with `nightlab init {root}`")
        probe = run_git(
            ["rev-parse", "--is-bare-repository", "--git-common-dir", "--show-toplevel"], root, check=False
        )
        if probe.returncode != 0:
            if "dubious ownership" in decode(probe.stderr):  # a repository of another user: git says so
                raise UserError(
                    f"{root} belongs to another user, and git refuses to work in it (dubious ownership): "
                    f"run nightlab as its owner, or trust it with `git config --global --add safe.directory {root}`"
                )
            raise UserError(f"{root} is not a git repository: run `git init` there, or `nightlab init DIR`")
        lines = decode(probe.stdout).splitlines()
        if lines[0] == "true" or len(lines) < 3:
            raise UserError(f"{root} is a bare git repository: use a checkout with a working tree")
        top = Path(lines[2]).resolve()
        if top != root:
            raise UserError(
                f"{root} is inside the git repository {top} but is not its top folder: "
                f"run nightlab on {top}, or make {root} its own repository (git init)"
            )
        self.root = root
        self._common_dir = (root / lines[1]).resolve()  # lines[1] may be relative to root
        self._admin_dirs: dict[Path, Path] = {}
        if run_git(["rev-parse", "--verify", "-q", "HEAD^{commit}"], root, check=False).returncode != 0:
            raise UserError(f"{root} has no commits yet: commit your files first (git add -A && git commit)")
        self.state_dir = root / STATE_DIR
        self.state_dir.mkdir(exist_ok=True)
        self._exclude_state_dir()

    # -- plumbing -------------------------------------------------------------------------
    def git(self, *args: str, **kwargs) -> str:
        """``git ARGS`` in the workspace, its stdout as text: the one runner (environment,
        errors as :class:`UserError`) that recovery and the scale tools share with this class."""
        return decode(run_git(list(args), self.root, **kwargs).stdout)

    def _exclude_state_dir(self) -> None:
        """List .nightlab/ in .git/info/exclude so the state never shows as a dirty tree."""
        exclude = Path(self.git("rev-parse", "--git-path", "info/exclude").strip())
        if not exclude.is_absolute():
            exclude = self.root / exclude
        line = f"/{STATE_DIR}/"
        text = exclude.read_text() if exclude.exists() else ""
        if line not in text.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            prefix = "" if not text or text.endswith("\n") else "\n"
            with exclude.open("a") as fh:
                fh.write(f"{prefix}# nightlab state (ledger, runs, worktrees)\n{line}\n")

    # -- the user's checkout ----------------------------------------------------------------
    def dirty_files(self) -> list[str]:
        """Changed, staged and untracked files of the user's tree (ignored files excluded)."""
        out = run_git(["status", "--porcelain=v1", "-z", "--untracked-files=all"], self.root).stdout
        return porcelain_paths(out)

    def ensure_clean(self) -> None:
        """Refuse to start on uncommitted work: experiments start from commits, not from files."""
        dirty = self.dirty_files()
        if dirty:
            shown = ", ".join(dirty[:5]) + (f", and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            tracked = run_git(["status", "--porcelain=v1", "-z", "--untracked-files=no"], self.root).stdout
            if not tracked.strip(b"\0"):  # only new files: a log or notes beside the script, often
                raise UserError(
                    f"workspace has untracked files ({shown}), which the runs would not see (they start "
                    "from commits): commit them, or list them in .gitignore"
                )
            raise UserError(f"workspace has uncommitted changes ({shown}): commit or stash them first")

    def head_commit(self) -> str:
        return self.resolve("HEAD")

    def is_ancestor(self, commit: str, of: str) -> bool:
        """True when ``commit`` is ``of`` or one of its ancestors."""
        return run_git(["merge-base", "--is-ancestor", commit, of], self.root, check=False).returncode == 0

    def resolve(self, rev: str) -> str:
        """The full commit id of ``rev``; a UserError names a revision that does not exist."""
        proc = run_git(
            ["rev-parse", "--verify", "-q", "--end-of-options", f"{rev}^{{commit}}"], self.root, check=False
        )
        if proc.returncode != 0:
            raise UserError(f"'{rev}' is not a commit in {self.root}: check the revision (git log)")
        return decode(proc.stdout).strip()

    # -- the research branch ----------------------------------------------------------------
    def branch_ref(self, tag: str) -> str:
        if not _TAG_RE.match(tag) or tag.endswith(".lock") or ".." in tag:
            raise UserError(
                f"tag '{tag}' is not usable: use letters, digits, '.', '_' or '-' (e.g. --tag nov22)"
            )
        return f"refs/heads/{BRANCH_PREFIX}{tag}"

    def branch_commit(self, tag: str) -> str | None:
        """Where ``nightlab/<tag>`` points, or None when the branch does not exist yet."""
        proc = run_git(["rev-parse", "--verify", "-q", self.branch_ref(tag)], self.root, check=False)
        if proc.returncode != 0:
            return None
        return decode(proc.stdout).strip()

    def create_branch(self, tag: str, commit: str) -> None:
        """Create ``nightlab/<tag>`` at ``commit``; refuses when it already exists."""
        ref = self.branch_ref(tag)
        proc = run_git(["update-ref", "-m", "nightlab: start", ref, commit, ""], self.root, check=False)
        if proc.returncode != 0:
            if self.branch_commit(tag) is not None:
                raise UserError(f"branch {BRANCH_PREFIX}{tag} already exists: pick another --tag")
            detail = decode(proc.stderr).strip().splitlines()
            raise GitError(f"cannot create branch {BRANCH_PREFIX}{tag}: {detail[-1] if detail else ''}")

    def advance_branch(self, tag: str, new_commit: str, old_commit: str | None) -> None:
        """Move ``nightlab/<tag>`` from ``old_commit`` to ``new_commit`` atomically.

        ``old_commit`` None means the branch must not exist yet (it is then created).
        The compare-and-swap makes two runs on one tag (or a person moving the branch) fail
        loudly instead of silently dropping a kept change.
        """
        ref = self.branch_ref(tag)
        self._refuse_checked_out(ref)
        proc = run_git(
            ["update-ref", "-m", "nightlab: keep", ref, new_commit, old_commit or ""], self.root, check=False
        )
        if proc.returncode != 0:
            now = self.branch_commit(tag)
            raise StaleBranchError(
                f"branch {BRANCH_PREFIX}{tag} is at {(now or 'nothing')[:12]}, "
                f"expected {(old_commit or 'nothing')[:12]}: "
                f"another nightlab run may use tag '{tag}'; stop it or use another --tag"
            )

    def _refuse_checked_out(self, ref: str) -> None:
        # Moving a branch that a working tree has checked out would make that tree look dirty.
        listing = self.git("worktree", "list", "--porcelain")
        current = None
        for line in listing.splitlines():
            if line.startswith("worktree "):
                current = line[len("worktree ") :]
            elif line == f"branch {ref}":
                raise UserError(
                    f"{ref[len('refs/heads/') :]} is checked out in {current}: "
                    "switch that checkout to another branch (git switch -) while nightlab runs"
                )

    # -- experiment commits -----------------------------------------------------------------
    def commit_files(self, parent: str, files: Mapping[str, str | None], message: str) -> str:
        """A new commit: ``parent``'s tree with ``files`` replaced (None deletes a file).

        Built on a temporary index so neither the user's index nor any working tree changes;
        file modes (e.g. an executable script) are kept.
        """
        paths = {_check_relpath(p): text for p, text in files.items()}
        modes = self._modes(parent, list(paths))
        with tempfile.TemporaryDirectory(prefix="index-", dir=self.state_dir) as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            run_git(["read-tree", parent], self.root, env=env)
            blobs = self._write_blobs(tmp, {p: t for p, t in paths.items() if t is not None})
            lines = []
            for path, text in paths.items():
                if text is None:
                    lines.append(f"0 {'0' * len(parent)}\t{path}")
                else:
                    lines.append(f"{modes.get(path, '100644')} {blobs[path]}\t{path}")
            run_git(
                ["update-index", "--index-info"], self.root, input=encode("\n".join(lines) + "\n"), env=env
            )
            tree = decode(run_git(["write-tree"], self.root, env=env).stdout).strip()
        return self._commit_tree(tree, [parent], message)

    def _modes(self, commit: str, paths: list[str]) -> dict[str, str]:
        if not paths:
            return {}
        out = self.git("ls-tree", "-z", "--full-tree", commit, "--", *paths)
        modes = {}
        for entry in filter(None, out.split("\0")):
            meta, path = entry.split("\t", 1)
            mode, kind, _ = meta.split(" ")
            if kind == "blob" and mode in ("100644", "100755"):
                modes[path] = mode
        return modes

    def _write_blobs(self, tmp: str, texts: Mapping[str, str]) -> dict[str, str]:
        if not texts:
            return {}
        staged = []
        for i, text in enumerate(texts.values()):
            staged_path = Path(tmp) / f"blob{i}"
            staged_path.write_bytes(encode(text))
            staged.append(str(staged_path))
        # One process for all blobs; --no-filters because the text is already what to store.
        ids = self.git("hash-object", "-w", "--no-filters", "--", *staged).split()
        return dict(zip(texts, ids, strict=True))

    def _commit_tree(self, tree: str, parents: Iterable[str], message: str) -> str:
        args = ["commit-tree", "--no-gpg-sign", tree]
        for parent in parents:
            args += ["-p", parent]
        out = run_git(args, self.root, input=encode(message.rstrip() + "\n"), env=IDENTITY).stdout
        return decode(out).strip()

    def set_experiment_ref(self, exp_id: int, commit: str) -> None:
        """Keep ``commit`` reachable forever as ``refs/nightlab/experiments/<id>``."""
        self.git("update-ref", f"{EXPERIMENT_REFS}{exp_id:04d}", commit)

    def experiment_refs(self) -> dict[int, str]:
        out = self.git("for-each-ref", "--format=%(objectname) %(refname)", EXPERIMENT_REFS)
        refs = {}
        for line in out.splitlines():
            sha, name = line.split(" ", 1)
            suffix = name[len(EXPERIMENT_REFS) :]
            if suffix.isdigit():
                refs[int(suffix)] = sha
        return refs

    # -- reading commits --------------------------------------------------------------------
    def mentions(self, commit: str, text: str) -> bool:
        """Whether a text file at ``commit`` holds ``text`` (``git grep``: one process, binary
        files skipped); True when git cannot tell, so a caller never accuses on an error."""
        proc = run_git(["grep", "-q", "-I", "-F", "-e", text, commit, "--"], self.root, check=False)
        return proc.returncode != 1

    def read_file(self, commit: str, path: str) -> str:
        return self.read_files(commit, [path])[path]

    def read_files(self, commit: str, paths: Iterable[str], *, missing_ok: bool = False) -> dict[str, str]:
        """Texts of ``paths`` at ``commit`` in one git process; absent files raise unless missing_ok."""
        wanted = list(dict.fromkeys(paths))
        if not wanted:
            return {}
        request = "".join(f"{commit}:{p}\n" for p in wanted)
        out = run_git(["cat-file", "--batch"], self.root, input=encode(request)).stdout
        texts: dict[str, str] = {}
        pos = 0
        for path in wanted:
            end = out.index(b"\n", pos)
            header = out[pos:end].split(b" ")
            pos = end + 1
            if header[-1] != b"missing":  # "<id> <type> <size>" then the content
                size = int(header[2])
                if header[1] == b"blob":
                    texts[path] = decode(out[pos : pos + size])
                pos += size + 1
            if path not in texts and not missing_ok:
                raise UserError(f"{path} does not exist at commit {commit[:12]} in {self.root}")
        return texts

    def list_files(self, commit: str) -> list[str]:
        out = self.git("ls-tree", "-r", "-z", "--name-only", "--full-tree", commit)
        return [p for p in out.split("\0") if p]

    def diff(self, base: str, commit: str, paths: Sequence[str] = ()) -> str:
        """Unified diff from ``base`` to ``commit``, independent of the user's diff settings; to
        store and show, so a byte that is not UTF-8 reads ``\\xe9`` (the ledger refused it)."""
        args = ["diff", "--no-color", "--no-ext-diff", "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/"]
        out = run_git([*args, base, commit, "--", *paths], self.root).stdout
        return out.decode("utf-8", errors="backslashreplace")

    def revert_commit_onto(self, commit_to_drop: str, head: str) -> str | None:
        """A commit on ``head`` that undoes ``commit_to_drop`` (for ablations); None on conflict.

        The change is reversed with ``git apply --3way --cached`` on a temporary index, so no
        working tree is involved.
        """
        drop = self.resolve(commit_to_drop)
        parents = self.git("rev-list", "--parents", "-n", "1", drop).split()[1:]
        if len(parents) != 1:
            raise UserError(
                f"commit {drop[:12]} has {len(parents)} parents: only single-parent commits can be dropped"
            )
        subject = self.git("log", "-1", "--format=%s", drop).strip()
        return self._apply_onto(parents[0], drop, head, f"Revert {drop[:12]}: {subject}", reverse=True)

    def reapply_onto(self, base: str, commit: str, onto: str, message: str) -> str | None:
        """A commit on ``onto`` that makes the change ``base`` → ``commit`` there; None on conflict.

        How a candidate proposed against an incumbent that has since been replaced moves onto
        the new one: a three-way apply, so changes to different lines of a file both survive.
        """
        return self._apply_onto(base, commit, onto, message)

    def _apply_onto(
        self, base: str, commit: str, onto: str, message: str, reverse: bool = False
    ) -> str | None:
        """Apply the diff ``base`` → ``commit`` (reversed with ``reverse``) to ``onto`` with
        ``git apply --3way --cached`` on a temporary index (no working tree); None on conflict."""
        patch = run_git(["diff", "--binary", "--full-index", "--no-ext-diff", base, commit], self.root).stdout
        if not patch:
            return onto
        with tempfile.TemporaryDirectory(prefix="index-", dir=self.state_dir) as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            run_git(["read-tree", onto], self.root, env=env)
            args = ["apply", "--cached", "--3way"] + (["-R"] if reverse else [])
            applied = run_git(args, self.root, input=patch, env=env, check=False)
            if applied.returncode != 0:
                return None
            tree = decode(run_git(["write-tree"], self.root, env=env).stdout).strip()
        return self._commit_tree(tree, [onto], message)

    # -- worktrees for running ----------------------------------------------------------------
    def worktree(self, name: str) -> Path:
        """The persistent detached worktree called ``name`` (created on first use).

        One per user of a checkout (:func:`run_worktree`, :data:`AGENT_WORKTREE`, a study's), so
        no two of them reset each other's files.
        """
        if not _WORKTREE_RE.match(name):
            raise ValueError(f"worktree name {name!r}: letters, digits and '-' only")
        path = self.state_dir / "worktrees" / name
        if path.is_dir() and self._admin_dir(path) is not None:
            return path
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._retire_numbered_worktrees(path.parent)
        self.git("worktree", "prune")
        self.git("worktree", "add", "--detach", "--force", "--quiet", str(path), "HEAD")
        return path

    def _retire_numbered_worktrees(self, folder: Path) -> None:
        """Remove the worktrees older versions named by number (0, 9, 90, 91): nothing uses them now."""
        for old in folder.iterdir() if folder.is_dir() else []:
            if old.name.isdigit():
                run_git(["worktree", "remove", "--force", str(old)], self.root, check=False)
                shutil.rmtree(old, ignore_errors=True)

    def _admin_dir(self, path: Path) -> Path | None:
        """The worktree's own git folder (.git/worktrees/<name>), found from the main .git.

        A run can rewrite the worktree's ``.git`` file to point at a repository of its making,
        which would make its changes invisible to ``git status``; so worktree commands name
        their git folder explicitly, taken from the main repository rather than from that file.
        """
        cached = self._admin_dirs.get(path)
        if cached is not None and cached.is_dir():
            return cached
        wanted = (path / ".git").resolve()
        admin_root = self._common_dir / "worktrees"
        for admin in sorted(admin_root.iterdir()) if admin_root.is_dir() else []:
            pointer = admin / "gitdir"
            if pointer.is_file() and Path(pointer.read_text().strip()).resolve() == wanted:
                self._admin_dirs[path] = admin
                return admin
        return None

    def _tree_git(self, path: Path, *args: str) -> bytes:
        admin = self._admin_dir(path)
        if admin is None:
            raise LostWorktree(f"{path} is not a nightlab worktree: delete it and run again")
        pointer, expected = path / ".git", f"gitdir: {admin}\n"
        if pointer.is_dir() and not pointer.is_symlink():
            shutil.rmtree(pointer)
        if pointer.is_symlink() or not pointer.is_file() or pointer.read_text(errors="replace") != expected:
            pointer.unlink(missing_ok=True)
            pointer.write_text(expected)  # repair a pointer the run replaced
        return run_git(["--git-dir", str(admin), "--work-tree", str(path), *args], path).stdout

    def checkout(self, path: Path, commit: str, keep: Sequence[str] = ()) -> None:
        """Put exactly ``commit``'s files in worktree ``path``; leftovers of earlier runs vanish.

        ``keep`` are globs (relative to the worktree) of untracked files to leave in place, e.g.
        a run directory placed inside the worktree.
        """
        folder = self.state_dir / "worktrees"
        if path.parent == folder and _WORKTREE_RE.match(path.name) and self._admin_dir(path) is None:
            self.worktree(path.name)  # its git folder was removed (`git worktree remove`): made again
        self._tree_git(path, "checkout", "--detach", "--force", "--quiet", commit)
        self._remove_untracked(path, keep)

    def modified_tracked_files(self, path: Path, allowed: Sequence[str] = ()) -> list[str]:
        """What a run changed in worktree ``path`` outside the ``allowed`` globs.

        Tracked files it modified or deleted, plus files it created (ignored ones included: a
        git-ignored ``sitecustomize.py`` patches the evaluation just as well). Python's
        ``__pycache__`` is allowed by default; :meth:`restore` removes it all the same, so call
        ``restore`` between training and evaluation to keep a planted ``.pyc`` out of the latter.
        """
        allow = [*DEFAULT_ALLOWED, *allowed]
        return [p for _, p in self._status(path) if not _allowed(p.rstrip("/"), allow)]

    def restore(self, path: Path, keep: Sequence[str] = ()) -> None:
        """Undo everything a run did to worktree ``path`` except the untracked files in ``keep``."""
        self._tree_git(path, "reset", "--hard", "--quiet")
        self._remove_untracked(path, keep)

    def new_files(self, path: Path) -> list[str]:
        """Every file in worktree ``path`` that is not in its commit, ignored ones included."""
        return [rel for code, rel in self._status(path) if code in ("??", "!!") and not rel.endswith("/")]

    def new_entries(self, path: Path) -> list[str]:
        """Files and folders that are in worktree ``path`` but not in its commit, ignored ones
        included; a folder holding only new files is one entry (``data/``, without the slash)."""
        args = ["status", "--porcelain=v1", "-z", "--untracked-files=normal", "--ignored=matching"]
        out = self._tree_git(path, *args)
        entries = [decode(e[3:]).rstrip("/") for e in out.split(b"\0") if e[:2] in (b"??", b"!!")]
        return sorted(set(entries))

    def _status(self, path: Path) -> list[tuple[str, str]]:
        """(two-letter code, path) of every change in a worktree, ignored files included."""
        args = ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored", "--no-renames"]
        out = self._tree_git(path, *args)
        return [(decode(e[:2]), decode(e[3:])) for e in out.split(b"\0") if e]

    def _remove_untracked(self, path: Path, keep: Sequence[str]) -> None:
        parents: set[Path] = set()
        for code, rel in self._status(path):
            if code not in ("??", "!!") or _allowed(rel.rstrip("/"), keep):
                continue
            target = path / rel
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            parents.update(target.parents)
        # git does not track folders: remove the ones the run made and that are now empty.
        for folder in sorted(parents, key=lambda p: -len(p.parts)):
            if folder.is_relative_to(path) and folder != path:
                try:
                    folder.rmdir()
                except OSError:
                    pass


def _allowed(rel: str, patterns: Sequence[str]) -> bool:
    """True when ``rel`` or one of its parent folders matches one of ``patterns``."""
    if not patterns:
        return False
    parts = rel.split("/")
    return any(matches("/".join(parts[:n]), patterns) for n in range(1, len(parts) + 1))
