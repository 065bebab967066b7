"""The optional sandbox: no network, writes only to the worktree, the run directory and scratch.

The tests that need the sandbox skip where this machine offers neither Landlock nor user
namespaces (``nightlab.executor.sandbox.detect()``); the policy tests (``required`` refuses, ``auto``
warns once) run everywhere.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightlab.errors import UserError
from nightlab.executor import sandbox
from trust.kit import (
    PLANTED_KEY,
    assert_clean,
    assert_never_kept,
    attack,
    ledger_rows,
    run_session,
    trust_workspace,
)

SUPPORT = sandbox.detect()
needs_sandbox = pytest.mark.skipif(not SUPPORT.complete, reason=f"this machine has {SUPPORT.describe()}")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 in the harness's network: what a leaking run would call."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[socket.socket]:
    """A unix socket with a path, as a tmux server, the user's D-Bus or Docker listen on: a run
    that reaches one can have a command started outside the sandbox."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "server.sock"))
    server.listen(8)
    server.settimeout(0.2)
    try:
        yield server
    finally:
        server.close()


def _connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            return count
        conn.close()
        count += 1


def test_off_leaves_the_command_alone() -> None:
    assert sandbox.wrap("python train.py", [Path("/x")], "off") == "python train.py"


def test_required_without_support_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "detect", lambda: sandbox.SandboxSupport(landlock=0, netns=False))
    with pytest.raises(UserError, match=r'\[run\] sandbox = "required"') as info:
        sandbox.check("required")
    assert "\n" not in str(info.value)


def test_auto_without_support_warns_once_and_runs_unsandboxed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sandbox, "detect", lambda: sandbox.SandboxSupport(landlock=3, netns=False))
    monkeypatch.setattr(sandbox, "_warned", False)
    assert sandbox.wrap("python train.py", [Path("/x")], "auto") == "python train.py"
    assert sandbox.wrap("python train.py", [Path("/x")], "auto") == "python train.py"
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "unsandboxed" in err and "user namespaces" in err


PROBE = """\
import socket, sys
port, outside, pth = int(sys.argv[1]), sys.argv[2], sys.argv[3]
results = []
try:
    socket.create_connection(("127.0.0.1", port), timeout=2).close(); results.append("connected")
except OSError as exc:
    results.append(f"no-connect:{exc.errno}")
for path in (outside, pth):
    try:
        open(path, "w").write("# nightlab sandbox probe\\n"); results.append("wrote")
    except OSError as exc:
        results.append(f"no-write:{exc.errno}")
print(" ".join(results))
"""


@needs_sandbox
def test_wrapped_command_cannot_connect_or_write_outside(
    tmp_path: Path, outside_tmp: Path, listener: socket.socket
) -> None:
    """The same probe, unwrapped then wrapped: the control proves the probe can succeed."""
    work, script = tmp_path / "work", tmp_path / "probe.py"
    work.mkdir()
    script.write_text(PROBE)
    pth = Path(sysconfig.get_paths()["purelib"]) / "zz_nightlab_sandbox_probe.pth"
    args = f"{sys.executable} {script} {listener.getsockname()[1]} {outside_tmp / 'victim.txt'} {pth}"
    try:
        wrapped = sandbox.wrap(args, [work], "required")
        confined = subprocess.run(wrapped, shell=True, capture_output=True, text=True, timeout=60)
        assert confined.stdout.split()[0].startswith("no-connect"), confined.stdout + confined.stderr
        # The .pth probe targets this interpreter's site-packages. A virtual environment that
        # itself lives under a scratch directory the sandbox leaves writable (/tmp, e.g. a CI
        # clone there) is not protected: docs/SECURITY.md says so, and the test checks what holds.
        venv_in_scratch = any(pth.resolve().is_relative_to(Path(d)) for d in sandbox.SCRATCH)
        expected_pth = "wrote" if venv_in_scratch else "no-write:13"
        assert confined.stdout.split()[1:] == ["no-write:13", expected_pth], confined.stdout
        assert not (outside_tmp / "victim.txt").exists() and (venv_in_scratch or not pth.exists())
        assert _connections(listener) == 0
        control = subprocess.run(args, shell=True, capture_output=True, text=True, timeout=60)
        assert control.stdout.split() == ["connected", "wrote", "wrote"], control.stdout + control.stderr
        assert _connections(listener) == 1
    finally:
        pth.unlink(missing_ok=True)


CONNECT_UNIX = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect(sys.argv[1]); print('connected')\n"
    "except OSError as exc:\n"
    "    print('no-connect', exc.errno)\n"
)


@needs_sandbox
@pytest.mark.skipif(not SUPPORT.netns, reason="hiding sockets needs user namespaces")
def test_a_training_command_cannot_reach_the_machines_unix_sockets(
    tmp_path: Path, unix_listener: socket.socket
) -> None:
    """The network namespace keeps a run off TCP and abstract sockets, not off a socket with a
    path (found from outside): the training command finds /dev/null there; the evaluation (given
    no ``hide``) and an unwrapped command still connect, so the probe can succeed."""
    path = unix_listener.getsockname()
    assert path in sandbox.unix_sockets()
    script = tmp_path / "connect.py"
    script.write_text(CONNECT_UNIX)
    command = f"{sys.executable} {script} {path}"
    work = tmp_path / "work"
    work.mkdir()
    training = subprocess.run(
        sandbox.wrap(command, [work], "required", hide=[]), shell=True, capture_output=True, text=True
    )
    assert training.stdout.split() == ["no-connect", "111"], training.stdout + training.stderr
    assert _connections(unix_listener) == 0
    for control in (sandbox.wrap(command, [work], "required"), command):
        done = subprocess.run(control, shell=True, capture_output=True, text=True)
        assert done.stdout.split() == ["connected"], done.stdout + done.stderr
    assert _connections(unix_listener) == 2


