"""A coding CLI (Claude Code, Codex, Aider, OpenCode, ...) as the researcher: ``kind = "command"``.

The user's ``[agent] command`` runs headless in a scratch checkout of the incumbent that the
session lends it (never the user's tree, never a run's worktree), with ``program.md`` and a generated
``NIGHTLAB_CONTEXT.md`` (state, history, kept diffs, the last crash) beside the code. Whatever
it changed in the editable files becomes the proposal, as whole-file edits; what it changed
anywhere else is reverted and reported. It may describe its change in ``NIGHTLAB_PROPOSAL.md``
(``Description:`` and ``Hypothesis:`` lines) or print a ``Description:`` line; otherwise the
description says which files changed by how many lines.

The command runs with the user's full environment, secrets included: a coding CLI needs its own
API key (``ANTHROPIC_API_KEY`` for Claude Code). Training runs never get them. ``[agent] timeout``
bounds it; the whole process tree is killed at the deadline, or at once when nightlab is
interrupted (the session's process runner does it: the agent itself runs nothing and drives no
git, see :class:`~nightlab.agents.base.AgentTools`; the same tools undo, where safe, what a CLI
did outside its checkout: a branch it created, a write to the user's checkout).

Example ``nightlab.toml``::

    [agent]
    kind = "command"
    command = "claude -p 'Read NIGHTLAB_CONTEXT.md and follow it.' --permission-mode acceptEdits"
    timeout = 900
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

from pydantic import Field

from nightlab import safefile
from nightlab.agents.base import Agent, AgentSetup, AgentTools, bounded_hypothesis
from nightlab.code.changes import line_counts
from nightlab.config import Config
from nightlab.errors import LostWorktree, UserError
from nightlab.formatting import general, terminal_safe
from nightlab.paths import is_editable, match_files
from nightlab.plugins import Kind, Settings
from nightlab.types import Context, Edit, HistoryEntry, Proposal, RunResult, RunSpec, RunStatus

CONTEXT_FILE = "NIGHTLAB_CONTEXT.md"
PROPOSAL_FILE = "NIGHTLAB_PROPOSAL.md"
PROGRAM_FILE = "program.md"
# Where coding CLIs read standing instructions; one holding `nightlab brief` is set aside.
BRIEF_FILES = ("CLAUDE.md", "AGENTS.md")
BRIEF_MARK = "# Working under nightlab"
# Files a CLI keeps for itself in the tree (aider's chat and tag caches): not edits, not reported.
TOOL_FILES = (".aider",)
# After this many proposals in a row that failed (timeout, error, nothing changed), the command
# is clearly not working (a missing key, a wrong flag): stop instead of filling the ledger.
MAX_FAILED_ROUNDS = 3
# The largest editable file a round may leave: code and configs are far smaller, and a bigger one
# would be read into memory, diffed and stored in the ledger whole.
MAX_FILE_BYTES = 8 * 2**20
# What is read of NIGHTLAB_PROPOSAL.md: a description and a hypothesis, bounded anyway.
PROPOSAL_FILE_BYTES = 64 * 2**10
LOG_TAIL_CHARS = 3000
# Where the changed copies of files a round wrote in the user's checkout go (in its log folder).
DISPLACED_DIR = "checkout"

log = logging.getLogger("nightlab.agents.command")

INSTRUCTIONS = """\
# nightlab: your task

You are the researcher in an automated research loop. A harness you do not control trains the
code under a fixed budget, evaluates it with frozen code, and keeps a change only when it beats
the current best by more than the measured noise.

Make ONE experiment now:
1. Read program.md (the research instructions) and the state and history below.
2. Edit only the editable files: {editable}. Every other file is frozen; changes to them are
   reverted. Do not run the training script: the harness runs it after you stop.
3. Write {proposal} with two lines:
   Description: <one line: what you changed, e.g. "raise LR 0.01 -> 0.02">
   Hypothesis: <why it should improve {metric}>
