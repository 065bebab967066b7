"""The optional sandbox (Linux): training and evaluation without network, writing only where they must.

It stops what the harness's checks, which detect tampering after the fact, cannot undo: sending
data over the network, writing outside the experiment. Both kernel features need no privilege:
**a network namespace** (``unshare -rn``: a loopback device that is down, every connection fails)
and **Landlock** (Linux 5.13+, through ``ctypes``: writes only beneath the worktree, the run
directory, ``/tmp``, ``/dev/shm`` and existing device and ``/proc`` files; reads everywhere; ABI 4:
TCP refused too, the network fallback without user namespaces; ABI 6: no signal leaves the run).

The wrapped command is::

    unshare -rn -- PYTHON -I -S .../nightlab/sandbox.py --write DIR ... -- /bin/sh -c 'COMMAND'

A training command also gets **a mount namespace** (``unshare -rnm``): the launcher mounts
``/dev/null`` over each ``[target] private`` file (an empty read-only tmpfs over a folder), checks
each, then enters a nested user and mount namespace, where the kernel locks those mounts
(``MNT_LOCKED``); Landlock then refuses every mount call. The evaluation reads the same files.

The launcher stays the command's parent as a child subreaper (``reaper.py``: a double-forked,
``setsid`` daemon without the run's environment is killed with the rest when the command exits),
and gives a training command a PID namespace with a ``/proc`` of its own (``pidns.py``: no other
process of the machine in sight or in reach). It exits as the command did, so the pid the
executor watches, its limits (inherited) and what it reports are as before.

``[run] sandbox`` chooses: ``auto`` (use it where it works, otherwise one warning and the run
goes on unsandboxed), ``required`` (refuse to start without it) or ``off``.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Landlock's system calls share one number on every architecture (asm-generic table).
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights (include/uapi/linux/landlock.h). Reading and executing are not handled,
# so they stay allowed everywhere; every way of changing the filesystem is handled.
_WRITE_FILE = 1 << 1
_WRITE_RIGHTS_V1 = (
    _WRITE_FILE
    | (1 << 4)  # REMOVE_DIR
    | (1 << 5)  # REMOVE_FILE
    | (1 << 6)  # MAKE_CHAR
    | (1 << 7)  # MAKE_DIR
    | (1 << 8)  # MAKE_REG
    | (1 << 9)  # MAKE_SOCK
    | (1 << 10)  # MAKE_FIFO
    | (1 << 11)  # MAKE_BLOCK
    | (1 << 12)  # MAKE_SYM
)
_REFER = 1 << 13  # ABI 2: renames and links across folders
_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# Hiding private files (include/uapi/linux/sched.h, mount.h).
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
MAX_HIDDEN_SOCKETS = 1024  # a desktop has a few hundred; each is one mount at a run's start
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND = 1, 2, 4, 8, 4096

# Where a run may always write: scratch space torch, the tokenizers and Python itself need.
SCRATCH = ("/tmp", "/dev/shm")

MODES = ("auto", "required", "off")
_LISTS = ("--write", "--hide", "--hide-socket", "--veil", "--keep", "--pid-ns")  # options with a value
# Processes and threads a training command may have at once in its PID namespace (pidns.cap).
MAX_TASKS = 8192

# What a training command still sees of the workspace's state folder besides its own worktree
# and run directory: the setup command's files, linked into every worktree (research/setup.py).
SHOWN_STATE = ("setup",)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(0, int(version))


@functools.lru_cache(maxsize=2)
def unshare_works(flags: str) -> bool:
    """Whether ``unshare FLAGS true`` works here: ``-rn`` needs user namespaces (disabled, or forbidden
    by AppArmor, on some machines), ``-rmpf --mount-proc`` a ``/proc`` a container has not masked."""
    program = shutil.which("unshare")
    if program is None or not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run([program, *flags.split(), "--", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def netns_available() -> bool:
    """Whether ``unshare -rn`` works here (user namespaces may be disabled or forbidden by AppArmor)."""
    return unshare_works("-rn")


@dataclass(frozen=True)
class SandboxSupport:
    """What this machine offers; ``complete`` when both the network and writes are confined."""

    landlock: int
    netns: bool
    pidns: bool = False  # a PID namespace with its own /proc for a training command (pidns.py)

    @property
    def confines_writes(self) -> bool:
        return self.landlock >= 1

    @property
    def confines_network(self) -> bool:
        return self.netns or self.landlock >= 4

    @property
    def complete(self) -> bool:
        return self.confines_writes and self.confines_network

    def describe(self) -> str:
        """One line: the mechanisms in use, or what is missing."""
        if not self.complete:
            missing = []
            if not self.confines_writes:
                missing.append("Landlock (Linux 5.13+ with landlock in the kernel's lsm= list)")
            if not self.confines_network:
                missing.append("unprivileged user namespaces (`unshare -rn`) or Landlock ABI 4")
            return "no sandbox: missing " + " and ".join(missing)
        net = "network namespace" if self.netns else "Landlock TCP rules (UDP not blocked)"
        return f"sandbox: Landlock ABI {self.landlock} for writes, {net} for the network"


@functools.lru_cache(maxsize=1)
def detect() -> SandboxSupport:
    """Probe the machine once per process."""
    netns = netns_available()
    return SandboxSupport(landlock_abi(), netns, netns and unshare_works("-rmpf --mount-proc"))


_warned = False


def check(mode: str) -> SandboxSupport | None:
    """The support to use for ``[run] sandbox = mode``; None to run unsandboxed.

    ``required`` without support is a :class:`~nightlab.errors.UserError`; ``auto`` without it
    prints one warning per process and goes on.
    """
    global _warned
    if mode == "off":
        return None
    support = detect()
    if support.complete:
        return support
    if mode == "required":
        from nightlab.errors import UserError

        raise UserError(
            f'nightlab.toml: [run] sandbox = "required" but this machine has {support.describe()}; '
            'set sandbox = "auto" to run unsandboxed'
        )
    if not _warned:
        _warned = True
        print(
            f"warning: {support.describe()}; training runs unsandboxed "
            '(set [run] sandbox = "off" to silence this, "required" to refuse)',
            file=sys.stderr,
        )
    return None


_VARIABLE = re.compile(r"\$\{(\w+)(:-([^}]*))?\}")


def private_files(patterns: Sequence[str], root: Path, env: Mapping[str, str] | None = None) -> list[Path]:
    """The files (and folders) ``[target] private`` names now, resolved (symlinks followed).

    A pattern is a glob (``**`` spans folders); ``${NAME}`` and ``${NAME:-default}`` are taken
    from ``env`` over this process's environment (a pattern whose variable is unset and has no
    default names nothing), then ``~`` is expanded; a relative pattern is relative to ``root``.
    """
    if not patterns:
        return []
    values = {**os.environ, **(env or {})}
    found: dict[str, None] = {}
    for pattern in patterns:
        missing = False

        def value(match: re.Match[str]) -> str:
            nonlocal missing
            text = values.get(match[1]) or (match[3] if match[2] else None)
            missing = missing or text is None
            return text or ""

        text = os.path.expanduser(_VARIABLE.sub(value, pattern))
        if missing or not text:
            continue
        for name in sorted(glob.glob(os.path.join(root, text), recursive=True)):
            found.setdefault(os.path.realpath(name))
    return [Path(name) for name in found]


def hiding_problem(mode: str, private: Sequence[str]) -> str | None:
    """Why the training process will be able to read the ``[target] private`` files, in one line
    for the start of a night; None when they will be hidden (or none are declared). With
    ``sandbox = "required"`` a :class:`~nightlab.errors.UserError` instead: the user counts on it."""
    if not private:
        return None
    support = None if mode == "off" else check(mode)
    if support is not None and support.netns:
        return None
    if mode == "off":
        why = 'the sandbox is off ([run] sandbox = "off")'
    elif support is None:
        why = "there is no sandbox"
    else:
        why = "hiding them needs user namespaces (`unshare -rm`), which this machine does not allow"
    problem = f"the training process can read the [target] private files (val and holdout data): {why}"
    if mode == "required":
        from nightlab.errors import UserError

        raise UserError(f'nightlab.toml: [run] sandbox = "required" but {problem}')
    return problem


def unix_sockets(table: str = "/proc/net/unix") -> list[str]:
    """The machine's bound unix sockets that have a path (the network namespace keeps a run off
    abstract ones, not these): a tmux server, the user's D-Bus (``systemd-run --user``), Docker's
    or an X server's socket would each run a command outside the sandbox. NVIDIA's (persistence
    daemon, MPS) stay: CUDA may need them."""
    try:
        with open(table) as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7].startswith("/") and "nvidia" not in fields[7]:
            found.append(fields[7])
    return list(dict.fromkeys(found))[:MAX_HIDDEN_SOCKETS]


def socket_folders() -> list[str]:
    """The folders, as they exist now, where the user's services make the sockets that would run
    a command for the run: the runtime folder (D-Bus, ``systemd --user``), tmux's and X's. The
    training command sees each empty (``mounts.veil``), so a socket made there after the run
    started (a tmux server started during the night) is out of its reach too, which the list of
    sockets bound at the start (:func:`unix_sockets`) cannot cover."""
    uid = os.getuid()
    tmux = os.path.join(os.environ.get("TMUX_TMPDIR") or "/tmp", f"tmux-{uid}")
    return [name for name in (f"/run/user/{uid}", tmux, "/tmp/.X11-unix") if os.path.isdir(name)]


def wrap(
    command: str,
    writable: Sequence[Path],
    mode: str,
    hide: Sequence[Path] | None = None,
    veil: Path | None = None,
) -> str:
    """``command`` confined per ``mode``: no network, writes only beneath ``writable`` and scratch.
    ``hide`` (given for a training command, even empty): where user namespaces allow, those files
    and folders empty in its view, and the machine's unix sockets gone (:func:`unix_sockets`);
    ``veil`` (with ``hide``): the workspace's state folder, of which it then sees only the
    ``writable`` paths and :data:`SHOWN_STATE` (``mounts.veil``)."""
    support = check(mode)
    if support is None:
        return command
    # The launcher is this file run as a script: stdlib only, no site-packages (-S), nothing from
    # the environment or the working directory (-I), so it starts fast and cannot be redirected.
    launcher = [sys.executable, "-I", "-S", str(Path(__file__).resolve())]
    for path in writable:
        launcher += ["--write", str(Path(path).resolve())]
    if not support.netns:
        launcher.append("--deny-tcp")
    sockets = unix_sockets() if hide is not None and support.netns else []
    # A training command gets a mount namespace of its own wherever user namespaces allow: its
    # private files and the machine's unix sockets hidden, and a /dev/shm of its own.
    hidden = hide is not None and support.netns  # without user namespaces: hiding_problem() says so
    for path in (hide or ()) if hidden else ():
        launcher += ["--hide", str(path)]
    for path in sockets:
        launcher += ["--hide-socket", path]
    if hidden:
        launcher += ["--training", "--pid-ns", str(MAX_TASKS)] if support.pidns else ["--training"]
    for folder in socket_folders() if hidden else ():
        launcher += ["--veil", folder]
    if hidden and veil is not None:
        launcher += ["--veil", str(Path(veil).resolve())]
        for name in SHOWN_STATE:
            launcher += ["--keep", str(Path(veil).resolve() / name)]  # a link there stays one
    inner = ["/bin/sh", "-c", command]
    unshare = ["unshare", "-rnm" if hidden else "-rn", "--"] if support.netns else []
    return shlex.join(unshare + launcher + ["--"] + inner)


# ---------------------------------------------------------------------------------- the launcher
def hide_paths(paths: Sequence[str], sockets: Sequence[str] = ()) -> None:
    """Make ``paths`` empty in this mount namespace for good (root in a fresh user namespace, as
    under ``unshare -rm``): ``/dev/null`` over a file, an empty read-only tmpfs over a folder,
    each checked; ``/dev/null`` over each of ``sockets`` as well, where it can be (a connect then
    finds no socket); then a nested user and mount namespace, which locks the mounts (``mounts.py``'s
    too). Raises OSError when a path cannot be hidden (a socket that cannot is left: best effort)."""
    devnull = os.stat("/dev/null")
    if not stat.S_ISCHR(devnull.st_mode):  # replaced by a file (a `> /dev/null` as root recreates one)
        raise OSError("/dev/null is not the null device (a regular file there would show its contents)")
    libc = _libc()
    for path in sockets:
        if os.path.lexists(path) and not os.path.isdir(path):
            libc.mount(b"/dev/null", path.encode(), None, _MS_BIND, None)
    null = devnull.st_rdev
    for path in paths:
        if not os.path.lexists(path):
            continue  # gone since the harness listed it (or under a folder hidden already)
        folder = os.path.isdir(path)
        if folder:
            flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
            done = libc.mount(b"nightlab-private", path.encode(), b"tmpfs", flags, b"size=4k,mode=0555")
        else:
            done = libc.mount(b"/dev/null", path.encode(), None, _MS_BIND, None)
        if done != 0:
            raise OSError(ctypes.get_errno(), f"cannot hide {path}")
        now = os.stat(path)
        if os.listdir(path) if folder else now.st_rdev != null:  # checked, not assumed
            raise OSError(f"{path} is still readable after hiding it")
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "cannot enter a nested user namespace to lock the mounts")
    # The same identity as before (root of the user namespace): one id, mapped to itself.
    for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)


def restrict(writable: Sequence[str], deny_tcp: bool, scope: bool = True) -> None:
    """Confine this process and its future children (Landlock); raises OSError when refused."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available")
    libc = _libc()
    handled = _WRITE_RIGHTS_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs=handled)
    size = 8
    if abi >= 4 and deny_tcp:
        attr.net, size = _NET_BIND_TCP | _NET_CONNECT_TCP, 16
    if abi >= 6 and scope:
        attr.scoped, size = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL, 24
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        rules = [(p, handled) for p in (*writable, *SCRATCH)]
        # Existing device files stay writable (/dev/null, /dev/nvidia*), and so do existing files
        # under /proc: CUDA's driver fails to initialise without them (seen on an H200 machine).
        # Nothing can be created in either; another process's /proc/<pid>/mem stays out of reach
        # because Landlock refuses ptrace access to processes outside the sandbox.
        file_rights = _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0)
        rules += [("/dev", file_rights), ("/proc", file_rights)]
        for path, rights in rules:
            _add_path_rule(libc, ruleset, path, rights)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


