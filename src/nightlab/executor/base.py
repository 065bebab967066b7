"""The contract every executor honours: a :class:`RunSpec` in, a :class:`RunResult` out.

The local executor (subprocesses) and a cluster executor return the same RunResult, so the loop
and the policy never know where a run happened.
"""

from __future__ import annotations

from typing import Protocol

from nightlab.types import RunResult, RunSpec


class Executor(Protocol):
    """Runs commands. ``run`` blocks until the command ends or is killed."""

    def run(self, spec: RunSpec) -> RunResult: ...

    def close(self, kill: bool = False) -> None:
        """Release what the executor holds (threads, connections); ``kill`` stops runs in flight."""
        ...