4. Stop. Do not commit; the harness takes your changes from the files.
"""


class CommandSettings(Settings):
    """``[agent.command]``: the command line of the coding CLI, and how long one proposal may take."""

    command: str | None = None
    timeout: float = Field(default=1800, gt=0)


class CommandAgent(Agent):
    """Runs ``[agent] command`` once per proposal; see the module docstring.

    Not pipelined: its proposals are whole files of the incumbent it saw, so one prepared while
    another experiment trains would silently undo that experiment's change if it were kept.
    """

    name = "command"

    def __init__(self, settings: CommandSettings, config: Config, tools: AgentTools) -> None:
        command = (settings.command or "").strip()
        if not command:
            raise UserError(
                'nightlab.toml: [agent] kind = "command" needs command = "..." '
                "(e.g. \"claude -p 'Read NIGHTLAB_CONTEXT.md and follow it.'\"); see docs/CODING_AGENTS.md"
            )
        self.config = config
        self.tools = tools
        self.command = command
        self.timeout = settings.timeout
        self._stop_reason: str | None = None
        self._failed_rounds = 0
        self._count = 0
        self._interrupted = threading.Event()  # nightlab is stopping: kill the CLI now

    # -- the Agent interface ------------------------------------------------------------------
    def propose(self, context: Context) -> Proposal | None:
        """Run the command on a fresh checkout of the incumbent; its edits are the proposal.

        A round that edits nothing (the CLI timed out, failed, or exited 0 after its model API
        failed, as aider does) is not an experiment: the command runs again, and after
        ``MAX_FAILED_ROUNDS`` such rounds in a row the agent stops with the last reason.
        """
        while self._stop_reason is None:
            proposal, run_dir = self._round(context)
            if proposal.edits:
                self._failed_rounds = 0
                return proposal
            self._failed_rounds += 1
            # Said at once: with the default timeout a failing CLI could otherwise be silent
            # for half an hour per round.
            log.warning(
                "command agent: round %d: %s; no experiment (log: %s)",
                self._count,
                proposal.refused,
                run_dir / "agent.log",
            )
            if self._failed_rounds >= MAX_FAILED_ROUNDS:
                self._stop_reason = (
                    f"the command agent failed {self._failed_rounds} times in a row "
                    f"(last: {proposal.refused}); see {run_dir / 'agent.log'}"
                )
        return None

    def interrupt(self) -> None:
        """nightlab is stopping (Ctrl-C, SIGTERM): the CLI's process tree is killed now, and the
        round in progress raises instead of proposing."""
        self._interrupted.set()

    def _round(self, context: Context) -> tuple[Proposal, Path]:
        """One run of the command on a fresh checkout of the incumbent."""
        scratch = self.tools.scratch(context.incumbent_commit)
        tree = scratch.path
        self._count += 1
        run_dir = self.tools.log_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._count}"
        try:
            ours = self._place_files(tree, context)
            result = self._run(tree, run_dir)
            try:
                changed = scratch.changed()
            except LostWorktree:  # made again by the reset below
                gone = "the command removed its own checkout (git worktree remove or prune)"
                proposal = Proposal(description="command agent: no checkout left", edits=[], refused=gone)
            else:
                proposal = self._proposal(tree, context, changed, ours, result, run_dir)
        finally:
            # The scratch tree goes back to the incumbent, our files gone; and what the CLI did
            # beyond it (a branch, a write to the user's checkout) is undone where safe.
            beyond = scratch.reset(run_dir / DISPLACED_DIR)
            for line in beyond:
                log.warning("command agent: round %d: the command %s", self._count, line)
        if beyond:
            proposal.meta["outside_checkout"] = beyond
        return proposal, run_dir

    def failed(self) -> bool:
        return self._stop_reason is not None  # it stops only after failing round after round

    def stop_reason(self) -> str | None:
        """Why it stopped: the command failed too many times in a row."""
        return self._stop_reason

    # -- steps --------------------------------------------------------------------------------
    def _place_files(self, tree: Path, context: Context) -> set[str]:
        """Write the context file (and program.md when the commit lacks it); return their names.

        An instructions file for working through ``nightlab try`` (``nightlab brief`` saved as
        CLAUDE.md or AGENTS.md) would contradict the context file here: it is set aside for the
        round (the scratch checkout is reset afterwards)."""
        ours = {CONTEXT_FILE, PROPOSAL_FILE}
        for name in BRIEF_FILES:
            path = tree / name
            if path.is_file() and BRIEF_MARK in path.read_text(errors="replace"):
                path.unlink()
                ours.add(name)
        (tree / CONTEXT_FILE).write_text(render_context(context, self.config))
        (tree / PROPOSAL_FILE).unlink(missing_ok=True)
        if not (tree / PROGRAM_FILE).exists() and context.program:
            (tree / PROGRAM_FILE).write_text(context.program)
            ours.add(PROGRAM_FILE)
        return ours

    def _run(self, tree: Path, run_dir: Path) -> RunResult:
        """The command in ``tree`` with the user's environment, bounded by ``[agent] timeout``."""
        spec = RunSpec(
            command=self.command,
            cwd=tree,
            run_dir=run_dir,
            seed=self.config.run.seed,
            timeout=self.timeout,
            env={"NIGHTLAB_CONTEXT_FILE": str(tree / CONTEXT_FILE), "NIGHTLAB_PROPOSAL_FILE": PROPOSAL_FILE},
            log_name="agent.log",
            allow_env=list(os.environ),  # the CLI needs its own key; see the module docstring
        )
        return self.tools.run(spec, self._interrupted)

    def _proposal(
        self,
        tree: Path,
        context: Context,
        changed: list[str],
        ours: set[str],
        result: RunResult,
        run_dir: Path,
    ) -> Proposal:
        """The edits the command left in the editable files, described, with what was reverted."""
        edits, outside, not_text = self._edits(tree, context, changed, ours)
        log_text = _read(run_dir / "agent.log")
        description, hypothesis = _described(_read(tree / PROPOSAL_FILE, PROPOSAL_FILE_BYTES))
        if not description:
            description, spoken = _described(log_text, last=True)
            hypothesis = hypothesis or spoken
        if not description:
            new_files = {**context.files, **{e.path: e.replace for e in edits}}
            added, removed = line_counts(context.files, new_files)
            names = ", ".join(e.path for e in edits) or "nothing"
            description = f"command agent: edited {names} (+{added} -{removed} lines)"
        if outside:
            hypothesis = (
                f"{hypothesis}\n\n(The command also changed {', '.join(outside)}, outside the editable "
                "files; those changes were reverted.)"
            ).strip()
        status, ending = self._ending(result)
        meta: dict = {
            "command": self.command,
            "exit_code": result.exit_code,
            "status": status,
            "seconds": round(result.total_seconds, 1),
            "log": str(run_dir / "agent.log"),
        }
        if ending:
            meta["reason"] = ending
        if outside:
            meta["reverted"] = outside
        refused = None
        deleted = [p.removesuffix(" (deleted)") for p in outside if p.endswith(" (deleted)")]
        if not_text:  # recorded as invalid, with the reason; it once failed as a codec error
            refused = (
                f"the command left {', '.join(not_text)}; nightlab proposes UTF-8 text only"
                if all("(not UTF-8" in p for p in not_text)
                else f"the command left {', '.join(not_text)}; nightlab proposes regular files of "
                f"UTF-8 text up to {MAX_FILE_BYTES // 2**20} MiB only"
            )
        elif status == "timeout":
            refused = f"the command {ending}"
            edits = []  # a half-finished edit is not an experiment
        elif edits:
            pass  # an error exit with edits in place (a CLI out of turns) still proposes them
        elif deleted:
            refused = f"the command deleted {', '.join(deleted)} (nightlab proposes changes, not deletions)"
        elif status != "ok":
            # Printed at once in a warning: the CLI's escape sequences must not reach the terminal.
            tail = terminal_safe(log_text[-300:], allow="\n").strip().replace("\n", " | ")
            refused = f"the command {ending}: {tail}" if tail else f"the command {ending}"
        else:
            refused = "the command changed no editable file"
        meta["changed"] = [e.path for e in edits]
        return Proposal(
            description=description, edits=edits, hypothesis=hypothesis, meta=meta, refused=refused
        )

    def _ending(self, result: RunResult) -> tuple[str, str]:
        """How the CLI ended, as the agent's own words: ``ok``, ``timeout``, ``error`` (an exit
        code) or ``killed``, and a phrase for the reason. Not the training run's statuses: a
        CLI's exit code 3 is an error, not a NaN loss."""
        code = result.exit_code
        if result.status is RunStatus.TIMEOUT:
            return "timeout", f"timed out after {self.timeout:g} s ([agent] timeout)"
        if code == 0:
            return "ok", ""
        if code is not None and code > 0:
            return "error", f"exited with code {code}"
        return "killed", f"was killed ({result.reason or 'no exit code'})"

    def _edits(
        self, tree: Path, context: Context, changed: list[str], ours: set[str]
    ) -> tuple[list[Edit], list[str], list[str]]:
        """Whole-file edits of the changed editable files, the other paths it touched (sorted), and
        the edited files that are not UTF-8 text (each with where it stops being so)."""
        editable, frozen = context.editable, context.frozen

        def in_scope(path: str) -> bool:
            return is_editable(path, editable, frozen)

        mine = [p.rstrip("/") for p in changed if p.rstrip("/") not in ours and not p.startswith(TOOL_FILES)]
        outside = sorted(_shown(p) for p in mine if not in_scope(p))
        # Every editable file is compared, not only those git reports: a CLI that commits its
        # work (Aider does by default) leaves a clean status, but its files still differ.
        present = [p for p in match_files(tree, editable) if in_scope(p)]
        edits: list[Edit] = []
        not_text: list[str] = []
        for path in sorted({*present, *(p for p in mine if in_scope(p)), *context.files}):
            if _shown(path) != path:  # a name git handed over as bytes that are not UTF-8
                not_text.append(f"{_shown(path)} (a name that is not UTF-8)")
                continue
            target = tree / path
            if not (target.exists() or target.is_symlink()):
                outside.append(f"{path} (deleted)")  # nightlab proposes changes, not deletions
                continue
            data, unusable = _read_edited(tree, path)
            if unusable:
                not_text.append(f"{path} ({unusable})")
                continue
            # As git hands files over: a byte that is not UTF-8 as a lone surrogate, kept as it
            # was when the commit is made. A file the incumbent already holds so (Latin-1 with its
            # coding line) is proposed; one the CLI made so is refused, saying where.
            text = data.decode("utf-8", errors="surrogateescape")
            if text == context.files.get(path):
                continue
            edits.append(Edit(path=path, replace=text))
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if _shown(context.files.get(path, "")) == context.files.get(path, ""):
                    line = data[: exc.start].count(b"\n") + 1
                    not_text.append(f"{path} (not UTF-8: byte 0x{data[exc.start]:02x} on line {line})")
        return edits, outside, not_text


