"""The log and run-directory helpers on real files: reading the end, trimming, redaction, usage."""

from __future__ import annotations

import os
from pathlib import Path

from nightlab.executor.logfile import LogTrimmer, directory_usage, read_end, redact_file
from nightlab.secrets import REDACTED


class Recorder:
    """Stands in for the process tree: records pause/resume so the trim is seen bracketed."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


def test_read_end_starts_at_a_line_boundary(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    end = read_end(log, 100)
    assert end.startswith("line ") and end.endswith("line 999\n")
    assert read_end(log, 10**6) == log.read_text()
    assert read_end(tmp_path / "missing.log", 100) == ""


def test_trimmer_keeps_head_and_tail_and_counts_what_it_cut(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with open(log, "w") as handle:
        handle.writelines(f"{i:06d} {'x' * 43}\n" for i in range(1000))  # 51 bytes a line
    trimmer = LogTrimmer(log, limit=20_000)
    tree = Recorder()
    assert trimmer.check(tree) is None
    assert tree.calls == ["pause", "resume"]
    text = log.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("000000") and lines[-1].startswith("000999")
    assert len(text) < 20_000 * 0.6
    assert f"[nightlab: {trimmer.cut_bytes} bytes cut" in text
    # everything kept is whole lines; what is missing is exactly what the note says
    kept = [line for line in lines if not line.startswith("[nightlab")]
    assert all(len(line) == 50 for line in kept if line)
    assert trimmer.cut_bytes == 51 * (1000 - len([k for k in kept if k]))
    # a second cut counts the total, not just its own share
    first = trimmer.cut_bytes
    with open(log, "a") as handle:
        handle.writelines(f"{i:06d} {'y' * 43}\n" for i in range(1000, 1400))
    trimmer.check(tree)
    assert trimmer.cut_bytes > first and f"[nightlab: {trimmer.cut_bytes} bytes cut" in log.read_text()
    assert log.read_text().count("[nightlab:") == 1
    trimmer.close()


def test_trimmer_gives_up_on_a_flood(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(b"z" * 50_000)
    trimmer = LogTrimmer(log, limit=10_000)
    tree = Recorder()
    assert "faster than it could be trimmed" in (trimmer.check(tree) or "")
    assert tree.calls == []  # nothing cut: the run is about to be killed
    trimmer.close()


def test_redact_file_across_blocks(tmp_path: Path) -> None:
    secret = "planted-secret-0123456789"
    log = tmp_path / "run.log"
    filler = "".join(f"step {i} loss 1.0\n" for i in range(200_000))  # ~3.5 MB, several blocks
    log.write_bytes((filler + f"key {secret}\n" + filler + f"{secret}\n").encode() + b"\xff\xfe raw\n")
    assert redact_file(log, [secret])
    data = log.read_bytes()
    assert secret.encode() not in data and data.count(REDACTED.encode()) == 2
    assert data.endswith(b"\xff\xfe raw\n")  # bytes that are not text pass through
    assert not redact_file(log, [secret])  # nothing left to redact: the file is not rewritten


def test_directory_usage_counts_allocated_blocks(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.bin").write_bytes(os.urandom(2 << 20))
    with open(tmp_path / "sparse.bin", "wb") as handle:
        handle.truncate(1 << 30)  # 1 GB long, nothing written
    used = directory_usage(tmp_path)
    assert 2 << 20 <= used < 3 << 20
