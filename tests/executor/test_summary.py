"""Summary blocks, status lines, log tails and the classification rules (no subprocesses)."""

from __future__ import annotations

import math

from nightlab.executor.outcome import Kill, classify, crash_reason
from nightlab.executor.summary import (
    exception_line,
    last_status,
    log_tail,
    parse_status_lines,
    parse_summary,
)
from nightlab.types import RunStatus

KARPATHY_LOG = """\
step 00950 (99.8%) | loss: 3.1 | lrm: 0.01\rstep 00953 (100.0%) | loss: 3.0 | lrm: 0.00
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
depth:            8
"""


def test_summary_block_of_autoresearch_train_py() -> None:
    metrics = parse_summary(KARPATHY_LOG)
    assert metrics == {
        "val_bpb": 0.9979,
        "training_seconds": 300.1,
        "total_seconds": 325.9,
        "peak_vram_mb": 45060.2,
        "mfu_percent": 39.8,
        "total_tokens_M": 499.6,
        "num_steps": 953.0,
        "depth": 8.0,
    }


def test_only_the_last_block_counts_and_junk_is_skipped() -> None:
    text = "---\nval_bpb: 9.0\n---\nval_bpb: 1.5\nnote: hello\nmem: 12.5 MB\nacc: 97%\nstatus: nan\nwarning line\n"
    assert parse_summary(text) == {"val_bpb": 1.5, "mem": 12.5, "acc": 97.0}


def test_no_separator_means_no_summary() -> None:
    assert parse_summary("val_bpb: 1.0\n-----\nx: 2\n") == {}


def test_nan_values_are_kept_as_nan() -> None:
    assert math.isnan(parse_summary("---\nval_bpb: nan\n")["val_bpb"])


def test_status_lines() -> None:
    text = "status: ok\nstatus: NaN (loss diverged at step 12)\nmy status: oom\n  status: oom (indented)\n"
    lines = parse_status_lines(text)
    assert [(s.word, s.detail) for s in lines] == [
        ("ok", ""),
        ("nan", "loss diverged at step 12"),
        ("oom", "indented"),
    ]
    assert last_status(text).describe() == "oom: indented"
    assert last_status("nothing here") is None


TRACEBACK_LOG = """\
starting
Traceback (most recent call last):
  File "train.py", line 3, in <module>
    import missing
ModuleNotFoundError: No module named 'missing'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "train.py", line 5, in <module>
    x = 1 / 0
        ~~^~~
ZeroDivisionError: division by zero
"""


def test_exception_line_is_the_last_tracebacks() -> None:
    assert exception_line(TRACEBACK_LOG) == "ZeroDivisionError: division by zero"
    assert exception_line("no traceback\n") is None


def test_log_tail_reaches_back_to_a_long_traceback_and_is_capped() -> None:
    frames = "".join(f'  File "m.py", line {i}, in f\n    f()\n' for i in range(50))
    text = "".join(f"noise {i}\n" for i in range(200)) + "Traceback (most recent call last):\n" + frames
    text += "RecursionError: maximum recursion depth exceeded\n"
    tail = log_tail(text, lines=60)
    assert tail.startswith("Traceback (most recent call last):")
    assert tail.endswith("RecursionError: maximum recursion depth exceeded")
    capped = log_tail(text * 40, lines=60, max_chars=2000)
    assert len(capped) <= 2000 and capped.endswith("RecursionError: maximum recursion depth exceeded")


def test_log_tail_shows_progress_lines_as_a_terminal_would() -> None:
    assert log_tail("a\rb\rc\nend\n") == "c\nend"
    assert log_tail("".join(f"{i}\n" for i in range(100)), lines=3) == "97\n98\n99"


def test_classify_rules() -> None:
    assert classify(0, "all good") == (RunStatus.OK, "")
    assert classify(0, "status: nan (loss is nan)") == (RunStatus.NAN, "nan: loss is nan")
    assert classify(1, "status: ok\nboom") == (RunStatus.CRASH, "exit code 1: boom")
    assert classify(3, "")[0] is RunStatus.NAN
    assert classify(4, "")[0] is RunStatus.OOM
    assert classify(1, "RuntimeError: CUDA out of memory. Tried to allocate")[0] is RunStatus.OOM
    assert classify(0, "CUDA out of memory, retrying with a smaller batch\ndone")[0] is RunStatus.OK
    assert classify(-9, "")[0] is RunStatus.OOM
    assert classify(5, "budget rule: invalid use of data") == (
        RunStatus.INVALID,
        "budget rule: invalid use of data",
    )
    assert classify(5, "nothing")[0] is RunStatus.CRASH
    assert classify(1, TRACEBACK_LOG) == (RunStatus.CRASH, "ZeroDivisionError: division by zero")
    assert classify(-11, "") == (RunStatus.CRASH, "killed by SIGSEGV")
    kill = Kill(RunStatus.TIMEOUT, "killed after 3 s timeout")
    assert classify(-15, "status: nan", kill) == (RunStatus.TIMEOUT, "killed after 3 s timeout")
    assert len(classify(1, "x" * 5000)[1]) <= 300


def test_a_crash_inside_a_drawn_frame_is_told_by_its_message_not_the_frame() -> None:
    """typer and click print their usage errors in a rich panel: the reason was '╰───╯' (found
    from outside); now the message inside the frame."""
    log = (
        "Usage: train.py [OPTIONS]\n"
        "Try 'train.py --help' for help.\n"
        "╭─ Error ─────────────────────────────────────────╮\n"
        "│ No such option: --grad_clip Did you mean --grad-clip? │\n"
        "╰─────────────────────────────────────────────────╯\n"
    )
    assert crash_reason(2, log) == "exit code 2: No such option: --grad_clip Did you mean --grad-clip?"
    assert crash_reason(1, "step 1\n=====\n\n") == "exit code 1: step 1"
    assert crash_reason(1, "") == "exit code 1"
