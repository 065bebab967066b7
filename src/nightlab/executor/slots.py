"""Slots: how many replicates run at once on this machine, and what each one may use.

A slot is a place for one replicate: its own worktree (named after its index), the GPUs it sees
(``CUDA_VISIBLE_DEVICES``), and on CPU its share of the cores (thread variables, plus pinning to
its own cores where the OS allows). Two runs that fight over one GPU or over the same cores
shift each other's results, which is noise the policy would then read as signal; so slots never
share a GPU unless ``runs_per_gpu`` says so, and CPU slots get disjoint cores.

``plan_slots`` turns ``[run] workers``, ``gpus_per_run``, ``runs_per_gpu`` and
``threads_per_run`` into the list of slots, or one line saying which setting to change.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

from nightlab.config import Config
from nightlab.errors import UserError

# Read by run_process: the cores a run is pinned to (also visible to the run itself).
CPUS_VARIABLE = "NIGHTLAB_CPUS"
# The thread pools a training process may size from the environment.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NIGHTLAB_THREADS",
)


@dataclass(frozen=True)
class Slot:
    """One place for a replicate: ``index`` names its worktree, ``env`` goes on top of the run's
    environment, ``label`` says where it runs (``gpu 0``, ``cpus 2-3``, ``any``)."""

    index: int
    env: dict[str, str] = field(default_factory=dict)
    label: str = "any"

    def to_dict(self) -> dict:
        return {"slot": self.index, "device": self.label, "env": dict(self.env)}


def slots_for(config: Config, environ: Mapping[str, str] | None = None) -> list[Slot]:
    """The slots ``[run]`` asks for on this machine (see :func:`plan_slots`)."""
    run = config.run
    return plan_slots(
        run.workers,
        detect_gpus(environ),
        usable_cores(),
        run.gpus_per_run,
        run.runs_per_gpu,
        run.threads_per_run,
    )


def oversubscribed(slots: list[Slot], cores: int | None = None) -> str | None:
    """One line when the CPU slots' threads outnumber the cores: runs then share cores, so each
    run's speed (and what a seconds budget buys) depends on what the others are doing."""
    cpu = [s for s in slots if "CUDA_VISIBLE_DEVICES" not in s.env]
    if len(cpu) < 2:
        return None
    threads = sum(int(s.env.get("OMP_NUM_THREADS", "1")) for s in cpu)
    cores = cores if cores is not None else len(usable_cores())
    if threads <= cores:
        return None
    return (
        f"{len(cpu)} slots with {threads} threads in all on {cores} cores: runs share cores, so their "
        "speed depends on each other (a seconds budget buys less); use [run] workers of at most "
        f"{cores} (or --workers auto)"
    )


def detect_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set (empty or ``-1``: none),
    else one per line of ``nvidia-smi -L``, else none."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return [] if not ids or ids[0] == "-1" else ids
    return _nvidia_smi_gpus()


