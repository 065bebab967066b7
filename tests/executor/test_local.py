"""The local executor with real subprocesses: outcomes, process-tree killing, limits, slots."""

from __future__ import annotations

import _thread
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from nightlab.errors import UserError
from nightlab.executor.local import LocalExecutor
from nightlab.executor.process import RunInterrupted, build_env
from nightlab.executor.proctree import TAG_VARIABLE
from nightlab.types import RunSpec, RunStatus


def write_script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def spec(tmp_path: Path, command: str, timeout: float = 20.0, **kw) -> RunSpec:
    return RunSpec(command=command, cwd=tmp_path, run_dir=tmp_path / "run", seed=7, timeout=timeout, **kw)


def fast(**kw) -> LocalExecutor:
    kw.setdefault("poll_interval", 0.02)
    kw.setdefault("grace_seconds", 0.5)
    return LocalExecutor(**kw)


def dead(pid: int, within: float = 2.0) -> bool:
    """True once ``pid`` is gone (or a zombie: it holds nothing and runs nothing)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def read_pids(path: Path, count: int, within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists():
            pids = [int(x) for x in path.read_text().split()]
            if len(pids) >= count:
                return pids
        time.sleep(0.02)
    raise AssertionError(f"only {path.read_text() if path.exists() else 'no'} pids written")


def test_ok_run_parses_summary_and_gets_its_environment(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        """
        import json, os, sys
        json.dump({"seed": os.environ["NIGHTLAB_SEED"], "run_dir": os.environ["NIGHTLAB_RUN_DIR"],
                   "cwd": os.getcwd(), "python": sys.executable, "stdin": sys.stdin.read()},
                  open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "seen.json"), "w"))
        print("step 1 loss 3.2")
        print("---")
        print("val_bpb:          0.997900")
        print("training_seconds: 1.5")
        print("peak_vram_mb:     123.4")
        print("num_steps:        953")
        """,
    )
    result = fast().run(spec(tmp_path, "python train.py"))
    assert result.status is RunStatus.OK, result.log_tail
    assert result.exit_code == 0 and result.reason == ""
    assert result.metrics["val_bpb"] == pytest.approx(0.9979)
    assert result.metrics["num_steps"] == 953.0
    assert result.training_seconds == 1.5
    assert result.peak_memory_mb == 123.4  # the script's GPU figure wins over sampled RSS
    assert result.seed == 7 and 0 < result.total_seconds < 20
    assert "val_bpb" in Path(result.log_path).read_text()
    seen = json.loads((tmp_path / "run" / "seen.json").read_text())
    assert seen["seed"] == "7"
    assert seen["run_dir"] == str((tmp_path / "run").resolve())
    assert Path(seen["cwd"]).resolve() == tmp_path.resolve()
    assert seen["stdin"] == ""  # /dev/null, never the harness's terminal
    # `python` resolves to the harness's interpreter (its directory is first on PATH).
    assert os.path.dirname(seen["python"]) == os.path.dirname(sys.executable)


def test_crash_keeps_traceback_and_reason(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        """
        for i in range(100):
            print("line", i)
        def inner(x):
            return 1 / x
        def outer():
            return inner(0)
        outer()
        """,
    )
    result = fast().run(spec(tmp_path, "python train.py"))
    assert result.status is RunStatus.CRASH
    assert result.exit_code == 1
    assert result.reason == "ZeroDivisionError: division by zero"
    assert "Traceback (most recent call last):" in result.log_tail
    assert "in inner" in result.log_tail and "line 99" in result.log_tail
    assert "line 10\n" not in result.log_tail  # only the tail


def test_missing_command_is_a_crash_with_the_shell_message(tmp_path: Path) -> None:
    result = fast().run(spec(tmp_path, "no-such-command-xyz --flag"))
    assert result.status is RunStatus.CRASH and result.exit_code == 127
    assert "no-such-command-xyz" in result.reason


def test_missing_cwd_is_a_user_error(tmp_path: Path) -> None:
    bad = RunSpec(command="true", cwd=tmp_path / "nope", run_dir=tmp_path / "run", seed=0, timeout=5)
    with pytest.raises(UserError, match="nope"):
        fast().run(bad)


@pytest.mark.parametrize(
    ("command", "status", "reason"),
    [
        ("exit 3", RunStatus.NAN, "exit code 3"),
        ("echo 'status: nan (loss is nan at step 12)'; exit 1", RunStatus.NAN, "nan: loss is nan at step 12"),
        ("exit 4", RunStatus.OOM, "exit code 4"),
        ("echo 'status: oom'; exit 0", RunStatus.OOM, "oom"),
        (
            "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried'; exit 1",
            RunStatus.OOM,
            "CUDA out of memory",
        ),
        ("kill -9 $$", RunStatus.OOM, "SIGKILL"),
        # The trainer is the shell's child (dash does not exec it): its SIGKILL reaches us as 137.
        (
            "python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'; exit $?",
            RunStatus.OOM,
            "137",
        ),
        ("echo 'invalid: budget ignored'; exit 5", RunStatus.INVALID, "invalid: budget ignored"),
        ("echo 'no reason'; exit 5", RunStatus.CRASH, "exit code 5: no reason"),
        ("kill -SEGV $$", RunStatus.CRASH, "killed by SIGSEGV"),
    ],
)
def test_classification_from_exit_codes_and_status_lines(
    tmp_path: Path, command: str, status: RunStatus, reason: str
) -> None:
    result = fast().run(spec(tmp_path, command))
    assert result.status is status, (result.reason, result.exit_code)
    assert reason in result.reason


def test_timeout_kills_children_setsid_grandchildren_and_daemons(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    write_script(
        tmp_path,
        f"""
        import os, subprocess, sys, time
        out = open({str(pids)!r}, "a")
        # a child that itself starts a grandchild in a new session (escapes the process group)
        child = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys, time; "
            "g = subprocess.Popen(['setsid', 'sleep', '60']); "
            "print(g.pid, file=open({str(pids)!r}, 'a'), flush=True); time.sleep(60)"])
        print(child.pid, file=out, flush=True)
        # a classic daemon: double fork + setsid, the middle process exits at once
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                print(os.getpid(), file=open({str(pids)!r}, "a"), flush=True)
                time.sleep(60)
            os._exit(0)
        # a process that ignores SIGTERM: only SIGKILL ends it
        stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"])
        print(stubborn.pid, file=out, flush=True)
        print(os.getpid(), file=out, flush=True)
        time.sleep(60)
        """,
    )
    started = time.monotonic()
    result = fast(grace_seconds=0.3).run(spec(tmp_path, "python train.py", timeout=1.5))
    elapsed = time.monotonic() - started
    assert result.status is RunStatus.TIMEOUT
    assert result.reason == "killed after 1.5 s timeout"
    assert elapsed < 6
    for pid in read_pids(pids, 5):
        assert dead(pid), f"pid {pid} survived the timeout: {psutil.Process(pid).cmdline()}"


def test_background_processes_left_after_a_normal_exit_are_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = (
        f"sleep 60 & echo $! >> {pids}; "
        # no tag (empty environment) but its stdout is still the log
        f"env -i sleep 61 & echo $! >> {pids}; "
        # a new session, no log: found while sampling (its parent waits a moment)
        f"setsid sleep 62 >/dev/null 2>&1 & echo $! >> {pids}; sleep 0.3; echo done"
    )
    result = fast().run(spec(tmp_path, command))
    assert result.status is RunStatus.OK
    for pid in read_pids(pids, 3):
        assert dead(pid), f"pid {pid} outlived its run"


def test_secrets_are_scrubbed_and_allowed_ones_pass(tmp_path: Path) -> None:
    parent = dict(os.environ)
    parent.update(FAKE_API_KEY="fake-key-1234567890", ALLOWED_TOKEN="allowed-0987654321", PLAIN="x")
    write_script(
        tmp_path,
        """
        import json, os
        json.dump(dict(os.environ), open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "env.json"), "w"))
        print("the token is", os.environ.get("ALLOWED_TOKEN"))
        """,
    )
    ex = fast(environ=parent, slots=[{"CUDA_VISIBLE_DEVICES": "3"}])
    run = spec(tmp_path, "python train.py", allow_env=["ALLOWED_TOKEN"], env={"NIGHTLAB_BUDGET_SECONDS": "5"})
    result = ex.run(run)
    assert result.status is RunStatus.OK
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert "FAKE_API_KEY" not in env
    assert env["ALLOWED_TOKEN"] == "allowed-0987654321"
    assert env["PLAIN"] == "x" and env["NIGHTLAB_BUDGET_SECONDS"] == "5"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    # an allowed secret printed by the script is still kept out of the result
    assert "allowed-0987654321" not in result.log_tail and "[redacted]" in result.log_tail
    assert "allowed-0987654321" not in Path(result.log_path).read_text()


def test_build_env_layers_override_in_order(tmp_path: Path) -> None:
    run = spec(
        tmp_path, "true", env={"A": "spec", "B": "spec"}, slot_env={"B": "spec-slot", "C": "spec-slot"}
    )
    env = build_env(run, {"C": "slot"}, environ={"A": "parent", "PATH": "/usr/bin", "HF_TOKEN": "x" * 20})
    assert (env["A"], env["B"], env["C"]) == ("spec", "spec-slot", "slot")
    assert env["PATH"].split(os.pathsep) == [os.path.dirname(sys.executable), "/usr/bin"]
    assert "HF_TOKEN" not in env and env["PYTHONUNBUFFERED"] == "1"


def test_peak_memory_of_a_200_mb_script(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        """
        import time
        block = b"\\x01" * (200 * 1024 * 1024)  # written, so resident
        time.sleep(0.6)
        print(len(block))
        """,
    )
    result = fast().run(spec(tmp_path, "python train.py"))
    assert result.status is RunStatus.OK
    assert 190 <= result.metrics["peak_rss_mb"] <= 320
    assert result.peak_memory_mb == result.metrics["peak_rss_mb"]


def test_memory_limit_kills_as_oom(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        """
        import time
        block = b"\\x01" * (300 * 1024 * 1024)
        time.sleep(30)
        """,
    )
    started = time.monotonic()
    result = fast(memory_limit_mb=150).run(spec(tmp_path, "python train.py"))
    assert result.status is RunStatus.OOM
    assert "memory limit exceeded" in result.reason and "150 MB" in result.reason
    assert time.monotonic() - started < 10


def test_forked_workers_sharing_memory_are_not_counted_once_each(tmp_path: Path) -> None:
    # Like DataLoader workers: forked after the parent allocated, sharing its pages.
    write_script(
        tmp_path,
        """
        import os, time
        block = b"\\x01" * (150 * 1024 * 1024)
        workers = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                time.sleep(0.8)
                os._exit(0)
            workers.append(pid)
        for pid in workers:
            os.waitpid(pid, 0)
        """,
    )
    result = fast(memory_limit_mb=400).run(spec(tmp_path, "python train.py"))
    assert result.status is RunStatus.OK, result.reason  # RSS summed would be ~600 MB
    assert 140 <= result.metrics["peak_rss_mb"] < 400


def test_a_worker_that_ends_mid_sample_counts_nothing() -> None:
    # The race behind a flaky OOM kill on a loaded machine: RSS read while a worker lived,
    # PSS read after it ended. It must count 0, not its stale RSS.
    from nightlab.executor.proctree import _pss_mb

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    proc = psutil.Process(child.pid)
    child.wait()
    assert _pss_mb(proc, 150.0) == 0.0
    me = psutil.Process()
    assert 0.0 < _pss_mb(me, 1e6) < 1e6  # a live process: its own PSS, not the fallback


def test_log_over_the_limit_keeps_head_and_tail(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        """
        import sys, time
        for chunk in range(60):
            sys.stdout.write("".join(f"line {chunk * 500 + i:06d} " + "x" * 40 + "\\n" for i in range(500)))
            sys.stdout.flush()
            time.sleep(0.01)
        print("---")
        print("val_bpb: 1.25")
        """,
    )
    limit = 400_000
    result = fast(log_limit_bytes=limit).run(spec(tmp_path, "python train.py"))
    assert result.status is RunStatus.OK, result.reason
    log = Path(result.log_path).read_text()
    assert len(log) < 2 * limit  # about 1.6 MB were written
    assert log.startswith("line 000000 ")
    assert "bytes cut from the middle of this log" in log
    assert "line 029999 " in log and result.metrics["val_bpb"] == 1.25
    # no line is broken or lost at the end: the last kept lines are consecutive
    numbers = [int(line[5:11]) for line in log.splitlines()[-200:] if line.startswith("line ")]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_a_script_that_deletes_its_log_does_not_break_the_harness(tmp_path: Path) -> None:
    command = 'rm -f "$NIGHTLAB_RUN_DIR/run.log"; for i in $(seq 3000); do echo "line $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; done; sleep 0.2'
    result = fast(log_limit_bytes=100_000).run(spec(tmp_path, command))
    assert result.status is RunStatus.OK
    assert not Path(result.log_path).exists() and result.log_tail == ""


def test_log_flood_faster_than_trimming_is_killed(tmp_path: Path) -> None:
    result = fast(log_limit_bytes=100_000).run(spec(tmp_path, "yes nightlab-flood", timeout=10))
    assert result.status is RunStatus.CRASH
    assert "faster than it could be trimmed" in result.reason
    # What it wrote before the kill is cut to the limit afterwards, however far past it got.
    log = Path(result.log_path).read_bytes()
    assert len(log) <= 100_000
    head, marker, tail = log.partition(b"bytes cut from the middle of this log")
    assert marker and head.startswith(b"nightlab-flood\n") and b"\nnightlab-flood\n" in tail


def test_run_directory_limit(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        """
        import os, time
        with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "ckpt.bin"), "wb") as f:
            for _ in range(200):
                f.write(os.urandom(1 << 20)); f.flush(); time.sleep(0.02)
        """,
    )
    result = fast(run_dir_limit_bytes=5 * 1024 * 1024).run(spec(tmp_path, "python train.py"))
    assert result.status is RunStatus.CRASH
    assert result.reason.startswith("run directory exceeded 5 MB")


def test_file_size_limit(tmp_path: Path) -> None:
    result = fast(file_size_limit_bytes=1 << 20).run(spec(tmp_path, "head -c 3000000 /dev/zero > big.bin"))
    assert result.status is RunStatus.CRASH
    assert (tmp_path / "big.bin").stat().st_size <= 1 << 20
    assert "SIGXFSZ" in result.reason or "File size limit" in result.reason


def test_two_slots_run_at_once_with_their_env(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        """
        import json, os, time
        start = time.time(); time.sleep(0.8)
        json.dump({"gpu": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time()},
                  open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "slot.json"), "w"))
        """,
    )
    with fast(slots=[{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]) as ex:
        runs = [
            RunSpec(command="python train.py", cwd=tmp_path, run_dir=tmp_path / f"r{i}", seed=i, timeout=20)
            for i in range(2)
        ]
        results = [f.result(timeout=30) for f in [ex.submit(r) for r in runs]]
    assert [r.status for r in results] == [RunStatus.OK, RunStatus.OK]
    seen = [json.loads((tmp_path / f"r{i}" / "slot.json").read_text()) for i in range(2)]
    assert sorted(s["gpu"] for s in seen) == ["0", "1"]
    assert max(s["start"] for s in seen) < min(s["end"] for s in seen)  # they overlapped


def test_stop_kills_runs_in_flight(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    ex = fast()
    future = ex.submit(spec(tmp_path, f"sleep 60 & echo $! > {pids}; wait"))
    (pid,) = read_pids(pids, 1)
    threading.Timer(0.1, ex.stop).start()
    with pytest.raises(RunInterrupted):
        future.result(timeout=10)
    assert dead(pid)
    with pytest.raises(RunInterrupted):
        ex.run(spec(tmp_path, "true"))
    ex.close()


def test_a_live_harness_is_recognised_from_another_process() -> None:
    from nightlab.executor.proctree import _harness_alive, _start_mark, new_tag

    tag = new_tag()
    pid, started, namespace, _ = tag.split(":")
    assert int(pid) == os.getpid() and started == _start_mark(os.getpid())
    # Another process (a second nightlab) reads the same start mark for this harness.
    code = f"from nightlab.executor.proctree import _harness_alive; print(_harness_alive({tag!r}))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"
    )
    # A different start for the same pid is a new process that reused it: the harness is gone.
    assert not _harness_alive(f"{pid}:t1:{namespace}:x")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_tag = f"{child.pid}:{_start_mark(child.pid)}:{namespace}:x"
    child.wait()
    assert not _harness_alive(dead_tag)
    assert _harness_alive("not-a-tag") and _harness_alive(f"{pid}:{started}:other-namespace:x")


def test_runs_orphaned_by_a_killed_harness_are_killed_by_the_next_executor(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    harness = write_script(
        tmp_path,
        f"""
        from pathlib import Path
        from nightlab.executor.base import RunSpec
        from nightlab.executor.local import LocalExecutor
        root = Path({str(tmp_path)!r})
        LocalExecutor(kill_orphans=False).run(
            RunSpec(command="setsid sleep 60 & echo $! > {pids}; wait", cwd=root, run_dir=root / "run",
                    seed=0, timeout=60))
        """,
        name="harness.py",
    )
    proc = psutil.Popen([sys.executable, str(harness)])
    try:
        (pid,) = read_pids(pids, 1, within=20)
        proc.kill()  # kill -9 of nightlab: the run goes on in its own session
        proc.wait(5)
        # (No "still alive here" check: on a shared machine another nightlab's executor may
        # already have cleaned it up, which is the behaviour under test.)
        LocalExecutor()
        assert dead(pid)
    finally:
        if proc.is_running():
            proc.kill()


def test_ctrl_c_in_the_harness_kills_the_run(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A background job (`make test &`, nohup) starts with SIGINT ignored, and then Python
    # installs no handler and interrupt_main does nothing: put back the foreground default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            fast().run(spec(tmp_path, f"sleep 60 & echo $! > {pids}; wait"))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 5
    (pid,) = read_pids(pids, 1)
    assert dead(pid)


def test_the_orphan_sweep_leaves_a_run_to_its_living_watchdog(tmp_path: Path) -> None:
    """A run whose harness is gone but whose watchdog lives is the watchdog's to end (gently,
    SIGTERM first): the sweep of another executor starting just then must not SIGKILL it."""
    from nightlab.executor.process import Watchdog
    from nightlab.executor.proctree import _pid_namespace, kill_orphaned_runs, watchdog_tag

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead_harness = f"{child.pid}:gone:{_pid_namespace()}:x"
    env = {"PATH": os.environ["PATH"], TAG_VARIABLE: dead_harness}
    run = psutil.Popen(["sleep", "60"], env=env, start_new_session=True)
    guard = Watchdog(run.pid, dead_harness, grace=1.0)
    try:
        assert guard.pid is not None and watchdog_tag(psutil.Process(guard.pid).cmdline()) == dead_harness
        kill_orphaned_runs()
        assert run.is_running() and run.status() != psutil.STATUS_ZOMBIE
        guard.release()  # the watchdog leaves; the run is an orphan nobody guards now
        psutil.Process(guard.pid).wait(5)
        kill_orphaned_runs()
        # SIGKILLed by this sweep, or by the sweep of an executor another test worker started in
        # between (pytest-xdist: the run is a true orphan from the release on; seen in make test).
        # Left alive, wait() times out and the test fails.
        assert run.wait(5) == -signal.SIGKILL
    finally:
        guard.release()
        if run.is_running():
            run.kill()
