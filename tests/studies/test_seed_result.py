"""benchmarks/seed_result.py's own arithmetic: the seed-style line and the carry-over table.
(The study itself takes 2 to 2.5 hours on 2 cores; docs/VALIDATION.md has its run.)"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from seed_result import carry_over, headline  # noqa: E402


def _validation(change: float, low: float | None, high: float | None, censored: bool = False) -> dict:
    text = "41.2 s → 35.0 s, −15%"
    time_ = {"text": text, "change": change, "ci_low": low, "ci_high": high, "censored": censored}
    return {"time_to_target": {"time": time_}}


def test_the_headline_reads_like_the_seed_result() -> None:
    line = headline(_validation(-0.15, -0.21, -0.09), kept=3, tried=24)
    assert line == "41.2 s → 35.0 s to target (−15% ± 6%), 3 changes kept of 24 tried"
    slower = headline(_validation(0.09, -0.22, 0.40, censored=True), kept=1, tried=5)
    assert "(+9% ± 31%) (some runs never reached it: a lower bound), 1 change kept of 5 tried" in slower
    assert headline({}, kept=0, tried=7) == "no time to target measured; 0 changes kept of 7 tried"


def test_a_change_carries_over_when_it_earns_its_place_at_the_larger_scale_too() -> None:
    small = {
        "changes": [
            {
                "id": 4,
                "description": "lr",
                "contribution": 0.03,
                "ci": [0.01, 0.05],
                "status": "earns its place",
            },
            {
                "id": 9,
                "description": "wd",
                "contribution": 0.02,
                "ci": [0.01, 0.03],
                "status": "earns its place",
            },
            {
                "id": 12,
                "description": "x",
                "contribution": 0.0,
                "ci": [-0.01, 0.01],
                "status": "candidate to drop",
            },
        ]
    }
    large = {
        "changes": [
            {
                "id": 4,
                "description": "lr",
                "contribution": 0.02,
                "ci": [0.005, 0.04],
                "status": "earns its place",
            },
            {
                "id": 9,
                "description": "wd",
                "contribution": -0.01,
                "ci": [-0.03, 0.01],
                "status": "candidate to drop",
            },
        ]
    }
    rows = {r["id"]: r for r in carry_over(small, large)}
    assert [rows[i]["carries_over"] for i in (4, 9, 12)] == [True, False, False]
    assert rows[9]["larger"]["contribution"] == -0.01 and rows[9]["small"]["status"] == "earns its place"
    assert rows[12]["larger"] == {"contribution": None, "ci": None, "status": None}  # not measured there
