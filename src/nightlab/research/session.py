"""The session: from a workspace directory and CLI overrides to the parts of a research session.

This is the one place that builds the executor, the agent, the policy and the frozen check, for
``nightlab run`` and ``try`` (:func:`build_loop`) and for the side studies (:meth:`Session.runs`).
Everything a user can get wrong is checked here, before any training starts, so a bad
configuration costs a second and one line of output, not a night.
"""

from __future__ import annotations

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
from nightlab.config import Config, check_workspace_files, load_config
from nightlab.errors import UserError
from nightlab.events import EventSink
from nightlab.executor import sandbox
from nightlab.executor.base import Executor
from nightlab.executor.registry import EXECUTORS, make_executor
from nightlab.research.loop import ResearchLoop
from nightlab.research.policy import POLICIES, make_policy
from nightlab.research.runner import ReplicateRunner
from nightlab.research.tools import SessionTools
from nightlab.store.ledger import Ledger
from nightlab.types import RunSpec, RunStatus
from nightlab.workspace.git import Workspace, run_worktree
from nightlab.workspace.integrity import FrozenCheck, frozen_paths, hash_paths

LEDGER_NAME = "ledger.db"
SETUP_TIMEOUT = 3600  # data preparation may download and tokenize; an hour is generous


@dataclass
class Session:
    """A workspace opened for one research tag: its config, git, ledger, and the parts built once."""

    root: Path
    config: Config
    workspace: Workspace
    ledger: Ledger
    tag: str
    _executor: Executor | None = field(default=None, repr=False)

    @property
    def executor(self) -> Executor:
        """The configured executor (``[executor] kind``), built on first use."""
        if self._executor is None:
            self._executor = make_executor(self.config)
        return self._executor

    def check_runnable(self) -> None:
        """What must hold before anything runs: the globs match, the commands exist, the sandbox
        is there when required."""
        check_workspace_files(self.config, self.root)
        check_run_command(self.config, self.root)
        sandbox.check(self.config.run.sandbox)

    def runner(self, worktree: str, reference: str) -> ReplicateRunner:
        """A replicate runner in ``worktree`` whose frozen check is ``reference``'s frozen files.

        Checks the reference out, hashes its frozen files and runs the target's one-off setup
        (call :meth:`check_runnable` first). :meth:`ReplicateRunner.with_config` gives a runner
        of the same worktree and check with another budget or environment (a study at scale).
        """
        tree = self.workspace.worktree(worktree)
        self.workspace.checkout(tree, reference)
        frozen = FrozenCheck(hash_paths(tree, frozen_paths(self.config, tree)))
        self.run_setup(tree)
        return ReplicateRunner(self.config, self.workspace, self.executor, frozen, worktree)

    def run_setup(self, tree: Path) -> None:
        """The target's one-off setup (data preparation), run once per workspace, before the baseline."""
        command = self.config.target.setup
        if not command or self.ledger.get_meta("setup_done") == command:
            return
        run_dir = self.workspace.state_dir / "setup"
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = RunSpec(
            command=command,
            cwd=tree,
            run_dir=run_dir,
            seed=self.config.run.seed,
            timeout=SETUP_TIMEOUT,
            env=dict(self.config.target.env),
            log_name="setup.log",
            allow_env=list(self.config.run.allow_env),
        )
        result = self.executor.run(spec)
        if result.status is not RunStatus.OK:
            raise UserError(
                f"setup command `{command}` failed ({result.status.value}: {result.reason}); "
                f"see {run_dir / 'setup.log'}"
            )
        self.ledger.set_meta("setup_done", command)

    def agent(self) -> Agent:
        """The configured agent, with the tools the session lends (a scratch checkout, a runner)."""
        return make_agent(AgentSetup(self.config, self.root, SessionTools(self.workspace)))


def default_tag() -> str:
    """autoresearch-style tags: the date, e.g. ``nov22``."""
    return time.strftime("%b%d").lower()


def open_session(
    root: Path, tag: str | None = None, agent_kind: str | None = None, must_exist: bool = False
) -> Session:
    """Load config, git and ledger for ``root``; pick the tag (explicit, configured, or last used)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise UserError(f"{root}: no such directory; create a workspace with `nightlab init {root}`")
    config = load_config(root)
    if agent_kind:
        config.agent.kind = agent_kind
    check_kinds(config)
    workspace = Workspace(root)
    ledger_path = workspace.state_dir / LEDGER_NAME
    if must_exist and not ledger_path.exists():
        raise UserError(
            f"{root}: no experiments yet (no {ledger_path.relative_to(root)}); start with `nightlab run {root}`"
        )
    ledger = Ledger(ledger_path)
    chosen = tag or config.run.tag or ledger.get_meta("current_tag") or default_tag()
    _check_tag(chosen)
    return Session(root, config, workspace, ledger, chosen)


def check_kinds(config: Config) -> None:
    """The pluggable tables ([agent], [policy], [executor]): known kinds, valid settings."""
    AGENTS.check(config.agent)
    POLICIES.check(config.policy)
    EXECUTORS.check(config.executor)


def _check_tag(tag: str) -> None:
    if not tag or any(c in tag for c in " ~^:?*[\\") or tag.startswith(("-", "/")) or ".." in tag:
        raise UserError(
            f"--tag '{tag}': use letters, digits, '-', '_' or '/' (it names the branch nightlab/<tag>)"
        )


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


def start_commit(session: Session) -> str:
    """The commit the tag's research starts from: recorded at the first run, HEAD before that."""
    ledger, workspace, tag = session.ledger, session.workspace, session.tag
    start = ledger.get_meta(f"start_commit:{tag}")
    if start is None:
        if workspace.branch_commit(tag) is not None:
            raise UserError(
                f"branch nightlab/{tag} exists but the ledger has no record of it: "
                f"choose another --tag, or see docs/RECOVERY.md to rebuild the ledger"
            )
        start = workspace.head_commit()
        ledger.set_meta(f"start_commit:{tag}", start)
    ledger.set_meta("current_tag", tag)
    ledger.set_meta("metric_name", session.config.metric.name)
    ledger.set_meta("direction", session.config.metric.direction.value)
    return start


def build_loop(
    session: Session,
    events: EventSink | None = None,
    should_stop: Callable[[], bool] | None = None,
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
    start = start_commit(session)
    runner = session.runner(run_worktree(0), start)
    return ResearchLoop(
        config=session.config,
        workspace=session.workspace,
        ledger=session.ledger,
        agent=agent if agent is not None else session.agent(),
        policy=make_policy(session.config.policy),
        runner=runner,
        tag=session.tag,
        start_commit=start,
        events=events,
        should_stop=should_stop,
    )
