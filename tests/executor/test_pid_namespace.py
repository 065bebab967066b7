"""A training command's PID namespace (``executor/pidns.py``).

Found from outside (session 18): a sandboxed train.py listed ``/proc``, found the ``nightlab try``
that ran it and every other nightlab process of the user, and wrote 1000 into each one's
``oom_score_adj`` (read back: 1000), so that under memory pressure the kernel would kill the
harness, not the run. These tests run that attack through the launcher as ``wrap`` writes it for
a training command, and check that the namespace changes nothing else a run shows: its exit
status, the signals it gets, what the executor reports; and that it closes one gap more: a
daemon no longer outlives a SIGKILL of the launcher.

They skip where this machine cannot give a run a PID namespace (``sandbox.detect().pidns``).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from nightlab.executor import sandbox
from nightlab.executor.local import LocalExecutor
from nightlab.executor.proctree import TAG_VARIABLE
from nightlab.types import RunSpec, RunStatus

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

# A program that records the signals it gets; SIGTERM ends it (exit 0) once recorded.
RECORDER = """
import signal, sys, time
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


def training_argv(folder: Path, program: list[str]) -> list[str]:
    """The launcher's argv as ``wrap`` writes it for a training command (``hide`` given), running
    ``program`` itself instead of ``/bin/sh -c COMMAND``."""
    argv = shlex.split(sandbox.wrap("true", [folder], "required", hide=[]))
    assert "--pid-ns" in argv
    last = len(argv) - argv[::-1].index("--")
    return argv[:last] + program


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
def test_the_launcher_still_exits_as_its_program_did(tmp_path: Path, code: str) -> None:
    """Pid 1 cannot die of the program's signal; the relay, which the harness watches, does."""
    plain = subprocess.run([sys.executable, "-c", code], env=untagged_env())
    launched = subprocess.run(training_argv(tmp_path, [sys.executable, "-c", code]), env=untagged_env())
    assert launched.returncode == plain.returncode


def test_a_users_signals_reach_the_program_once_and_a_keepers_are_not_doubled(tmp_path: Path) -> None:
    """From outside the namespace pid 1 sees no sender: the relay queues what a user sends it, and
    pid 1 passes on only that; a keeper's signal (here: to the relay, as the harness's own is
    sent to the group) is not passed on."""
    recorder = write(tmp_path, "recorder.py", RECORDER)
    out = tmp_path / "signals"
    tag = f"{os.getpid()}:t0:0:test"  # the test process plays the harness
    launcher = subprocess.Popen(
        training_argv(tmp_path, [sys.executable, str(recorder), str(out)]),
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


def test_a_timeout_reaches_the_program_once_through_the_group(tmp_path: Path) -> None:
    """The executor's SIGTERM to the run's group reaches the program (in the namespace, behind
    pid 1) once, and it ends at it, not at the SIGKILL after the grace period."""
    recorder = write(tmp_path, "recorder.py", RECORDER)
    out = tmp_path / "signals"
    spec = RunSpec(
        command=sandbox.wrap(f"python {recorder} {out}", [tmp_path], "required", hide=[]),
        cwd=tmp_path,
        run_dir=tmp_path / "run",
        seed=0,
        timeout=2.0,
    )
    result = LocalExecutor(poll_interval=0.02, grace_seconds=5.0).run(spec)
    assert result.status is RunStatus.TIMEOUT
    assert out.read_text().split() == ["SIGTERM"]
    assert result.total_seconds < 6


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