@needs_sandbox
@pytest.mark.slow
def test_session_in_the_sandbox(
    outside_tmp: Path, listener: socket.socket, unix_listener: socket.socket
) -> None:
    """Through the CLI: the baseline (training and evaluation) works confined; the attacks fail."""
    port = listener.getsockname()[1]
    unix_server, sock_path = unix_listener, unix_listener.getsockname()
    victim = outside_tmp / "victim.txt"
    steal = (
        "import re\n"
        "pid, found = os.getppid(), ''\n"
        "while pid > 1 and not found:\n"
        "    try:\n"
        "        found = ''.join(re.findall(r'sk-[A-Za-z0-9]+', open(f'/proc/{pid}/environ').read())[:1])\n"
        "    except OSError:\n"
        "        pass\n"
        "    pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "if not found:\n"
        "    raise RuntimeError('no key in any ancestor environment')\n"
        "print('stolen', found)"
    )
    root = trust_workspace(
        outside_tmp / "ws",
        [
            attack(
                "send the results home",
                f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
            ),
            attack("write outside the experiment", f"open({str(victim)!r}, 'w').write('owned')"),
            attack("read the key from the harness's environment", steal),
            attack(
                "start a command outside through a unix socket",
                f"import socket\nsocket.socket(socket.AF_UNIX).connect({str(sock_path)!r})",
            ),
        ],
        sandbox="required",
        audit="off",
    )
    res = run_session(root, env={"OPENAI_API_KEY": PLANTED_KEY})
    assert "warning" not in res.stderr
    assert "the workspace lies in" not in res.stdout  # out of /tmp: nothing to warn about
    rows = ledger_rows(root)
    assert rows["baseline"]["decision"] == "baseline", rows["baseline"]["reason"]
    net = rows["send the results home"]
    assert net["decision"] == "crash" and "[Errno" in net["reason"], net["reason"]
    assert _connections(listener) == 0
    write = rows["write outside the experiment"]
    assert write["decision"] == "crash" and "PermissionError" in write["reason"], write["reason"]
    assert not victim.exists()
    key = rows["read the key from the harness's environment"]
    assert key["decision"] == "crash" and "no key in any ancestor" in key["reason"], key["reason"]
    if SUPPORT.netns:  # a socket with a path is out of reach only with user namespaces
        unix = rows["start a command outside through a unix socket"]
        assert unix["decision"] == "crash" and "Connection refused" in unix["reason"], unix["reason"]
        assert _connections(unix_server) == 0
    assert_never_kept(root)
    assert_clean(root)


@needs_sandbox
@pytest.mark.skipif(SUPPORT.landlock < 6, reason="Landlock signal scoping needs ABI 6 (Linux 6.12)")
def test_wrapped_command_cannot_signal_the_harness() -> None:
    import os

    probe = f"{sys.executable} -c 'import os; os.kill({os.getpid()}, 0); print(\"signalled\")'"
    confined = subprocess.run(sandbox.wrap(probe, [], "required"), shell=True, capture_output=True, text=True)
    assert confined.returncode != 0 and "PermissionError" in confined.stderr, (
        confined.stdout + confined.stderr
    )
    control = subprocess.run(probe, shell=True, capture_output=True, text=True)
    assert control.stdout.strip() == "signalled"


@needs_sandbox
def test_a_workspace_in_scratch_space_is_named_at_the_start(tmp_path: Path) -> None:
    """/tmp is writable to every sandboxed run (torch needs scratch space), so a workspace there
    is not protected: its .git and ledger are in reach. The night says so before it starts."""
    root = trust_workspace(tmp_path / "ws", [attack("harmless", "pass")], sandbox="required")
    res = run_session(root, "-n", "0")
    out = " ".join(res.stdout.split())
    assert "warning: the workspace lies in /tmp, which the sandbox leaves writable to runs" in out, out


def test_hiding_refuses_a_dev_null_that_is_no_longer_the_null_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found in review: a `/dev/null` replaced by a regular file (an atomic write onto it, as root)
    # was bind-mounted over the private files, and training read what had been written into it.
    fake = tmp_path / "null"
    fake.write_text("what the null device is not\n")
    real_stat = sandbox.os.stat
    monkeypatch.setattr(
        sandbox.os, "stat", lambda p, *a, **k: real_stat(fake if p == "/dev/null" else p, *a, **k)
    )
    monkeypatch.setattr(sandbox, "_libc", lambda: pytest.fail("no mount may be tried"))
    with pytest.raises(OSError, match="/dev/null is not the null device"):
        sandbox.hide_paths([str(tmp_path / "private.bin")])
