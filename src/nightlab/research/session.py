"""The session: from a workspace directory and CLI overrides to the parts of a research session.

This is the one place that builds the executor, the agent, the policy and the frozen check, for
``nightlab run`` and ``try`` (:func:`build_loop`) and for the side studies (:meth:`Session.runs`).
Everything a user can get wrong is checked here, before any training starts, so a bad
configuration costs a second and one line of output, not a night.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nightlab.agents.base import Agent, AgentSetup
from nightlab.agents.registry import AGENTS, make_agent
from nightlab.code.flags import flag_files
from nightlab.config import TAG_RULE, Config, check_workspace_files, load_config, valid_tag, workspace_root
from nightlab.config.environ import check_inherited_environment
from nightlab.errors import UserError, shell_word
from nightlab.events import Event, EventSink
from nightlab.executor import sandbox
from nightlab.executor.base import Executor
from nightlab.executor.registry import EXECUTORS, make_executor
from nightlab.executor.slots import Slot, oversubscribed, slots_for
from nightlab.paths import is_editable
from nightlab.research.context import editable_texts
from nightlab.research.loop import ResearchLoop
from nightlab.research.policy import POLICIES, make_policy
from nightlab.research.pruning import PRUNERS
from nightlab.research.runner import ReplicateRunner
from nightlab.research.setup import SetupData, prepare_setup, setup_version
from nightlab.research.tools import SessionTools
from nightlab.store.ledger import Ledger
from nightlab.workspace.git import Workspace, run_worktree
from nightlab.workspace.integrity import FrozenCheck, frozen_paths, hash_paths
from nightlab.workspace.lock import WorkspaceLock, acquire, holder

LEDGER_NAME = "ledger.db"


@dataclass
class Session:
    """A workspace opened for one research tag: its config, git, ledger, and the parts built once."""

    root: Path
    config: Config
    workspace: Workspace
    ledger: Ledger
    tag: str
    _executor: Executor | None = field(default=None, repr=False)
    _lock: WorkspaceLock | None = field(default=None, repr=False)

    @property
    def executor(self) -> Executor:
        """The configured executor (``[executor] kind``), built on first use."""
        if self._executor is None:
            self._executor = make_executor(self.config)
        return self._executor

    def check_runnable(self) -> None:
        """What must hold before anything runs: no other harness in the workspace (its lock is
        held from here on, for the session's life), the globs match, the commands exist, the
        sandbox is there when required."""
        if self._lock is None:
            self._lock = acquire(self.workspace.state_dir)
        check_workspace_files(self.config, self.root)
        check_inherited_environment(os.environ)  # a stale NIGHTLAB_BUDGET_* would reach every run
        check_run_command(self.config, self.root)
        check_flag_files(self.config, self.root)
        sandbox.check(self.config.run.sandbox)
        self.slots()  # more workers than the GPUs hold: said now, not after the setup

    def close(self) -> None:
        """Release the workspace lock and close the ledger (a process that opens the same workspace
        again, a benchmark taking turns between workspaces; the CLI just exits)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.ledger.close()

    def runner(self, worktree: str, reference: str) -> ReplicateRunner:
        """A replicate runner in ``worktree`` whose frozen check is ``reference``'s frozen files.

        Checks the reference out, hashes its frozen files and runs the target's setup for that
        version of the frozen files, once (call :meth:`check_runnable` first).
        :meth:`ReplicateRunner.with_config` gives a runner of the same worktree, check and setup
        data with another budget or environment (a study at scale).
        """
        tree = self.workspace.worktree(worktree)
        self.workspace.checkout(tree, reference)
        frozen = FrozenCheck(hash_paths(tree, frozen_paths(self.config, tree)))
        if self.remote:  # each node runs the setup itself, once per frozen-files version
            from nightlab.research.remote import RemoteReplicateRunner

            local = ReplicateRunner(self.config, self.workspace, self.executor, frozen, worktree)
            return RemoteReplicateRunner(local, self.executor)  # type: ignore[return-value]
        setup = self.setup_data(reference, frozen.expected)
        return ReplicateRunner(self.config, self.workspace, self.executor, frozen, worktree, setup=setup)

    @property
    def remote(self) -> bool:
        """Whether replicates run on other machines (a cluster executor such as ``ray``): the
        harness then ships each one there instead of running it in a local worktree."""
        return bool(getattr(self.executor, "runs_remotely", False))

    def slots(self) -> list[Slot]:
        """Where replicates run at once: a cluster executor's own count (it places runs itself),
        else ``[run]``'s slots on this machine (devices, cores)."""
        if self.remote:
            return self.executor.slots(self.config)  # type: ignore[attr-defined]
        return slots_for(self.config)

    def setup_data(self, reference: str, frozen_hashes: dict[str, str]) -> SetupData | None:
        """What the setup command made for this version of the frozen files (it runs the first time)."""
        command = self.config.target.setup
        if not command:
            return None
        return prepare_setup(
            self.workspace,
            self.executor,
            command,
            reference,
            setup_version(command, frozen_hashes),
            env=dict(self.config.target.env),
            allow_env=list(self.config.run.allow_env),
            seed=self.config.run.seed,
        )

    def agent(self) -> Agent:
        """The configured agent, with the tools the session lends (a scratch checkout, a runner)."""
        return make_agent(AgentSetup(self.config, self.root, SessionTools(self.workspace)))


def default_tag() -> str:
    """autoresearch-style tags: the date, e.g. ``nov22``."""
    return time.strftime("%b%d").lower()


def open_session(
    root: Path,
    tag: str | None = None,
    agent_kind: str | None = None,
    must_exist: bool = False,
    view: bool = False,
) -> Session:
    """Load config, git and ledger for ``root``; pick the tag (explicit, configured, or last used).

    ``view``: for a command that shows a tag rather than researches it (status, report), which
    picks it with :func:`view_tag`.
    """
    root = workspace_root(root)
    if tag is not None:
        check_tag(tag)  # before anything is read or made: an empty --tag is no default either
    if agent_kind and agent_kind not in AGENTS.names():
        # Named on the command line, so the command line is what to fix, not nightlab.toml.
        raise UserError(f"--agent '{agent_kind}': unknown agent (choose from {', '.join(AGENTS.names())})")
    config = load_config(root)
    if agent_kind:
        config.agent.kind = agent_kind
    check_kinds(config)
    workspace = Workspace(root)
    ledger_path = workspace.state_dir / LEDGER_NAME
    lost = "missing" if not ledger_path.exists() else "empty" if ledger_path.stat().st_size == 0 else ""
    if lost and workspace.experiment_refs():
        # Experiments were recorded: the ledger is lost, not unborn. A new one would number its
        # experiments from 1 again, over the records `recover` rebuilds the old ones from.
        raise UserError(
            f"{root}: {ledger_path.relative_to(root)} is {lost}, but git holds experiments of "
            f"nightlab: rebuild the ledger with `nightlab recover {shell_word(root)}` (docs/RECOVERY.md)"
        )
    if must_exist and not ledger_path.exists():
        raise UserError(
            f"{root}: no experiments yet (no {ledger_path.relative_to(root)}); start with `nightlab run {shell_word(root)}`"
        )
    ledger = Ledger(ledger_path, read_only_ok=view)
    if view:
        chosen = view_tag(ledger, workspace.state_dir, tag, config.run.tag)
    else:
        chosen = tag or config.run.tag or ledger.get_meta("current_tag") or default_tag()
    check_tag(chosen)
    return Session(root, config, workspace, ledger, chosen)


def view_tag(
    ledger: Ledger,
    state_dir: Path,
    tag: str | None = None,
    configured: str | None = None,
    strict: bool = True,
) -> str:
    """The tag ``status``, ``report``, the dashboard and ``export`` show.

    A tag given (``--tag``) or configured (``[run] tag``) must have experiments when ``strict``:
    a misspelt one would show an empty table, and ``report`` would write an empty report. Else
    the last tag run, unless it has no baseline and no harness runs it (a run killed before its
    baseline): then the newest tag whose baseline stands, so the night that has results is the
    one shown.
    """
    tags = ledger.research_tags()
    named = tag or configured
    if named:
        if strict and named not in tags:
            where = "" if tag else " ([run] tag in nightlab.toml)"
            newest = list(reversed(tags))
            known = ", ".join(newest[:8]) + (", ..." if len(newest) > 8 else "")
            known = known or "none yet; start with `nightlab run`"
            raise UserError(f"no experiments under tag '{named}'{where} (tags: {known})")
        return named
    last = ledger.get_meta("current_tag")
    if last is not None and (tags.get(last) or holder(state_dir) is not None):
        return last
    based = [name for name, has_baseline in tags.items() if has_baseline]
    return based[-1] if based else last or default_tag()


def check_kinds(config: Config) -> None:
    """The pluggable tables ([agent], [policy], [executor]): known kinds, valid settings."""
    AGENTS.check(config.agent)
    POLICIES.check(config.policy)
    EXECUTORS.check(config.executor)
    PRUNERS.check(config.pruner)


def check_tag(tag: str) -> None:
    """One line naming ``--tag`` when ``tag`` cannot name the branch ``nightlab/<tag>``."""
    if not valid_tag(tag):
        raise UserError(f"--tag '{tag}': {TAG_RULE} (it names the branch nightlab/<tag>)")


def check_run_command(config: Config, root: Path) -> None:
    """Catch a run command that cannot start: unknown program, or a script file that is missing."""
    for name, command in (("run", config.target.run), ("evaluate", config.target.evaluate)):
        if not command:
            continue
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise UserError(f"nightlab.toml: [target] {name}: cannot parse command ({exc})") from None
        words = [w for w in words if "=" not in w or w.startswith(("-", "/", "."))] or words
        program = words[0]
        path = [str(Path(sys.executable).parent)] + (os.environ.get("PATH", "").split(":"))
        if "/" in program:
            found = (root / program).exists() or Path(program).exists()
        else:
            found = shutil.which(program, path=":".join(path)) is not None
        if not found:
            raise UserError(
                f"nightlab.toml: [target] {name}: program '{program}' not found (command: {command})"
            )
        for word in words[1:]:
            if word.endswith((".py", ".sh")) and not word.startswith("-") and not (root / word).exists():
                raise UserError(f"nightlab.toml: [target] {name}: file '{word}' not found in {root}")


def check_flag_files(config: Config, root: Path) -> None:
    """Each ``{flags:FILE}`` of the run command names an editable file that exists."""
    target = config.target
    for path in flag_files(target.run):
        if not is_editable(path, target.editable, target.frozen):
            raise UserError(
                f"nightlab.toml: [target] run: {{flags:{path}}}: {path} must be an editable file "
                "(add it to [target] editable) so that agents can change the flags"
            )
        if not (root / path).is_file():
            raise UserError(f"nightlab.toml: [target] run: {{flags:{path}}}: {path} not found in {root}")


def start_commit(session: Session, events: EventSink | None = None) -> str:
    """The commit the tag's research starts from: recorded at the first run, HEAD before that.

    While the tag has no successful baseline, a run starts again from HEAD: a user who fixed a
    failing target commits the fix and runs again, and is told so. Once the baseline stands,
    the tag keeps its start; a user whose checkout moved on is told how to start afresh.
    """
    ledger, workspace, tag = session.ledger, session.workspace, session.tag
    notices = events or EventSink()
    start = ledger.get_meta(f"start_commit:{tag}")
    head = workspace.head_commit()
    if start is None:
        if workspace.branch_commit(tag) is not None:
            raise UserError(
                f"branch nightlab/{tag} exists but the ledger has no record of it: "
                f"choose another --tag, or rebuild the ledger with `nightlab recover {shell_word(session.root)}` (docs/RECOVERY.md)"
            )
        start = head
        ledger.set_meta(f"start_commit:{tag}", start)
    elif start != head and ledger.incumbent(tag) is None:
        notices.emit(
            Event(
                "notice",
                f"the baseline of nightlab/{tag} has not succeeded yet: starting again from {head[:12]}",
            )
        )
        start = head
        ledger.set_meta(f"start_commit:{tag}", start)
    elif start != head and not workspace.is_ancestor(head, workspace.branch_commit(tag) or start):
        notices.emit(
            Event(
                "notice",
                f"nightlab/{tag} continues from its start {start[:12]}; your checkout ({head[:12]}) is not "
                f"in it: run with --tag NEW to research from your checkout",
            )
        )
    _same_measure(session)
    if tag in ledger.research_tags():  # a new tag becomes the last used with its baseline's row
        ledger.set_meta("current_tag", tag)
    ledger.set_meta("metric_name", session.config.metric.name)
    ledger.set_meta("direction", session.config.metric.direction.value)
    return start


def measure_of(config: Config) -> dict[str, object]:
    """What makes two runs comparable, as ``nightlab.toml`` sets it: the training budget and the
    metric (its name and direction). The timeouts are not in it: they stop a run, not measure it."""
    budget = config.budget
    return {
        "budget": {
            k: getattr(budget, k) for k in ("seconds", "tokens", "steps", "flops") if getattr(budget, k)
        },
        "metric": config.metric.name,
        "direction": config.metric.direction.value,
    }


def _same_measure(session: Session) -> None:
    """Refuse to continue a tag whose baseline was measured under another budget or metric: every
    later candidate would be compared with runs that measured something else. Recorded when the
    tag's baseline stands (tags older than the record get it on their next run)."""
    ledger, tag = session.ledger, session.tag
    key = f"measure:{tag}"
    text = json.dumps(measure_of(session.config), sort_keys=True)
    recorded = ledger.get_meta(key)
    if recorded is None or ledger.incumbent(tag) is None:
        ledger.set_meta(key, text)
        return
    before, now = json.loads(recorded), json.loads(text)  # compared as the ledger holds them
    changed = [
        f"{name} {_shown(before.get(name))} → {_shown(now.get(name))}"
        for name in ("budget", "metric", "direction")
        if before.get(name) != now.get(name)
    ]
    if not changed:
        return
    raise UserError(
        f"nightlab.toml changed what nightlab/{tag} measures since its baseline ({'; '.join(changed)}): "
        f"its results would not be comparable; research under a new tag (--tag NEW), or restore it"
    )


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return (
            ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in value.items())
            or "none"
        )
    return str(value)


