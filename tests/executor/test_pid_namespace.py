"""A training command's PID namespace (``executor/pidns.py``).

Found from outside (session 18): a sandboxed train.py listed ``/proc``, found the ``nightlab try``
that ran it and every other nightlab process of the user, and wrote 1000 into each one's
``oom_score_adj`` (read back: 1000), so that under memory pressure the kernel would kill the
harness, not the run. These tests run that attack through the launcher as ``wrap`` writes it for
a training command, and check that the namespace changes nothing else a run shows (its exit
status and the signals it gets are checked in both launcher forms in test_sandbox_reaper.py);
and that it closes one gap more: a daemon no longer outlives a SIGKILL of the launcher.

They skip where this machine cannot give a run a PID namespace (``sandbox.detect().pidns``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nightlab.executor import sandbox
from nightlab.executor.local import LocalExecutor
from nightlab.executor.proctree import TAG_VARIABLE
from nightlab.types import RunSpec, RunStatus

from .test_sandbox_reaper import RECORDER, untagged_env, wait_for, write

SUPPORT = sandbox.detect()
pytestmark = pytest.mark.skipif(not SUPPORT.pidns, reason=f"no PID namespace here ({SUPPORT})")

# The attack, as train.py ran it: every process in sight, the harness's OOM preference raised,
# a signal to it; what it managed, as JSON.
ATTACK = """
import json, os, sys
harness = int(sys.argv[2])
seen = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
done = {"seen": seen, "me": os.getpid()}
try:
    with open(f"/proc/{harness}/oom_score_adj", "w") as handle:
        handle.write("1000")
    done["oom"] = "written"
except OSError as exc:
    done["oom"] = type(exc).__name__
try:
    os.kill(harness, 0)
    done["signal"] = "reached"
except OSError as exc:
    done["signal"] = type(exc).__name__