def _add_path_rule(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a scratch folder this machine lacks
    try:
        if not os.path.isdir(path):
            rights &= _WRITE_FILE | _TRUNCATE  # the only rights a rule on a file may carry
        rule = _PathBeneath(allowed=rights, parent_fd=fd)
        if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """``python sandbox.py --write DIR ... [--hide PATH ...] [--deny-tcp] -- PROGRAM ARGS``: hide,
    confine, become a subreaper, run the program below, and exit as it did."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: python sandbox.py --write DIR ... [--deny-tcp] -- PROGRAM ARGS", file=sys.stderr)
        return 2
    split = args.index("--")
    options, program = args[:split], args[split + 1 :]
    values = {
        flag: [options[i + 1] for i, word in enumerate(options[:-1]) if word == flag] for flag in _LISTS
    }
    writable, private, sockets, veil = (values[flag] for flag in _LISTS[:4])
    training, keep = "--training" in options, [*writable, *values["--keep"]]
    reaper, mounts, pidns, scratch = (
        _load_sibling(f"{name}.py") for name in ("reaper", "mounts", "pidns", "scratch")
    )
    caches = scratch.compile_caches(training=training)  # see there: the frozen side's are others
    try:
        if training:  # first: made after the veils and hidden files below, it would undo them
            scratch.private_tmp(os.environ.get("NIGHTLAB_RUN_DIR", ""), [*writable, *caches])
        for folder in veil:
            mounts.veil(folder, keep)
        if veil or training:
            os.chdir(os.getcwd())  # the working folder as the run sees it (bound back in place)
        if training:
            mounts.private_shm()
        if private or sockets or training or veil:
            hide_paths(private, sockets)  # ends in the nested namespace that locks every mount
    except OSError as exc:
        print(
            f"nightlab sandbox: cannot hide the private files or give the run its /tmp ({exc}); not started",
            file=sys.stderr,
        )
        return 126
    deny_tcp, scope = "--deny-tcp" in options, "--no-scope" not in options
    tag, status_fd, keeper = os.environ.get(reaper.TAG_VARIABLE, ""), -1, None
    if values["--pid-ns"]:  # pid 1 goes on below; the relay returns when it has ended
        status, status_fd = pidns.enter(reaper, tag, int(values["--pid-ns"][0]))
        if status is not None:
            return reaper.exit_like(status)
        keeper = lambda info: not pidns.relayed(info)  # noqa: E731
    try:
        restrict(writable, deny_tcp=deny_tcp, scope=scope)
    except OSError as exc:
        print(f"nightlab sandbox: cannot confine the run ({exc}); not started", file=sys.stderr)
        return 126
    try:
        reaper.become_subreaper()
    except OSError as exc:
        print(f"nightlab sandbox: cannot watch the run's processes ({exc}); not started", file=sys.stderr)
        return 126
    # The program: a Landlock domain nested in the launcher's (ABI 6: it cannot signal the launcher).
    status = reaper.supervise(program, lambda: restrict(writable, deny_tcp=deny_tcp, scope=scope), keeper)
    if status_fd >= 0:
        pidns.report(status_fd, status)
        return 0
    return reaper.exit_like(status)


def _load_sibling(name: str) -> types.ModuleType:
    """``name`` beside this file, loaded by path (before Landlock, which would keep its bytecode from
    being cached): under ``-I`` this folder is not on ``sys.path``."""
    import importlib.util

    path = Path(__file__).resolve().with_name(name)
    spec = importlib.util.spec_from_file_location(f"nightlab_sandbox_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    # The launcher has lived as long as the run: it leaves at once, without the interpreter's
    # clean-up, which would only add to every run's end.
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed log: nothing more can be said there anyway
    os._exit(code)
