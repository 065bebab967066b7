"""How a run ended, in one word and one line: the status and reason of a :class:`RunResult`.

Kept apart from the process handling so the rules can be read (and tested) in one place. The
order matters: what nightlab itself did (a timeout, a limit) beats what the script said, and
what the script said (a status line, an exit code) beats guesses from the log text.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from nightlab.executor.summary import exception_line, last_line, last_status
from nightlab.types import RunStatus

# Exit codes a script can use to say how it ended without printing a status line.
EXIT_NAN = 3
EXIT_OOM = 4
EXIT_INVALID = 5

_OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError")
_STATUS_WORDS = {s.value: s for s in RunStatus}
_MAX_REASON = 300


@dataclass(frozen=True)
class Kill:
    """Why nightlab killed a run; ``status`` is what the run is recorded as."""

    status: RunStatus
    reason: str


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def crash_reason(exit_code: int, log_text: str) -> str:
    """The exception line of the last traceback, else the exit code and the last line."""
    exc = exception_line(log_text)
    if exc:
        return exc
    if exit_code < 0:
        head = f"killed by {_signal_name(-exit_code)}"
    else:
        head = f"exit code {exit_code}"
    last = last_line(log_text)
    return f"{head}: {last}" if last else head


def classify(exit_code: int | None, log_text: str, kill: Kill | None = None) -> tuple[RunStatus, str]:
    """The status and a one-line reason for a run.

    - killed by nightlab (timeout, memory, disk, log limits): the kill's status and reason;
    - a ``status: nan|oom|invalid|crash|timeout (...)`` line: that status (the script knows
      best why it stopped; ``status: ok`` counts only with exit code 0);
    - exit 0: ok; exit 3: nan; exit 4: oom; exit 5 with a line mentioning "invalid": invalid;
    - "CUDA out of memory" / "OutOfMemoryError" / "MemoryError" in the log of a failed run, or
      a SIGKILL nightlab did not send (the kernel's OOM killer): oom;
    - anything else: crash, with the traceback's exception line as the reason.

    ``log_text`` only needs to be the end of the log (the last few hundred KB).
    """
    if kill is not None:
        return kill.status, _one_line(kill.reason)
    status_line = last_status(log_text)
    if status_line is not None and status_line.word in _STATUS_WORDS:
        declared = _STATUS_WORDS[status_line.word]
        if declared is not RunStatus.OK:
            return declared, _one_line(status_line.describe())
    if exit_code == 0:
        return RunStatus.OK, ""
    if exit_code is None:
        return RunStatus.CRASH, "the process could not be waited for"
    if exit_code == EXIT_NAN:
        return RunStatus.NAN, f"exit code {EXIT_NAN} (nan)"
    if exit_code == EXIT_OOM:
        return RunStatus.OOM, f"exit code {EXIT_OOM} (out of memory)"
    if exit_code == EXIT_INVALID:
        invalid = [line for line in log_text.splitlines() if "invalid" in line.lower()]
        if invalid:
            return RunStatus.INVALID, _one_line(invalid[-1])
    for marker in _OOM_MARKERS:
        if marker in log_text:
            lines = [line for line in log_text.splitlines() if marker in line]
            return RunStatus.OOM, _one_line(lines[-1])
    if exit_code == -signal.SIGKILL:
        return RunStatus.OOM, "killed by SIGKILL that nightlab did not send (likely the kernel OOM killer)"
    if exit_code == 128 + signal.SIGKILL and exception_line(log_text) is None:
        # The shell that runs the command (dash does not exec it) reports its child's SIGKILL so.
        return RunStatus.OOM, (
            "exit code 137: the training process was killed by SIGKILL that nightlab did not send "
            "(likely the kernel OOM killer)"
        )
    return RunStatus.CRASH, _one_line(crash_reason(exit_code, log_text))
