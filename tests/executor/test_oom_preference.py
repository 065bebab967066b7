"""The training run is the OOM killer's first choice over the harness from its first instruction.

``_prefer_as_oom_victim`` wrote ``oom_score_adj`` into the shell's ``/proc`` entry after it had
started, too late for what it had forked already (found from outside: a sandboxed training
process read 0, on a busy machine). The shell now sets it before the command runs. Simulated here
by a harness that loses the race every time (the late write skipped).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlab.executor import process
from nightlab.executor.local import LocalExecutor
from nightlab.types import RunSpec, RunStatus


def test_the_command_starts_with_the_oom_preference_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process._Run, "_prefer_as_oom_victim", lambda self, pid: None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    command = "sleep 0; cat /proc/self/oom_score_adj"  # a command the shell forks, not execs
    result = LocalExecutor().run(RunSpec(command=command, cwd=tmp_path, run_dir=run_dir, seed=0, timeout=20))
    assert result.status is RunStatus.OK, result.reason
    assert Path(result.log_path).read_text().split() == [process._OOM_SCORE_ADJ]  # before: the harness's own
