"""The contract every executor honours: a :class:`RunSpec` in, a :class:`RunResult` out.

The local executor (subprocesses) and the cluster executor return the same RunResult, so the
loop and the policy never know where a run happened.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol


class RunStatus(str, Enum):
    OK = "ok"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OOM = "oom"
    NAN = "nan"
    INVALID = "invalid"

    @property
    def failed(self) -> bool:
        return self is not RunStatus.OK


@dataclass
class RunSpec:
    """Everything needed to run one replicate of one experiment.

    ``command`` runs in ``cwd`` (the experiment's worktree) with ``env`` added on top of the
    scrubbed parent environment. ``run_dir`` receives the log and whatever the script writes.
    """

    command: str
    cwd: Path
    run_dir: Path
    seed: int
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    log_name: str = "run.log"
    # Names of secret-looking variables the user allows through (e.g. "WANDB_API_KEY").
    allow_env: list[str] = field(default_factory=list)
    # Slot resources, e.g. {"CUDA_VISIBLE_DEVICES": "0"}; the executor sets these.
    slot_env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    """How one command went. ``metrics`` holds every number read (metric, holdout, extras)."""

    status: RunStatus
    metrics: dict[str, float] = field(default_factory=dict)
    training_seconds: float | None = None
    total_seconds: float = 0.0
    peak_memory_mb: float | None = None
    log_tail: str = ""
    seed: int = 0
    exit_code: int | None = None
    reason: str = ""  # why the status is what it is, one line ("killed after 180 s timeout")
    log_path: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunResult:
        data = dict(data)
        data["status"] = RunStatus(data["status"])
        return cls(**data)


class Executor(Protocol):
    """Runs commands. ``run`` blocks until the command ends or is killed."""

    def run(self, spec: RunSpec) -> RunResult: ...