def _shown(path: str) -> str:
    """``path`` as text that can be stored and printed: a byte of a name that is not UTF-8 (git
    hands it over as a lone surrogate, which the ledger cannot store) as ``\\xff``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_edited(tree: Path, path: str) -> tuple[bytes, str]:
    """The bytes of an edited file, or why they are not read: a symlink (to a file outside the
    tree, /dev/zero), a FIFO, a folder on the way that leads out of the tree, or a file over
    :data:`MAX_FILE_BYTES`. The CLI decides what each path is; the harness reads only regular
    files inside its checkout, and never an unbounded amount."""
    target = tree / path
    if not Path(os.path.realpath(target)).is_relative_to(os.path.realpath(tree)):
        return b"", f"leads outside the checkout, to {os.path.realpath(target)}"
    try:
        data = safefile.read_bytes(target, MAX_FILE_BYTES + 1)
    except safefile.NotRegularFile as exc:
        link = f" to {os.readlink(target)}" if target.is_symlink() else ""
        return b"", f"{exc.strerror.replace(', not', link + ', not', 1)}"
    except OSError as exc:
        return b"", f"unreadable: {exc.strerror}"
    if len(data) > MAX_FILE_BYTES:
        return b"", f"over {MAX_FILE_BYTES // 2**20} MiB"
    return data, ""


def _read(path: Path, limit: int | None = None) -> str:
    """A regular file's text (its first ``limit`` bytes); "" for anything else. The proposal file
    is the CLI's to make: a link to /dev/zero there hung the harness reading it."""
    try:
        return safefile.read_text(path, limit)
    except OSError:  # missing, a link, a FIFO, a folder
        return ""


