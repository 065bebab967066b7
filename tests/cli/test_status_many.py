"""`nightlab status` on a ledger of many experiments: the table shows what a user looks for (the
baseline, the best, what has not finished, the newest kept and the newest), says in one line how
many it leaves out and how to see them, and `--all` and `--json` still give every experiment.
A table of all 10,000 experiments of two nights took 10 s to print and scrolled the rest away."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import make_workspace, nightlab
from nightlab.cli.output import KEPT_SHOWN, NEWEST_SHOWN, shown_experiments

N = 80
KEPT = (5, 9, 14, 20, 27, 33, 38, 44, 50, 52, 55, 61)  # 12 kept: the first two beyond the newest 10
BEST = 61  # the last kept one, well before the newest 20 (61..80 are those)
INTERRUPTED = 3  # left "running" by a killed harness


def many(tmp_path: Path) -> Path:
    from nightlab.store.ledger import Ledger

    root = make_workspace(tmp_path / "ws", proposals=[])
    with Ledger(root / ".nightlab" / "ledger.db") as ledger:
        for i in range(1, N + 1):
            kind = "baseline" if i == 1 else "candidate"
            eid = ledger.add_experiment(kind=kind, tag="t", description=f"change {i}")
            assert eid == i
            if i == INTERRUPTED:
                continue
            decision = "baseline" if i == 1 else "keep" if i in KEPT else "crash" if i == 2 else "discard"
            status = "crash" if i == 2 else "ok"
            metric = None if i == 2 else 2.0 - 0.01 * i if decision in ("baseline", "keep") else 2.5
            ledger.finish_experiment(eid, status=status, decision=decision, metric_mean=metric, n_runs=1)
        ledger.set_meta("current_tag", "t")
    return root


def ids_in_table(text: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^│ (\d+) +│", text, re.MULTILINE)]


def test_status_shows_what_matters_and_says_what_it_leaves_out(tmp_path: Path) -> None:
    root = many(tmp_path)
    res = nightlab("status", str(root), env={"COLUMNS": "250"})
    assert res.returncode == 0, res.stderr
    shown = ids_in_table(res.stdout)
    newest = list(range(N - NEWEST_SHOWN + 1, N + 1))
    assert shown == sorted({1, INTERRUPTED, *KEPT[-KEPT_SHOWN:], BEST, *newest})
    assert 5 not in shown and 9 not in shown and 2 not in shown  # older kept ones and the old crash
    [line] = [line for line in res.stdout.splitlines() if "not shown" in line]
    assert line.startswith(f"{N - len(shown)} of {N} experiments not shown (")
    assert f"(of all {N}: 1 baseline, 12 keep, 65 discard, 1 crash, 1 interrupted); " in line
    assert f"`nightlab status {root} --all`" in line
    assert [b for b in res.stdout.splitlines() if b.startswith("best:")] == [
        f"best: #{BEST} val_loss 1.390000 (change {BEST})"
    ]


def test_status_all_and_json_give_every_experiment(tmp_path: Path) -> None:
    root = many(tmp_path)
    every = nightlab("status", str(root), "--all", env={"COLUMNS": "250"})
    assert ids_in_table(every.stdout) == list(range(1, N + 1))
    assert "not shown" not in every.stdout
    data = json.loads(nightlab("status", str(root), "--json").stdout)
    assert [e["id"] for e in data["experiments"]] == list(range(1, N + 1))


def test_a_short_night_is_shown_whole_without_a_note() -> None:
    rows = [{"id": i, "decision": "discard", "status": "ok"} for i in range(1, NEWEST_SHOWN + KEPT_SHOWN + 1)]
    assert shown_experiments(rows, best_id=None) == rows
    longer = [*rows, {"id": len(rows) + 1, "decision": "discard", "status": "ok"}]
    assert len(shown_experiments(longer, best_id=None)) == NEWEST_SHOWN