def warn_about_the_metric(session: Session, events: EventSink | None) -> None:
    """Say once per tag when the metric is read from the training log with no separate
    evaluation: the agent's own code writes that log, so nothing frozen measures the result."""
    config, ledger, key = session.config, session.ledger, f"warning:log_metric:{session.tag}"
    if config.metric.source != "regex" or config.target.evaluate or ledger.get_meta(key):
        return
    message = (
        "the metric is read from the training log, which the agent's code writes: the audit refuses "
        "proposals that print text [metric] pattern reads, but only a frozen evaluate step in its own "
        "process measures the result honestly ([target] evaluate; docs/ARBITRARY_TARGETS.md)"
    )
    ledger.set_meta(key, message)
    (events or EventSink()).emit(Event("notice", f"warning: {message}"))


def exposed_workspace(session: Session) -> str | None:
    """Why the sandbox cannot protect this workspace, when it lies in the scratch space it
    leaves writable to every run (``/tmp``, ``/dev/shm``): a run could then change the
    repository's ``.git`` (its config names programs git runs) or the ledger, unseen. Said when
    the user asked for the sandbox (``sandbox = "required"``), whose protection they count on;
    with the default ``auto`` the docs say it, and a scratch workspace (a test's, a demo's) is
    not told on every command."""
    if session.config.run.sandbox != "required" or sandbox.check("required") is None:
        return None
    root = session.root.resolve()
    for scratch in sandbox.SCRATCH:
        if root.is_relative_to(Path(scratch).resolve()):
            return (
                f"the workspace lies in {scratch}, which the sandbox leaves writable to runs: a run "
                f"could change its repository (.git) or ledger; keep workspaces out of {scratch} for "
                "unattended nights (docs/SECURITY.md)"
            )
    return None