_FIELD_RE = re.compile(r"^\s*[*_#>\- ]*(description|hypothesis)\s*[*_]*\s*:\s*(.*)$", re.IGNORECASE)


def _described(text: str, last: bool = False) -> tuple[str, str]:
    """``Description:`` and ``Hypothesis:`` from a text (the last ones in a log, the first in a file)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _FIELD_RE.match(line)
        if match and match.group(2).strip():
            key = match.group(1).lower()
            if last or key not in found:
                found[key] = match.group(2).strip().strip("*_`\"'").strip()
    return found.get("description", "")[:200], bounded_hypothesis(found.get("hypothesis", ""))


def render_context(context: Context, config: Config) -> str:
    """NIGHTLAB_CONTEXT.md: instructions, state, history table, kept diffs and the last crash."""
    editable = ", ".join(sorted(context.files)) or ", ".join(context.editable)
    parts = [
        INSTRUCTIONS.format(editable=editable, proposal=PROPOSAL_FILE, metric=context.metric_name),
        "## State\n\n" + _state(context),
    ]
    if context.history:
        rows = [
            f"| id | description | {context.metric_name} | improvement ± se | runs | decision | reason |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in context.history[-60:]:
            rows.append(
                f"| {e.id} | {_cell(e.description)} | {general(e.metric)} | {_delta(e)} | {e.runs} "
                f"| {e.decision or e.status} | {_cell(e.reason, 80)} |"
            )
        older = len(context.history) - 60
        note = f"({older} older experiments not shown)\n\n" if older > 0 else ""
        parts.append(
            "## History (oldest first; improvement > 0 means better than the best of the time)\n\n"
            + note
            + "\n".join(rows)
        )
    kept = [e for e in context.history if e.decision == "keep" and e.diff.strip()][-5:]
    if kept:
        diffs = [f"### #{e.id} {_cell(e.description)}\n```diff\n{e.diff.strip()[:4000]}\n```" for e in kept]
        parts.append("## Kept changes (most recent five)\n\n" + "\n\n".join(diffs))
    crashed = [e for e in context.history if e.status in ("crash", "timeout", "oom", "nan") and e.log_tail]
    if crashed:
        e = crashed[-1]
        tail = e.log_tail[-LOG_TAIL_CHARS:].rstrip()
        parts.append(f"## Tail of the last crash's log (#{e.id} {_cell(e.description)})\n\n```\n{tail}\n```")
    return "\n\n".join(parts) + "\n"


def _state(context: Context) -> str:
    arrow = "lower" if context.direction == "minimize" else "higher"
    budget = []
    if context.experiments_left is not None:
        budget.append(f"{context.experiments_left} experiments")
    if context.seconds_left is not None:
        budget.append(f"{context.seconds_left / 3600:.1f} hours")
    noise = (
        f"one run's {context.metric_name} varies by about ±{general(context.noise)} (std)"
        if context.noise is not None
        else "not measured yet"
    )
    return "\n".join(
        [
            f"- metric: {context.metric_name} ({arrow} is better)",
            f"- best so far: {general(context.best)}",
            f"- noise floor: {noise}",
            "- budget left: " + (" / ".join(budget) if budget else "open-ended"),
            f"- experiments so far: {len(context.history)}",
        ]
    )


def _cell(text: str, limit: int = 90) -> str:
    flat = " ".join((text or "").split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _delta(entry: HistoryEntry) -> str:
    if entry.delta is None:
        return "—"
    spread = f" ± {entry.spread:.2g}" if entry.spread is not None else ""
    return f"{entry.delta:+.4g}{spread}"


def _make(settings: CommandSettings, setup: AgentSetup) -> Agent:
    if setup.tools is None:
        raise UserError("the command agent needs a scratch checkout from the session (AgentSetup.tools)")
    return CommandAgent(settings, setup.config, setup.tools)


KINDS = (Kind("command", _make, CommandSettings, "a coding CLI (Claude Code, Codex, Aider) run headless"),)
