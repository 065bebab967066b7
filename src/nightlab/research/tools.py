"""What the session lends agents: a scratch checkout and a process runner (:class:`AgentTools`).

Agents run nothing and drive no git themselves (DESIGN.md). A coding CLI still has to edit
files somewhere and run under a deadline; this is where it gets both, from the same worktree
management the runs use and the same process handling the executor uses, so its process tree
is killed at the deadline exactly as a training run's is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nightlab.executor.process import Limits, run_process
from nightlab.types import RunResult, RunSpec
from nightlab.workspace.git import AGENT_WORKTREE, Workspace

# A coding CLI asked to stop gets two seconds before SIGKILL: it holds no training state.
AGENT_LIMITS = Limits(grace_seconds=2.0)


@dataclass
class ScratchCheckout:
    """The agent's worktree, checked out at one commit."""

    workspace: Workspace
    path: Path

    def changed(self) -> list[str]:
        return self.workspace.modified_tracked_files(self.path)

    def reset(self) -> None:
        self.workspace.restore(self.path)


class SessionTools:
    """:class:`~nightlab.agents.base.AgentTools` over a workspace."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def scratch(self, commit: str) -> ScratchCheckout:
        tree = self.workspace.worktree(AGENT_WORKTREE)
        self.workspace.checkout(tree, commit)
        return ScratchCheckout(self.workspace, tree)

    def run(self, spec: RunSpec) -> RunResult:
        return run_process(spec, AGENT_LIMITS)

    def log_dir(self) -> Path:
        return self.workspace.state_dir / "agent"