def build_loop(
    session: Session,
    events: EventSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    wants_quiet: Callable[[], bool] | None = None,
    *,
    agent: Agent | None = None,
    check_clean: bool = True,
) -> ResearchLoop:
    """Validate the workspace and assemble the loop; runs the one-off setup command if needed.

    ``agent`` replaces the configured one (``nightlab try`` and the MCP server bring their own
    proposals); ``check_clean=False`` is for callers that check the user's tree themselves
    (``try`` allows uncommitted edits to the editable files, the MCP server never reads them).
    """
    session.check_runnable()
    if check_clean:
        session.workspace.ensure_clean()
    start = start_commit(session, events)
    warn_about_the_metric(session, events)
    crowded = None if session.remote else oversubscribed(session.slots())
    hidden = sandbox.hiding_problem(session.config.run.sandbox, session.config.target.private)
    for problem in (crowded, None if session.remote else exposed_workspace(session), hidden):
        if problem:
            (events or EventSink()).emit(Event("notice", f"warning: {problem}"))
    agent = agent if agent is not None else session.agent()
    agent.check(editable_texts(session.config, session.workspace, start))  # before setup and baseline
    runner = session.runner(run_worktree(0), start)
    return ResearchLoop(
        config=session.config,
        workspace=session.workspace,
        ledger=session.ledger,
        agent=agent,
        policy=make_policy(session.config.policy),
        runner=runner,
        tag=session.tag,
        start_commit=start,
        events=events,
        should_stop=should_stop,
        wants_quiet=wants_quiet,
        slots=session.slots(),
    )
