"""The sandbox launcher as the program's parent and subreaper (``executor/reaper.py``).

Attack A9 (found from outside): a process that double-forks, ``setsid``s and ``execve``s with an
empty environment left the run's process group and its tag, outlived the run and rewrote a
finished run's ``replicate.json`` later. Under the sandbox the launcher now stays the program's
parent, as a child subreaper, and kills whatever is left below it when the program exits; these
tests run that attack for real, and check that the launcher changes nothing else a run shows:
its exit status, the signals it gets, pausing and resuming it.

They skip where this machine has no sandbox (``sandbox.detect()``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nightlab.executor import sandbox
from nightlab.executor.local import LocalExecutor
from nightlab.executor.proctree import TAG_VARIABLE, MainProcess, ProcessTree, new_tag
from nightlab.types import RunResult, RunSpec, RunStatus

SUPPORT = sandbox.detect()
pytestmark = pytest.mark.skipif(not SUPPORT.complete, reason=f"this machine has {SUPPORT.describe()}")

# The escaped daemon: it appends to a file every 0.1 s (as the attack's did to replicate.json),
# and starts a child and a grandchild of its own, each in a session of its own, so the launcher
# must kill more than its direct children. Bounded, so a failing test leaves nothing for long.
DAEMON = """
import os, sys, time
out, pids, depth = sys.argv[1], sys.argv[2], int(sys.argv[3])
if depth > 0 and os.fork() == 0:
    os.setsid()
    os.execve(sys.executable, [sys.executable, sys.argv[0], out + "-child", pids, str(depth - 1)], {})
with open(pids, "a") as handle:
    handle.write(f"{os.getpid()}\\n")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    with open(out, "a") as handle:
        handle.write(f"{os.environ.get('NIGHTLAB_PROCESS_TAG')} {os.getpgid(0)}\\n")
    time.sleep(0.1)
"""

# The attack: double fork, setsid, descriptors to /dev/null (the log is not held), execve with an
# empty environment (no tag); the training process waits until the daemons run, then exits 0.
ATTACK = """
import os, sys, time
daemon, out, pids = sys.argv[1:4]
open(pids + ".group", "w").write(str(os.getpgid(0)))
if os.fork() == 0:
    os.setsid()
    top = os.fork()
    if top == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.chdir("/")
        os.execve(sys.executable, [sys.executable, daemon, out, pids, "2"], {})
    open(pids + ".top", "w").write(str(top))
    os._exit(0)
os.wait()
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    if os.path.exists(pids) and len(open(pids).read().split()) >= 3 and os.path.exists(out):
        break
    time.sleep(0.02)
print("the daemons run")
"""

# A program that records the signals it gets; SIGTERM ends it (exit 0) once recorded.
RECORDER = """
import os, signal, sys, time
out = sys.argv[1]
def record(number, frame):
    with open(out, "a") as handle:
        handle.write(signal.Signals(number).name + "\\n")
    if number == signal.SIGTERM:
        sys.exit(0)
for number in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
    signal.signal(number, record)
open(out + ".ready", "w").close()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(9)
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def launcher_argv(folder: Path, program: list[str], namespace: bool = False) -> list[str]:
    """The launcher's argv as ``wrap`` writes it, running ``program`` itself instead of
    ``/bin/sh -c COMMAND``: ``unshare`` execs the launcher, so the pid started is the launcher's.
    ``namespace``: as for a training command (``hide`` given), in a PID namespace of its own
    (``executor/pidns.py``), the launcher a relay outside it."""
    argv = shlex.split(wrapped("true", folder, namespace))
    assert ("--pid-ns" in argv) is namespace
    last = len(argv) - argv[::-1].index("--")
    return argv[:last] + program


def wrapped(command: str, folder: Path, namespace: bool) -> str:
    """``command`` wrapped by the sandbox, as a training command (``namespace``) or another."""
    return sandbox.wrap(command, [folder], "required", **({"hide": []} if namespace else {}))


# Both launcher forms: the plain one, and a training command's in a PID namespace where this
# machine gives one (a relay outside, pid 1 inside: signals and exit status must pass the same).
FORMS = pytest.mark.parametrize(
    "namespace",
    [
        False,
        pytest.param(True, marks=pytest.mark.skipif(not SUPPORT.pidns, reason="no PID namespace here")),
    ],
    ids=["plain", "pid-namespace"],
)


