"""Slot plans: devices and cores per slot, from the settings and a faked device list."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from nightlab.errors import UserError
from nightlab.executor.process import run_process
from nightlab.executor.slots import CPUS_VARIABLE, detect_gpus, plan_slots
from nightlab.types import RunSpec, RunStatus

FOUR = ["0", "1", "2", "3"]


def devices(slots: list) -> list[str | None]:
    return [s.env.get("CUDA_VISIBLE_DEVICES") for s in slots]


def test_one_gpu_per_slot_by_default_and_auto_takes_every_gpu() -> None:
    assert devices(plan_slots("auto", FOUR, [0, 1])) == FOUR
    assert devices(plan_slots(2, FOUR, [0, 1])) == ["0", "1"]
    assert [s.index for s in plan_slots(3, FOUR, [0])] == [0, 1, 2]


def test_gpus_per_run_groups_devices_and_leftovers_stay_idle() -> None:
    assert devices(plan_slots("auto", ["0", "1", "2", "3", "4"], [0], gpus_per_run=2)) == ["0,1", "2,3"]
    with pytest.raises(UserError, match="only 1 GPU"):
        plan_slots(1, ["0"], [0], gpus_per_run=2)


def test_never_two_runs_on_one_gpu_unless_asked() -> None:
    with pytest.raises(UserError, match="runs_per_gpu = 2"):
        plan_slots(5, FOUR, [0])
    # Asked: the slots spread over the GPUs before doubling up on one.
    assert devices(plan_slots(4, ["0", "1"], [0], runs_per_gpu=2)) == ["0", "1", "0", "1"]
    assert devices(plan_slots("auto", ["0", "1"], [0], runs_per_gpu=3)) == ["0", "1", "0", "1", "0", "1"]


def test_one_worker_changes_nothing_a_script_run_by_hand_would_see() -> None:
    (slot,) = plan_slots(1, FOUR, [0, 1, 2, 3])
    assert slot.env == {}  # a torchrun target keeps every GPU and sizes its own threads
    (cpu,) = plan_slots(1, [], [0, 1])
    assert cpu.env == {}
    with pytest.raises(UserError, match="no GPU is visible"):
        plan_slots(1, [], [0], gpus_per_run=1)


def test_cpu_slots_split_the_cores_and_pin_each_run_to_its_own() -> None:
    slots = plan_slots(2, [], [0, 1, 2, 3])
    assert [s.env["OMP_NUM_THREADS"] for s in slots] == ["2", "2"]
    assert [s.env["MKL_NUM_THREADS"] for s in slots] == ["2", "2"]
    assert [s.env[CPUS_VARIABLE] for s in slots] == ["0,1", "2,3"]
    assert [s.label for s in slots] == ["cpus 0-1", "cpus 2-3"]
    auto = plan_slots("auto", [], [0, 1, 2, 3, 4, 5], threads_per_run=2)
    assert [s.env[CPUS_VARIABLE] for s in auto] == ["0,1", "2,3", "4,5"]


def test_cpu_slots_that_do_not_fit_apart_share_the_cores_unpinned() -> None:
    slots = plan_slots(3, [], [0, 1], threads_per_run=1)
    assert all(CPUS_VARIABLE not in s.env and s.env["OMP_NUM_THREADS"] == "1" for s in slots)


def test_gpu_list_from_cuda_visible_devices() -> None:
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_a_run_is_pinned_to_its_slots_cores(tmp_path: Path) -> None:
    core = min(os.sched_getaffinity(0))
    (slot,) = [s for s in plan_slots(1, [], [core], threads_per_run=1)]
    script = "import os, json; print('AFFINITY', json.dumps(sorted(os.sched_getaffinity(0))), os.environ['OMP_NUM_THREADS'])"
    spec = RunSpec(
        command=f'{sys.executable} -c "{script}"',
        cwd=tmp_path,
        run_dir=tmp_path / "run",
        seed=0,
        timeout=30,
        slot_env=slot.env,
    )
    result = run_process(spec, stop=threading.Event())
    assert result.status is RunStatus.OK
    log = (tmp_path / "run" / spec.log_name).read_text()
    assert f"AFFINITY [{core}] 1" in log


def test_more_slot_threads_than_cores_is_said_once_in_a_line() -> None:
    from nightlab.executor.slots import oversubscribed

    crowded = plan_slots(3, cores=[0, 1], gpus=[])
    warning = oversubscribed(crowded, cores=2)
    assert (
        warning is not None and "3 slots with 3 threads in all on 2 cores" in warning and "\n" not in warning
    )
    assert oversubscribed(plan_slots(2, cores=[0, 1], gpus=[]), cores=2) is None  # one thread each, pinned
    assert oversubscribed(plan_slots(1, cores=[0, 1], gpus=[]), cores=2) is None