open(sys.argv[1], "w").write(json.dumps(done))
"""


def training_argv(folder: Path, program: list[str]) -> list[str]:
    """The launcher's argv as ``wrap`` writes it for a training command (``hide`` given), running
    ``program`` itself instead of ``/bin/sh -c COMMAND``."""
    argv = shlex.split(sandbox.wrap("true", [folder], "required", hide=[]))
    assert "--pid-ns" in argv
    last = len(argv) - argv[::-1].index("--")
    return argv[:last] + program


def test_a_training_run_sees_and_reaches_no_process_outside_its_own(tmp_path: Path) -> None:
    """The attack through the executor: it sees only its own tree (the launcher as pid 1, the
    shell, itself), cannot name the harness in ``/proc`` nor signal it; the harness's OOM
    preference is unchanged."""
    attack = write(tmp_path, "attack.py", ATTACK)
    out = tmp_path / "out.json"
    before = Path(f"/proc/{os.getpid()}/oom_score_adj").read_text()
    command = shlex.join([sys.executable, str(attack), str(out), str(os.getpid())])
    spec = RunSpec(
        command=sandbox.wrap(command, [tmp_path], "required", hide=[]),
        cwd=tmp_path,
        run_dir=tmp_path / "run",
        seed=0,
        timeout=60,
    )
    result = LocalExecutor(poll_interval=0.05, grace_seconds=0.5).run(spec)
    assert result.status is RunStatus.OK, (result.reason, result.log_tail)
    done = json.loads(out.read_text())
    assert done["me"] in done["seen"] and set(done["seen"]) <= {1, 2, 3}, done
    assert done["oom"] == "FileNotFoundError" and done["signal"] == "ProcessLookupError", done
    assert Path(f"/proc/{os.getpid()}/oom_score_adj").read_text() == before


def test_a_daemon_dies_when_the_launcher_is_killed_with_sigkill(tmp_path: Path) -> None:
    """Before, a daemon the run started (``setsid``, no tag) outlived a SIGKILL of the launcher
    (the harness's after the grace period, a user's ``kill -9``): nothing was left to kill it.
    Now pid 1 dies with the launcher, and the kernel kills the whole namespace with pid 1."""
    pids = tmp_path / "daemon.pid"
    daemon = f"setsid sh -c 'echo $$ > {pids}; exec sleep 300' & sleep 300"
    launcher = subprocess.Popen(training_argv(tmp_path, ["/bin/sh", "-c", daemon]), env=untagged_env())
    try:
        assert wait_for(lambda: pids.exists() and pids.read_text().strip())
        found = [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.name() == "sleep"]
        assert len(found) == 2, found
        launcher.kill()
        launcher.wait(5)
        assert wait_for(
            lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in found), 5
        )
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


# Forks children that sleep, until a fork fails or 600 are running; prints how many it got.
FORKER = """
import os, sys, time
kids = []
for _ in range(600):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    kids.append(pid)
print(len(kids), flush=True)
"""


def test_a_run_cannot_have_more_processes_than_its_namespace_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own pid_max (``pidns.cap``): a fork past it fails, whatever the machine allows (as
    root too, whom RLIMIT_NPROC does not bind)."""
    monkeypatch.setattr(sandbox, "MAX_TASKS", 400)
    forker = write(tmp_path, "forker.py", FORKER)
    done = subprocess.run(
        training_argv(tmp_path, [sys.executable, str(forker)]),
        env=untagged_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert 200 < int(done.stdout) < 400, done.stdout


def test_a_fork_bomb_is_killed_and_recorded_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found from outside: a train.py fork bomb ran to the machine's limit (1926 processes under a
    2000-process cgroup set for the test) and the run was recorded ``ok``. Now the run stops at
    its namespace's limit, is killed as soon as a sample counts more than PROCESS_LIMIT
    processes, recorded ``crash`` saying why, and leaves nothing running."""
    from nightlab.executor import process

    monkeypatch.setattr(sandbox, "MAX_TASKS", 400)
    monkeypatch.setattr(process, "PROCESS_LIMIT", 150)
    marker = f"nightlab-test-bomb-{os.getpid()}"
    bomb = f"b(){{ b & b & sleep 5; }}; b # {marker}"
    # The bomb below a process that forks nothing more, so the run lives on at the limit (a shell
    # on top would itself end at its first failed fork, ending the run: a crash too, said otherwise).
    command = shlex.join(
        [
            sys.executable,
            "-c",
            f"import subprocess, time; subprocess.Popen(['sh', '-c', {bomb!r}]); time.sleep(30)",
        ]
    )
    spec = RunSpec(
        command=sandbox.wrap(command, [tmp_path], "required", hide=[]),
        cwd=tmp_path,
        run_dir=tmp_path / "run",
        seed=0,
        timeout=60,
    )
    started = time.monotonic()
    result = LocalExecutor(poll_interval=0.05, grace_seconds=0.5).run(spec)
    assert result.status is RunStatus.CRASH, (result.status, result.reason)
    assert (
        result.reason.startswith("too many processes: ") and "(a fork bomb?), more than 150" in result.reason
    )
    assert time.monotonic() - started < 30

    def left() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if marker in " ".join(proc.info["cmdline"] or ()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found

    assert wait_for(lambda: not left(), 5), left()


def test_pause_and_resume_reach_the_program_in_the_namespace(tmp_path: Path) -> None:
    """``ProcessTree.pause`` (SIGSTOP to the run's group: forced on the namespace's pid 1 from
    outside) stops the program; ``resume`` (SIGCONT, a keeper's: not passed on twice) continues it."""
    from nightlab.executor.proctree import MainProcess, ProcessTree, new_tag

    ticks = tmp_path / "ticks"
    ticker = write(
        tmp_path,
        "ticker.py",
        f"""
        import time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open({str(ticks)!r}, "a") as handle:
                handle.write("tick\\n")
            time.sleep(0.02)
        """,
    )
    env = untagged_env()
    env[TAG_VARIABLE] = tag = new_tag()
    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        popen = subprocess.Popen(
            sandbox.wrap(f"{sys.executable} {ticker}", [tmp_path], "required", hide=[]),
            shell=True,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    main = MainProcess(popen)
    tree = ProcessTree(main, tag, log, time.time() - 1)
    try:

        def program() -> psutil.Process | None:
            tree.sample()
            found = [p for p in tree.seen.values() if str(ticker) in " ".join(p.cmdline())]
            return found[0] if found else None

        assert wait_for(lambda: program() is not None and ticks.exists())
        ticking = program()
        assert ticking is not None
        tree.pause()
        assert wait_for(lambda: ticking.status() == psutil.STATUS_STOPPED, 3)
        size = ticks.stat().st_size
        time.sleep(0.3)
        assert ticks.stat().st_size == size
        tree.resume()
        assert wait_for(lambda: ticks.stat().st_size > size, within=3.0)
    finally:
        tree.kill_all(0.5)
        main.close()
    assert main.exit is not None


def test_a_harness_killed_with_kill_9_takes_the_namespaced_run_along(tmp_path: Path) -> None:
    """The watchdog's SIGTERM reaches the program once (through the group: pid 1 does not pass a
    keeper's signal on), and nothing of the run is left afterwards."""
    recorder = write(tmp_path, "recorder.py", RECORDER)
    signals = tmp_path / "signals"
    wrapped = sandbox.wrap(f"python {recorder} {signals}", [tmp_path], "required", hide=[])
    harness = write(
        tmp_path,
        "harness.py",
        f"""
        from pathlib import Path
        from nightlab.executor.local import LocalExecutor
        from nightlab.types import RunSpec
        root = Path({str(tmp_path)!r})
        LocalExecutor(kill_orphans=False, grace_seconds=5.0).run(
            RunSpec(command={wrapped!r}, cwd=root, run_dir=root / "run", seed=0, timeout=60))
        """,
    )
    proc = psutil.Popen([sys.executable, str(harness)])
    try:
        assert wait_for(lambda: Path(f"{signals}.ready").exists(), within=30)
        below = proc.children(recursive=True)
        proc.kill()  # kill -9 of nightlab
        proc.wait(5)
        assert wait_for(lambda: signals.exists() and "SIGTERM" in signals.read_text())
        time.sleep(0.3)
        assert signals.read_text().split() == ["SIGTERM"]
        alive = lambda: [p for p in below if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # noqa: E731
        assert wait_for(lambda: not alive(), 10), alive()
    finally:
        if proc.is_running():
            proc.kill()
