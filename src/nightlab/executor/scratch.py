"""A training command's own ``/tmp``: a folder in its run directory, so what it writes there counts.

The machine's ``/tmp`` is shared and counted by no limit: a run wrote 60 MB there under
``run_dir_limit_mb = 20``, was recorded ``ok``, and the file outlived it (reproduced through
``nightlab try``); a later run could also read what an earlier one left there. Loaded by its path
from ``sandbox.py``'s launcher (stdlib only), as root of the training command's mount namespace
and *before* the veils and the hidden files (``mounts.py``, ``sandbox.hide_paths``): made after
them, the new ``/tmp`` would cover, and so undo, every one of them beneath ``/tmp``.

:func:`private_tmp` binds ``RUN_DIR/.nightlab-tmp`` over ``/tmp`` (the run directory's disk limit,
sampled every second, then counts it), then shows each entry of the machine's ``/tmp`` again in
its place read-only (a data cache or a workspace there stays readable; nothing of the machine's
can be changed), and the run's writable folders beneath ``/tmp`` (its worktree and run directory
when the workspace lies there, the shared compile caches) as writable as before; ``TMPDIR`` is
set to it.
:func:`discard` removes the folder once the run has ended, before the harness scans the run
directory (sockets and pipes left in ``/tmp`` are normal there, planted in a run directory).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

FOLDER = ".nightlab-tmp"  # in the run directory
# Entries of the machine's /tmp shown one by one (a mount each, ~0.07 ms: 2,180 entries added
# 135 ms to a run's start). Past it the run keeps the shared /tmp, as without this module, and
# its log says why: a night goes on (a refused run would waste it) and no run start grows by
# seconds, long before the kernel's mount limit (fs.mount-max, 100,000) would refuse it.
MAX_ENTRIES = 10_000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 8, 32, 4096, 16384


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _read_only(libc: ctypes.CDLL, target: str, writable: bool) -> None:
    if not writable:
        # The flags the kernel locked on the machine's mount (noexec, ...) must be kept.
        locked = os.statvfs(target).f_flag & (_MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        flags = locked | _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
        if libc.mount(None, target.encode(), None, flags, None) != 0:
            raise OSError(ctypes.get_errno(), f"cannot make {target} read-only in the run's /tmp")


def _mount_point(target: str, fd: int) -> None:
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(target, exist_ok=True)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))


def compile_caches(training: bool, root: str = "/tmp") -> list[str]:
    """Point Triton's, CUDA's and torch.compile's caches into ``root`` (the home folder is
    read-only) unless the environment names them; returns the folders, made now. A training
    command's are shared by every training run (a graph is compiled once per shape, not once per
    experiment) and stay writable in its ``/tmp``; an evaluation's are others, which no training
    run can write (read-only in its ``/tmp`` if they exist, out of its reach if not), so no run
    can plant a compiled program that a frozen evaluation that compiles would load."""
    folders = []
    for name, kind in (
        ("TRITON_CACHE_DIR", "triton"),
        ("CUDA_CACHE_PATH", "cuda-cache"),
        ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
    ):
        prefix = "nightlab" if training else "nightlab-eval"
        folder = os.environ.setdefault(name, os.path.join(root, f"{prefix}-{kind}-{os.getuid()}"))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue  # named by the user somewhere it cannot be made: the tool will say so
        folders.append(folder)
    return folders


def private_tmp(run_dir: str, writable: Sequence[str], root: str = "/tmp") -> str | None:
    """Give this mount namespace a ``root`` of its own in ``run_dir``, which must lie in one of
    ``writable`` (see the module docstring); ``writable``: the paths that stay writable where
    they lie beneath ``root``. Returns the folder; None without a run directory (a command
    wrapped outside the executor) or past ``MAX_ENTRIES`` (the shared ``root`` stays, with one
    line on stderr). Raises OSError when a step fails (the run is then not started)."""
    if not run_dir:
        return None
    libc = _libc()
    base = os.path.realpath(root)
    folder = os.path.join(os.path.realpath(run_dir), FOLDER)
    mine = os.path.realpath(run_dir)
    if not any(
        os.path.commonpath([mine, os.path.realpath(path)]) == os.path.realpath(path) for path in writable
    ):
        raise OSError(f"the run directory {run_dir} is not one the run may write")
    shutil.rmtree(folder, ignore_errors=True)  # left by a run whose harness was killed (never followed)
    os.mkdir(folder, 0o700)
    open_flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    own = os.open(folder, open_flags | os.O_DIRECTORY)
    places = {}
    for path in writable:
        place = os.path.realpath(path)
        if os.path.commonpath([base, place]) == base and place != base and os.path.exists(place):
            places[os.path.relpath(place, base)] = place
    # A writable path beneath another one shows through it.
    rels = [r for r in places if not any(o != r and os.path.commonpath([o, r]) == o for o in places)]
    names = sorted(os.listdir(base))
    if len(names) > MAX_ENTRIES:
        print(
            f"nightlab sandbox: the machine's {base} holds {len(names)} entries, more than the "
            f"{MAX_ENTRIES} a run's own {base} shows: this run writes to the shared {base}, which its "
            "disk limit does not count; remove old entries there",
            file=sys.stderr,
        )
        os.close(own)
        os.rmdir(folder)
        return None
    entries: list[tuple[str, int | str]] = []
    for name in names:
        path = os.path.join(base, name)
        try:
            entries.append((name, os.readlink(path) if os.path.islink(path) else os.open(path, open_flags)))
        except OSError:
            continue  # gone since the listing: another process's temporary file
    inner = [(rel, os.open(places[rel], open_flags)) for rel in sorted(rels) if os.sep in rel]
    if libc.mount(f"/proc/self/fd/{own}".encode(), base.encode(), None, _MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), f"cannot give the run a {base} of its own")
    os.close(own)
    for name, what in entries:
        target = os.path.join(base, name)
        if isinstance(what, str):
            os.symlink(what, target)
            continue
        _mount_point(target, what)
        source = f"/proc/self/fd/{what}".encode()
        if libc.mount(source, target.encode(), None, _MS_BIND | _MS_REC, None) == 0:
            _read_only(libc, target, writable=name in rels)
        elif name in rels:
            raise OSError(ctypes.get_errno(), f"cannot show {target} in the run's /tmp")
        elif os.path.isdir(target):  # deleted since the listing
            os.rmdir(target)
        else:
            os.unlink(target)
        os.close(what)
    for rel, fd in inner:  # beneath a read-only entry: writable again
        target = os.path.join(base, rel).encode()
        if libc.mount(f"/proc/self/fd/{fd}".encode(), target, None, _MS_BIND | _MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), f"cannot show {base}/{rel} writable in the run's /tmp")
        os.close(fd)
    if os.stat(base).st_ino != os.stat(folder).st_ino:  # checked, not assumed
        raise OSError(f"{base} is still the machine's after mounting the run's own")
    # Temporary files go where they count (a TMPDIR elsewhere was not writable, or is read-only now).
    os.environ["TMPDIR"] = base
    return folder


def discard(run_dir: Path) -> None:
    """Remove what the ended run left in its ``/tmp`` (links are removed, never followed)."""
    shutil.rmtree(Path(run_dir) / FOLDER, ignore_errors=True)
