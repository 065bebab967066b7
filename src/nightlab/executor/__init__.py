"""Executors run one training (and evaluation) command and say how it went."""

from nightlab.executor.base import Executor, RunResult, RunSpec, RunStatus

__all__ = ["Executor", "RunResult", "RunSpec", "RunStatus"]
