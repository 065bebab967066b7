"""Mounts the sandbox's launcher makes for a training command, in its own mount namespace.

Loaded by its path from ``sandbox.py``'s launcher (stdlib only, nothing of nightlab), as root of
a fresh user namespace (``unshare -rnm``) and before ``sandbox.hide_paths`` ends in the nested
namespace that locks every mount made here (``MNT_LOCKED``): the run cannot undo them.

* :func:`private_shm`: a ``/dev/shm`` of the run's own, freed with its last process;
* :func:`veil`: the workspace's state folder (``.nightlab``) empty but for the run's own worktree,
  run directory and setup files.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Sequence

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 8, 32, 4096, 16384


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def private_shm(path: str = "/dev/shm") -> None:
    """A fresh, empty tmpfs over ``/dev/shm``, seen only by this run's processes. The machine's
    ``/dev/shm`` is memory that no process's resident size counts and that outlives the writer:
    a run that filled it (found from outside: 60 MB there under a 20 MB run-directory limit and a
    200 MB memory limit, still there after the run, 24 GB possible on a 23 GB machine) would hold
    the machine's memory for the rest of the night. This one is freed with the run's mount
    namespace, when its last process ends (the launcher kills what is left). Torch's shared
    memory, NCCL's segments and semaphores work as before between the run's own processes."""
    libc = _libc()
    if not os.path.isdir(path):
        return  # a container without one: nothing of the machine's to protect
    flags = _MS_NOSUID | _MS_NODEV
    if libc.mount(b"nightlab-shm", path.encode(), b"tmpfs", flags, b"mode=1777") != 0:
        raise OSError(ctypes.get_errno(), f"cannot give the run a {path} of its own")
    if os.listdir(path):  # checked, not assumed
        raise OSError(f"{path} is still the machine's after mounting a private one")


def veil(folder: str, keep: Sequence[str]) -> None:
    """Make ``folder`` an empty, read-only tmpfs in this mount namespace, with each path of
    ``keep`` beneath it bound back in place (the same files, as writable as before).

    The training command gets the workspace's state folder (``.nightlab``) so: only its own
    worktree and run directory, and the setup files linked into the worktree. Before, it read
    everything there (found from outside): the ledger and every earlier run's ``metrics.json``,
    holdout values included, which its log then carried to the agent; and every earlier run's
    files, a kept change's trained weights among them, which a script can start from (training
    on the compute of every run before it)."""
    libc = _libc()
    if not os.path.isdir(folder):
        return  # a Ray node without the harness's state folder: nothing of it to show
    base = os.path.realpath(folder)
    places: dict[str, str] = {}  # where each kept path is, beneath base, its last part unresolved
    for path in keep:
        place = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if place != base and os.path.commonpath([base, place]) == base and os.path.lexists(place):
            places[os.path.relpath(place, base)] = place
    # A path beneath another one kept shows through it: binding it too would create its mount
    # point in the real folder.
    rels = [r for r in places if not any(o != r and os.path.commonpath([o, r]) == o for o in places)]
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    kept = []
    for rel in sorted(rels):
        place = places[rel]
        # A link (a Ray node's setup folder, linked to the node's shared copy) is made again as
        # it is: what it names lies outside and stays in view.
        kept.append(
            (rel, os.readlink(place) if os.path.islink(place) else os.open(place, os.O_PATH | os.O_CLOEXEC))
        )
    if libc.mount(b"nightlab-state", base.encode(), b"tmpfs", flags, b"mode=0755") != 0:
        raise OSError(ctypes.get_errno(), f"cannot hide {base}")
    for rel, what in kept:
        target = os.path.join(base, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if isinstance(what, str):
            os.symlink(what, target)
            continue
        if stat.S_ISDIR(os.fstat(what).st_mode):
            os.makedirs(target, exist_ok=True)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
        source = f"/proc/self/fd/{what}".encode()
        if libc.mount(source, target.encode(), None, _MS_BIND | _MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), f"cannot show {target} again")
        os.close(what)
    if libc.mount(None, base.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"cannot make {base} read-only")
    shown = {rel.split(os.sep)[0] for rel, _ in kept}
    if set(os.listdir(base)) - shown:  # checked, not assumed
        raise OSError(f"{base} still shows more than the run's own folders")