def untagged_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TAG_VARIABLE}
    env.update(extra)
    return env


def wait_for(check, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()] if path.exists() else []


@pytest.fixture
def attack(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The attack's command, the file its daemons write and the file of their pids; any daemon
    still alive at the end (a failing test) is killed."""
    daemon = write(tmp_path, "daemon.py", DAEMON)
    script = write(tmp_path, "attack.py", ATTACK)
    out, pids = tmp_path / "daemon.out", tmp_path / "daemon.pids"
    command = shlex.join([sys.executable, str(script), str(daemon), str(out), str(pids)])
    try:
        yield command, out, pids
    finally:
        for pid in (
            read_pids(pids) + read_pids(Path(f"{pids}.top")) + read_pids(pids.with_name("sleeper.pids"))
        ):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def assert_the_daemons_are_dead(out: Path, pids: Path) -> None:
    found = read_pids(pids)
    assert len(found) == 3, found
    # They did escape: no tag, and a session of their own, out of the run's process group.
    first = out.read_text().splitlines()[0].split()
    assert first[0] == "None" and first[1] != Path(f"{pids}.group").read_text(), first
    assert all(wait_for(lambda pid=pid: gone(pid), within=3.0) for pid in found), [
        (pid, psutil.Process(pid).status()) for pid in found if not gone(pid)
    ]
    size = out.stat().st_size
    time.sleep(0.5)
    assert out.stat().st_size == size, "the daemon still writes after the run ended"


@pytest.mark.parametrize("ending", ["exits", "timeout"])
def test_a_double_forked_setsid_daemon_with_an_empty_environment_dies_with_the_run(
    tmp_path: Path, attack: tuple[str, Path, Path], ending: str
) -> None:
    """Attack A9 for real: the run ends (by itself, or killed at its timeout) and its daemons,
    untagged and out of its group, end with it."""
    command, out, pids = attack
    if ending == "timeout":
        command += "; sleep 60"
    spec = RunSpec(
        command=sandbox.wrap(command, [tmp_path], "required"),
        cwd=tmp_path,
        run_dir=tmp_path / "run",
        seed=0,
        timeout=60 if ending == "exits" else 3,
    )
    result = LocalExecutor(poll_interval=0.02, grace_seconds=0.5).run(spec)
    expected = RunStatus.OK if ending == "exits" else RunStatus.TIMEOUT
    assert result.status is expected, (result.reason, result.log_tail)
    assert_the_daemons_are_dead(out, pids)


def test_the_launcher_itself_kills_and_reaps_what_the_program_left(
    tmp_path: Path, attack: tuple[str, Path, Path]
) -> None:
    """No harness at all: the launcher alone ends the daemons (and a plain background job)
    before it exits, and reaps them: not even a zombie is left."""
    command, out, pids = attack
    sleeper = pids.with_name("sleeper.pids")  # killed by the fixture too, should the test fail
    program = ["/bin/sh", "-c", f"sleep 300 & echo $! > {shlex.quote(str(sleeper))}; {command}"]
    done = subprocess.run(launcher_argv(tmp_path, program), env=untagged_env(), timeout=60)
    assert done.returncode == 0
    found = read_pids(pids) + read_pids(sleeper)
    assert len(found) == 4, found
    assert not [pid for pid in found if psutil.pid_exists(pid)]
    size = out.stat().st_size
    time.sleep(0.5)
    assert out.stat().st_size == size


@pytest.mark.skipif(SUPPORT.landlock < 6, reason="Landlock signal scoping needs ABI 6 (Linux 6.12)")
def test_the_program_cannot_kill_the_launcher_to_orphan_its_daemons(
    tmp_path: Path, attack: tuple[str, Path, Path]
) -> None:
    """Killed first, the launcher would hand the daemons to init again: the program runs in a
    Landlock domain nested in the launcher's, so its signals cannot reach it."""
    command, out, pids = attack
    result = tmp_path / "regicide"
    regicide = write(
        tmp_path,
        "regicide.py",
        f"""
        import os, signal
        pid = os.getppid()
        while pid > 1 and b"sandbox.py" not in open(f"/proc/{{pid}}/cmdline", "rb").read():
            pid = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
        try:
            os.kill(pid, signal.SIGKILL)
            outcome = "killed"
        except PermissionError:
            outcome = "refused"
        open({str(result)!r}, "w").write(f"{{outcome}} {{pid}}")
        """,
    )
    program = ["/bin/sh", "-c", f"{shlex.quote(sys.executable)} {shlex.quote(str(regicide))}; {command}"]
    launcher = subprocess.Popen(launcher_argv(tmp_path, program), env=untagged_env())
    assert launcher.wait(60) == 0
    assert result.read_text() == f"refused {launcher.pid}"
    assert_the_daemons_are_dead(out, pids)


@pytest.mark.parametrize(
    "code",
    [
        "raise SystemExit(0)",
        "raise SystemExit(7)",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
        "import os, signal; signal.signal(signal.SIGTERM, signal.SIG_DFL); os.kill(os.getpid(), signal.SIGTERM)",
    ],
)
@FORMS
def test_the_launcher_exits_as_its_program_did(tmp_path: Path, code: str, namespace: bool) -> None:
    """Its own status is the program's: the exit code, or death by the same signal, as when it
    exec'd the program (in a namespace pid 1 cannot die of the program's signal; the relay,
    which the harness watches, does)."""
    plain = subprocess.run([sys.executable, "-c", code], env=untagged_env())
    argv = launcher_argv(tmp_path, [sys.executable, "-c", code], namespace)
    launched = subprocess.run(argv, env=untagged_env())
    assert launched.returncode == plain.returncode


def _outcome(result: RunResult) -> tuple[RunStatus, int | None, str]:
    return result.status, result.exit_code, result.reason


@pytest.mark.parametrize(
    "command",
    [
        "true",
        "exit 3",
        "exit 137",
        "kill -9 $$",
        "kill -SEGV $$",
        "python -c 'import os; os.kill(os.getpid(), 9)'",
    ],
)
def test_the_executor_reports_a_sandboxed_run_as_before(tmp_path: Path, command: str) -> None:
    """Before, the launcher exec'd ``/bin/sh -c COMMAND``, so a wrapped run reported what the
    same command run by a nested shell reports; it still does (``kill -9 $$`` of the inner shell:
    exit code 137 from the harness's shell, not -9)."""
    executor = LocalExecutor(poll_interval=0.02, grace_seconds=0.5)

    def run(line: str, folder: str) -> RunResult:
        (tmp_path / folder).mkdir()
        spec = RunSpec(
            command=line, cwd=tmp_path / folder, run_dir=tmp_path / folder / "run", seed=0, timeout=30
        )
        return executor.run(spec)

    nested = run(shlex.join(["/bin/sh", "-c", command]), "nested")
    wrapped = run(sandbox.wrap(command, [tmp_path], "required"), "wrapped")
    assert _outcome(wrapped) == _outcome(nested)


@FORMS
def test_signals_sent_to_the_launcher_reach_the_program(tmp_path: Path, namespace: bool) -> None:
    """A user's ``kill`` of the launcher reaches the program once; the harness's own signals are
    not passed on (it sends them to the program itself, and a second copy would run a handler
    twice). In a namespace pid 1 sees no sender: the relay queues what a user sends it."""
    recorder = write(tmp_path, "recorder.py", RECORDER)
    out = tmp_path / "signals"
    # The test process plays the harness: the run's tag names it.
    tag = f"{os.getpid()}:t0:0:test"
    launcher = subprocess.Popen(
        launcher_argv(tmp_path, [sys.executable, str(recorder), str(out)], namespace),
        env=untagged_env(**{TAG_VARIABLE: tag}),
    )
    try:
        assert wait_for(lambda: Path(f"{out}.ready").exists())
        os.kill(launcher.pid, signal.SIGUSR1)  # from the harness: not forwarded
        time.sleep(0.3)
        assert not out.exists()
        for name in ("USR1", "HUP", "TERM"):  # from anyone else: forwarded
            subprocess.run(["kill", f"-{name}", str(launcher.pid)], check=True)
            assert wait_for(lambda name=name: out.exists() and f"SIG{name}" in out.read_text()), name
        assert launcher.wait(10) == 0
        assert out.read_text().split() == ["SIGUSR1", "SIGHUP", "SIGTERM"]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


@FORMS
def test_a_timeout_sigterm_reaches_the_program_under_the_launcher(tmp_path: Path, namespace: bool) -> None:
    recorder = write(tmp_path, "recorder.py", RECORDER)
    out = tmp_path / "signals"
    spec = RunSpec(
        command=wrapped(f"python {recorder} {out}", tmp_path, namespace),
        cwd=tmp_path,
        run_dir=tmp_path / "run",
        seed=0,
        timeout=2.0,
    )
    result = LocalExecutor(poll_interval=0.02, grace_seconds=5.0).run(spec)
    assert result.status is RunStatus.TIMEOUT
    assert out.read_text().split() == ["SIGTERM"]
    assert result.total_seconds < 6, "the program ended at the SIGTERM, not at the SIGKILL after the grace"


def test_a_daemon_started_during_the_grace_period_is_killed_before_the_launcher_is(
    tmp_path: Path, attack: tuple[str, Path, Path]
) -> None:
    """A program that ignores the timeout's SIGTERM and escapes during the grace period: the
    harness no longer looks below the run (its shell died at the SIGTERM) and SIGKILLs the
    launcher at the end of the grace period, so the launcher kills such daemons as they come."""
    command, out, pids = attack
    ready = tmp_path / "ready"
    stubborn = write(
        tmp_path,
        "stubborn.py",
        f"""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, lambda *_: subprocess.Popen({command!r}, shell=True))
        open({str(ready)!r}, "w").close()
        while True:
            time.sleep(0.05)
        """,
    )
    spec = RunSpec(
        command=sandbox.wrap(f"exec python {stubborn}", [tmp_path], "required"),  # the launcher's child
        cwd=tmp_path,
        run_dir=tmp_path / "run",
        seed=0,
        timeout=2.0,
    )
    result = LocalExecutor(poll_interval=0.02, grace_seconds=3.0).run(spec)
    assert result.status is RunStatus.TIMEOUT and ready.exists()
    (top,) = read_pids(Path(f"{pids}.top"))
    for pid in (top, *read_pids(pids)):
        assert wait_for(lambda pid=pid: gone(pid), within=2.0), psutil.Process(pid).cmdline()
    size = out.stat().st_size if out.exists() else 0
    time.sleep(0.5)
    assert (out.stat().st_size if out.exists() else 0) == size


def test_a_harness_killed_with_kill_9_takes_the_sandboxed_run_and_its_daemons_along(
    tmp_path: Path, attack: tuple[str, Path, Path]
) -> None:
    """The watchdog ends the run (SIGTERM to its group and tagged processes): the launcher knows
    it by the tag in its arguments, leaves the trainer its grace, and kills the daemons, which
    the watchdog cannot find."""
    command, out, pids = attack
    recorder = write(tmp_path, "recorder.py", RECORDER)
    signals = tmp_path / "signals"
    wrapped = sandbox.wrap(f"{command}; python {recorder} {signals}", [tmp_path], "required")
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
        proc.kill()  # kill -9 of nightlab
        proc.wait(5)
        assert wait_for(lambda: signals.exists() and "SIGTERM" in signals.read_text())
        assert_the_daemons_are_dead(out, pids)
    finally:
        if proc.is_running():
            proc.kill()


def test_pause_stops_the_program_below_the_launcher_and_resume_continues_it(tmp_path: Path) -> None:
    """``ProcessTree.pause`` (used while the log is trimmed) stops the program, not only the
    launcher; ``resume`` continues it."""
    ticks, pid_file = tmp_path / "ticks", tmp_path / "pid"
    ticker = write(
        tmp_path,
        "ticker.py",
        f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
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
            sandbox.wrap(f"{sys.executable} {ticker}", [tmp_path], "required"),
            shell=True,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    main = MainProcess(popen)
    tree = ProcessTree(main, tag, log, time.time() - 1)
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text() and ticks.exists())
        program = int(pid_file.read_text())
        assert wait_for(lambda: (tree.sample(), program in {p.pid for p in tree.seen.values()})[1])
        tree.pause()
        assert psutil.Process(program).status() == psutil.STATUS_STOPPED
        size = ticks.stat().st_size
        time.sleep(0.3)
        assert ticks.stat().st_size == size
        tree.resume()
        assert wait_for(lambda: ticks.stat().st_size > size, within=3.0)
    finally:
        tree.kill_all(0.5)
        main.close()
    assert main.exit is not None
