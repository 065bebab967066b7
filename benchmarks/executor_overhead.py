"""What the local executor costs per run, beyond the command itself.

Three measurements, each against the cheapest way Python can run the same command
(``subprocess.run(cmd, shell=True)``), so what is left is the executor's own work: building
the environment, the log file, sampling the process tree, classifying, and the sweep for
leftover processes at the end.

1. ``true`` many times: the fixed cost of one run (wall time of ``LocalExecutor.run`` minus
   wall time of a bare ``subprocess.run``).
2. ``sleep S``: the cost while a run goes on (harness CPU per second of run, from sampling)
   and how late the end is noticed (wall time minus S).
3. a timeout: how long after the deadline the run is dead and its result returned.
4. the run's watchdog (the process beside each run that kills it if the harness dies): what
   starting one costs the harness (wall time of the spawn; it is never waited for), and the
   CPU the watchdog process itself uses from start to exit (``RUSAGE_CHILDREN``).

Usage: ``python benchmarks/executor_overhead.py [--runs 50] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from nightlab.executor.local import LocalExecutor
from nightlab.executor.process import Watchdog
from nightlab.types import RunSpec, RunStatus


def _timed(fn) -> tuple[float, float]:
    """Wall and harness-CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _spec(root: Path, command: str, timeout: float = 60.0) -> RunSpec:
    return RunSpec(command=command, cwd=root, run_dir=root / "run", seed=0, timeout=timeout)


def measure(runs: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="nightlab-bench-"))
    ex = LocalExecutor()  # the defaults the harness uses: poll 0.1 s, grace 5 s

    def bare() -> None:
        subprocess.run("true", shell=True, cwd=root, stdin=subprocess.DEVNULL, check=True)

    def executor() -> None:
        assert ex.run(_spec(root, "true")).status is RunStatus.OK

    bare(), executor()  # warm up imports and caches
    bare_walls = [_timed(bare)[0] for _ in range(runs)]
    ex_times = [_timed(executor) for _ in range(runs)]
    ex_walls = [t[0] for t in ex_times]

    sleep_s = 2.0
    wall, cpu = _timed(lambda: ex.run(_spec(root, f"sleep {sleep_s}")))

    timeout_s = 0.5
    timeout_wall, _ = _timed(lambda: ex.run(_spec(root, "sleep 60", timeout=timeout_s)))

    guards: list[Watchdog] = []

    def watchdog() -> None:
        guard = Watchdog(os.getpid(), "benchmark", 1.0)  # released at once: it kills nothing
        guard.release()
        guards.append(guard)

    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawn_walls = [_timed(watchdog)[0] for _ in range(runs)]
    for guard in guards:
        assert guard.proc is not None and guard.proc.wait(10) == 0
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    watchdog_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )

    return {
        "runs": runs,
        "bare_subprocess_ms": 1000 * statistics.median(bare_walls),
        "executor_run_ms": 1000 * statistics.median(ex_walls),
        "executor_run_p95_ms": 1000 * sorted(ex_walls)[int(0.95 * (runs - 1))],
        "overhead_per_run_ms": 1000 * (statistics.median(ex_walls) - statistics.median(bare_walls)),
        "harness_cpu_per_run_ms": 1000 * statistics.median(t[1] for t in ex_times),
        "sleep_end_latency_ms": 1000 * (wall - sleep_s),
        "harness_cpu_per_run_second_ms": 1000 * cpu / sleep_s,
        "timeout_kill_latency_ms": 1000 * (timeout_wall - timeout_s),
        "watchdog_spawn_ms": 1000 * statistics.median(spawn_walls),
        "watchdog_cpu_ms": 1000 * watchdog_cpu / runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    numbers = measure(args.runs)
    if args.json:
        print(json.dumps(numbers, indent=2))
        return
    print(f"`true` x{numbers['runs']}, medians:")
    print(f"  bare subprocess.run            {numbers['bare_subprocess_ms']:7.1f} ms")
    print(
        f"  LocalExecutor.run              {numbers['executor_run_ms']:7.1f} ms "
        f"(p95 {numbers['executor_run_p95_ms']:.1f} ms)"
    )
    print(f"  executor overhead per run      {numbers['overhead_per_run_ms']:7.1f} ms")
    print(f"  harness CPU per run            {numbers['harness_cpu_per_run_ms']:7.1f} ms")
    print("`sleep 2`:")
    print(f"  end noticed after              {numbers['sleep_end_latency_ms']:7.1f} ms")
    print(f"  harness CPU per second of run  {numbers['harness_cpu_per_run_second_ms']:7.1f} ms")
    print("`sleep 60` with a 0.5 s timeout (exits on SIGTERM):")
    print(f"  result returned after deadline {numbers['timeout_kill_latency_ms']:7.1f} ms")
    print("the run's watchdog:")
    print(f"  harness wall time to start one {numbers['watchdog_spawn_ms']:7.1f} ms")
    print(f"  CPU of the watchdog process    {numbers['watchdog_cpu_ms']:7.1f} ms")


if __name__ == "__main__":
    main()
