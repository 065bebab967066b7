"""Pipelining hides a slow model: the idle time between experiments, measured on a real `nightlab run`.

The model answers after 1.5 s and every run trains for 1.5 s. Without pipelining the hardware
waits for the model between experiments; with it, the next proposal is ready when the run ends
and only the harness's bookkeeping is left. The measurement is benchmarks/pipelining.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from pipelining import measure  # noqa: E402

DELAY = 2.5  # long enough that harness overhead on a busy 2-core machine stays well below DELAY / 2
TRAIN = 2.5


@pytest.mark.slow
def test_pipelining_hides_the_model_latency_between_experiments(tmp_path):
    serial = measure(tmp_path / "serial", False, DELAY, TRAIN, experiments=3, baseline_runs=1)
    piped = measure(tmp_path / "piped", True, DELAY, TRAIN, experiments=3, baseline_runs=1)
    print(f"idle between experiments: pipeline=false {serial.gaps}, pipeline=true {piped.gaps}")
    assert serial.requests == piped.requests == 3  # the same proposals, no extra model calls
    # One after the other, every gap holds the whole model delay.
    assert min(serial.gaps) >= DELAY
    # Pipelined, the gaps are far below it: the proposal was prepared while the run trained.
    assert max(piped.gaps) < DELAY / 2
    assert piped.mean_gap < serial.mean_gap - DELAY * 0.8
    # The first candidate cannot be prepared in advance (nothing trains before it): both wait.
    assert piped.first_gap >= DELAY and serial.first_gap >= DELAY
