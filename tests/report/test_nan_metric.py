"""A run whose metric is NaN (a diverged candidate) is recorded as ``nan``; every view still renders.

JSON has no NaN: written as ``NaN`` it breaks a browser's ``JSON.parse`` and the whole page, so the
report and the dashboard's API carry it as ``null``."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from helpers import edit, make_workspace, nightlab

DIVERGES_WHEN_HIGH = """\
import json, os, random
LR = 0.1
seed = int(os.environ["NIGHTLAB_SEED"])
loss = float("nan") if LR > 0.2 else 1.0 + (LR - 0.12) ** 2 + random.Random(seed).gauss(0, 0.001)
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
    json.dump({"val_loss": loss}, f)
print("---")
print(f"val_loss: {loss}")
"""


def test_a_nan_run_leaves_the_report_and_the_api_intact(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.9", "LR 0.9")], train=DIVERGES_WHEN_HIGH
    )
    run = nightlab("run", str(root), "--plain", "--tag", "t")
    assert run.returncode == 0, run.stdout + run.stderr
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    statuses = [s for (s,) in con.execute("SELECT status FROM experiments ORDER BY id")]
    nan_runs = con.execute("SELECT COUNT(*) FROM runs WHERE metric != metric OR status = 'nan'").fetchone()[0]
    con.close()
    assert statuses == ["ok", "nan"] and nan_runs >= 1
    report = nightlab("report", str(root))
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stdout + report.stderr
    page = (root / ".nightlab" / "report.html").read_text()
    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    assert data
    json.loads(data.group(1), parse_constant=_refuse)  # strict JSON: what the browser parses

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from nightlab.report.dashboard.data import View
    from nightlab.report.dashboard.server import ServeSettings, create_app

    settings = ServeSettings(
        state_dir=root / ".nightlab", view=View("t", "val_loss"), token="x" * 24, command=""
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        assert client.get("/api/state").status_code == 200
        found = client.get("/api/experiments/2")
        assert found.status_code == 200, found.text
        assert "is NaN" in json.loads(found.text, parse_constant=_refuse)["reason"]


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in JSON: a browser's JSON.parse refuses it")