@functools.lru_cache(maxsize=1)
def _nvidia_smi_gpus() -> list[str]:
    """One id per GPU ``nvidia-smi -L`` lists (asked once per process: it takes a while)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    lines = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return [str(i) for i in range(len(lines))] if out.returncode == 0 else []


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity where the OS tells, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def plan_slots(
    workers: int | str,
    gpus: list[str],
    cores: list[int],
    gpus_per_run: int | None = None,
    runs_per_gpu: int = 1,
    threads_per_run: int | None = None,
) -> list[Slot]:
    """The slots for ``workers`` (a number, or ``"auto"``) on a machine with ``gpus`` and ``cores``.

    With one worker and nothing asked for, the single slot changes nothing: the run sees every
    GPU and sizes its own threads, as a script run by hand would (a ``torchrun`` target keeps
    all its GPUs). ``gpus_per_run`` defaults to one GPU per slot once there are several.
    """
    if gpus:
        return _gpu_slots(workers, gpus, gpus_per_run, runs_per_gpu, threads_per_run, cores)
    if gpus_per_run:
        raise UserError(
            f"[run] gpus_per_run = {gpus_per_run}, but no GPU is visible (CUDA_VISIBLE_DEVICES, nvidia-smi): "
            "remove gpus_per_run to run on CPU"
        )
    return _cpu_slots(workers, cores, threads_per_run)


def _gpu_slots(
    workers: int | str,
    gpus: list[str],
    gpus_per_run: int | None,
    runs_per_gpu: int,
    threads: int | None,
    cores: list[int],
) -> list[Slot]:
    if workers == 1 and gpus_per_run is None and runs_per_gpu == 1:
        return [Slot(0, _threads_env(threads, None), "all gpus")]
    per_run = gpus_per_run or 1
    groups = [gpus[i : i + per_run] for i in range(0, len(gpus) - per_run + 1, per_run)]
    if not groups:
        raise UserError(
            f"[run] gpus_per_run = {per_run}, but only {len(gpus)} GPU(s) are visible: lower gpus_per_run"
        )
    capacity = len(groups) * runs_per_gpu
    count = capacity if workers == "auto" else int(workers)
    if count > capacity:
        raise UserError(
            f"[run] workers = {count}, but {len(gpus)} GPU(s) at gpus_per_run = {per_run} hold {capacity} "
            f"run(s) at a time: lower workers, or set runs_per_gpu = {-(-count // len(groups))} to share GPUs"
        )
    slots = []
    for index in range(count):
        group = groups[index % len(groups)]  # spread over the GPUs before doubling up on one
        pinned = _core_share(cores, index, threads, count)
        env = {"CUDA_VISIBLE_DEVICES": ",".join(group), **_threads_env(threads, pinned)}
        slots.append(Slot(index, env, f"gpu {','.join(group)}"))
    return slots


def _cpu_slots(workers: int | str, cores: list[int], threads: int | None) -> list[Slot]:
    if workers == "auto":
        count = max(1, len(cores) // (threads or 1))
        threads = threads or 1
    else:
        count = int(workers)
    if count == 1 and threads is None:
        return [Slot(0, {}, "cpu")]
    threads = threads or max(1, len(cores) // count)
    slots = []
    for index in range(count):
        pinned = _core_share(cores, index, threads, count)
        label = f"cpus {_ranges(pinned)}" if pinned else f"cpu ({threads} thread{'s' * (threads > 1)})"
        slots.append(Slot(index, _threads_env(threads, pinned), label))
    return slots


def _core_share(cores: list[int], index: int, threads: int | None, count: int) -> list[int] | None:
    """Slot ``index``'s own cores, or None when the slots' threads do not fit the cores apart (the
    runs then share all cores: pinning them on top of each other would be worse)."""
    if not threads or not hasattr(os, "sched_setaffinity") or threads * count > len(cores):
        return None
    return cores[index * threads : (index + 1) * threads]


def _threads_env(threads: int | None, pinned: list[int] | None) -> dict[str, str]:
    env = {name: str(threads) for name in THREAD_VARIABLES} if threads else {}
    if pinned:
        env[CPUS_VARIABLE] = ",".join(str(c) for c in pinned)
    return env


def _ranges(cores: list[int]) -> str:
    """``0-3`` for a run of consecutive cores, ``0,2`` otherwise."""
    if len(cores) > 1 and cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


def pin(pid: int, env: Mapping[str, str]) -> None:
    """Pin process ``pid`` to the cores ``env`` names (:data:`CPUS_VARIABLE`); children it
    starts later inherit them. Those it already started (on a loaded machine the shell can fork
    the script before this runs) are pinned too. Best effort: a core list the OS refuses, or a
    process already gone, leaves that process unpinned."""
    text = env.get(CPUS_VARIABLE)
    if not text or not hasattr(os, "sched_setaffinity"):
        return
    try:
        cores = {int(c) for c in text.split(",") if c.strip()}
        os.sched_setaffinity(pid, cores)
        started = psutil.Process(pid).children(recursive=True)
    except (OSError, ValueError, psutil.Error):
        return
    for child in started:
        with contextlib.suppress(OSError, psutil.Error):
            child.cpu_affinity(sorted(cores))
