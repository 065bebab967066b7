"""Wiring: from a workspace directory and CLI overrides to a ready :class:`ResearchLoop`.

Everything a user can get wrong is checked here, before any training starts, so a bad
configuration costs a second and one line of output, not a night.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nightlab.agents.base import Agent
from nightlab.agents.registry import make_agent
from nightlab.config import Config, check_workspace_files, load_config
from nightlab.errors import UserError
from nightlab.events import EventSink
from nightlab.executor import sandbox
from nightlab.executor.local import LocalExecutor
from nightlab.research.loop import ResearchLoop
from nightlab.research.policy import make_policy
from nightlab.research.runner import ReplicateRunner
from nightlab.store.ledger import Ledger
from nightlab.types import RunSpec, RunStatus
from nightlab.workspace.git import Workspace
from nightlab.workspace.integrity import FrozenCheck, frozen_paths, hash_paths

LEDGER_NAME = "ledger.db"


@dataclass
class Session:
    root: Path
    config: Config
    workspace: Workspace
    ledger: Ledger
    tag: str


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


def _check_tag(tag: str) -> None:
    if not tag or any(c in tag for c in " ~^:?*[\\") or tag.startswith(("-", "/")) or ".." in tag:
        raise UserError(
            f"--tag '{tag}': use letters, digits, '-', '_' or '/' (it names the branch nightlab/<tag>)"
        )


def check_run_command(config: Config, root: Path) -> None:
    """Catch a run command that cannot start: unknown program, or a script file that is missing."""
    for field, command in (("run", config.target.run), ("evaluate", config.target.evaluate)):
        if not command:
            continue
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise UserError(f"nightlab.toml: [target] {field}: cannot parse command ({exc})") from None
        words = [w for w in words if "=" not in w or w.startswith(("-", "/", "."))] or words
        program = words[0]
        path = [str(Path(sys.executable).parent)] + (os.environ.get("PATH", "").split(":"))
        if "/" in program:
            found = (root / program).exists() or Path(program).exists()
        else:
            found = shutil.which(program, path=":".join(path)) is not None
        if not found:
            raise UserError(
                f"nightlab.toml: [target] {field}: program '{program}' not found (command: {command})"
            )
        for word in words[1:]:
            if word.endswith((".py", ".sh")) and not word.startswith("-") and not (root / word).exists():
                raise UserError(f"nightlab.toml: [target] {field}: file '{word}' not found in {root}")


def build_loop(
    session: Session,
    events: EventSink | None = None,
    should_stop=None,
    *,
    agent: Agent | None = None,
    check_clean: bool = True,
) -> ResearchLoop:
    """Validate the workspace and assemble the loop; runs the one-off setup command if needed.

    ``agent`` replaces the configured one (``nightlab try`` and the MCP server bring their own
    proposals); ``check_clean=False`` is for callers that check the user's tree themselves
    (``try`` allows uncommitted edits to the editable files, the MCP server never reads them).
    """
    config, workspace, ledger, tag = session.config, session.workspace, session.ledger, session.tag
    root = session.root
    check_workspace_files(config, root)
    check_run_command(config, root)
    sandbox.check(config.run.sandbox)  # "required" without a sandbox stops here, before any run
    if check_clean:
        workspace.ensure_clean()

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
    ledger.set_meta("metric_name", config.metric.name)
    ledger.set_meta("direction", config.metric.direction.value)

    limits = config.run
    executor = LocalExecutor(
        memory_limit_mb=limits.memory_limit_mb,
        log_limit_bytes=int(limits.log_limit_mb * 1e6),
        run_dir_limit_bytes=int(limits.run_dir_limit_mb * 1e6) if limits.run_dir_limit_mb else None,
    )
    tree = workspace.worktree(0)
    workspace.checkout(tree, start)
    frozen = FrozenCheck(hash_paths(tree, frozen_paths(config, tree)))
    run_setup(session, executor, tree)

    agent = agent if agent is not None else make_agent(config, root)
    runner = ReplicateRunner(config, workspace, executor, frozen)
    return ResearchLoop(
        config=config,
        workspace=workspace,
        ledger=ledger,
        agent=agent,
        policy=make_policy(config.policy),
        runner=runner,
        tag=tag,
        start_commit=start,
        events=events,
        should_stop=should_stop,
    )


def run_setup(session: Session, executor: LocalExecutor, tree: Path) -> None:
    """The target's one-off setup (data preparation), run once per workspace, before the baseline."""
    command = session.config.target.setup
    if not command or session.ledger.get_meta("setup_done") == command:
        return
    run_dir = session.workspace.state_dir / "setup"
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(
        command=command,
        cwd=tree,
        run_dir=run_dir,
        seed=session.config.run.seed,
        timeout=3600,
        env=dict(session.config.target.env),
        log_name="setup.log",
        allow_env=list(session.config.run.allow_env),
    )
    result = executor.run(spec)
    if result.status is not RunStatus.OK:
        raise UserError(
            f"setup command `{command}` failed ({result.status.value}: {result.reason}); "
            f"see {run_dir / 'setup.log'}"
        )
    session.ledger.set_meta("setup_done", command)
