"""Replicates in flight: one per slot, each on a thread of its own, results collected by the loop.

The loop decides *what* runs (which experiment's which replicate); the dispatcher only knows
*where* (a free :class:`~nightlab.executor.slots.Slot`) and hands back what finished. Runs never
write the ledger: the loop's thread records every result, so the ledger has one writer however
many slots train at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from nightlab.executor.slots import Slot
from nightlab.research.pruning import Pruner
from nightlab.research.runner import Replicate, ReplicateRunner
from nightlab.store.schema import ExperimentRow


@dataclass
class InFlight:
    """One replicate running in one slot."""

    row: ExperimentRow
    replicate: int
    slot: Slot
    pruner: Pruner | None
    future: Future[Replicate] = field(repr=False)
    role: str | None = None  # a fresh run of a kept change or the baseline (research/estimate.py)
    started: float = field(default_factory=time.monotonic)


class Dispatcher:
    """Starts replicates in free slots and says which ones finished."""

    def __init__(self, runner: ReplicateRunner, slots: list[Slot]) -> None:
        if not slots:
            raise ValueError("no slots to run in")
        self.runner = runner
        self.slots = list(slots)
        self._free = list(slots)
        self.running: list[InFlight] = []
        self._pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="nightlab-slot")

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def replicates_of(self, experiment_id: int) -> list[int]:
        """The replicate numbers of ``experiment_id`` running now."""
        return [f.replicate for f in self.running if f.row.id == experiment_id]

    def start(
        self, row: ExperimentRow, replicate: int, seed: int, pruner: Pruner | None, role: str | None = None
    ) -> InFlight:
        """Run replicate ``replicate`` of ``row`` in the first free slot."""
        assert row.commit is not None, "only committed experiments run"
        slot = self._free.pop(0)
        future = self._pool.submit(
            self.runner.run, row.id, replicate, row.commit, seed, pruner=pruner, slot=slot
        )
        flight = InFlight(row, replicate, slot, pruner, future, role=role)
        self.running.append(flight)
        return flight

    def wait(self, timeout: float | None, also: Future | None = None) -> list[InFlight]:
        """Block until a replicate finishes, ``also`` (the agent's proposal) is done, or ``timeout``;
        return the finished replicates, their slots free again (oldest first)."""
        futures: list[Future] = [f.future for f in self.running]
        if also is not None:
            futures.append(also)
        if futures:
            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        elif timeout:
            time.sleep(timeout)
        done = [f for f in self.running if f.future.done()]
        for flight in done:
            self.running.remove(flight)
            self._free.append(flight.slot)
        self._free.sort(key=lambda s: s.index)  # the lowest slot first: its worktree is warm
        return done

    def close(self, on_stop: Callable[[], None] | None = None) -> None:
        """Wait for the runs in flight to end; ``on_stop`` (the executor's kill) first, if given."""
        if on_stop is not None:
            on_stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
