"""End to end through the real CLI: real git, real subprocesses, a real SQLite ledger."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helpers import TOY_TRAIN, edit, git, make_workspace, nightlab


def ledger_rows(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("select * from experiments order by id")]
    con.close()
    return rows


def test_replay_session_keeps_real_gain_and_discards_worse(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws",
        proposals=[
            edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3"),  # a large real improvement
            edit("WIDTH = 64", "WIDTH = 8", "WIDTH 64 -> 8"),  # clearly worse
            edit("WIDTH = 64  # model width: best at 128", "WIDTH = 64  # the model width", "comment only"),
        ],
    )
    user_head = git(root, "rev-parse", "HEAD")
    res = nightlab("run", str(root), "--plain", "--tag", "t1")
    assert res.returncode == 0, res.stderr + res.stdout
    rows = ledger_rows(root)
    decisions = [(r["kind"], r["decision"]) for r in rows]
    assert decisions == [
        ("baseline", "baseline"),
        ("candidate", "keep"),
        ("candidate", "discard"),
        ("candidate", "discard"),
    ]
    assert "not run" in rows[3]["reason"]
    # The research branch holds the kept change; the user's branch and tree are untouched.
    branch = git(root, "rev-parse", "nightlab/t1")
    assert branch == rows[1]["commit"]
    assert git(root, "rev-parse", "HEAD") == user_head
    assert git(root, "status", "--porcelain") == ""
    assert "LR = 0.3" in git(root, "show", "nightlab/t1:train.py")
    # Every experiment that ran has a ref, including the discarded one.
    refs = git(root, "for-each-ref", "--format=%(objectname)", "refs/nightlab/experiments/")
    assert rows[2]["commit"] in refs.split()
    tsv = (root / ".nightlab" / "results.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["commit", "val_loss", "memory_gb", "status", "description"]
    assert (root / ".nightlab" / "progress.png").stat().st_size > 1000


def test_crash_is_recorded_with_traceback(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws",
        proposals=[
            edit("NOISE = 0.002", "NOISE = 0.002\nraise ZeroDivisionError('boom in training')", "crash it")
        ],
    )
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    row = ledger_rows(root)[-1]
    assert row["status"] == "crash" and row["decision"] == "crash"
    assert "ZeroDivisionError" in row["reason"]
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    (tail,) = con.execute("select log_tail from runs where experiment_id = ?", (row["id"],)).fetchone()
    assert "Traceback" in tail and "boom in training" in tail


def test_run_that_edits_frozen_file_is_invalid_and_restored(tmp_path: Path) -> None:
    sneaky = "NOISE = 0.002\nopen('evaluate.py', 'a').write('# patched by training\\n')"
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("NOISE = 0.002", sneaky, "patch the evaluator")], evaluate=True
    )
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    row = ledger_rows(root)[-1]
    assert row["decision"] == "invalid"
    assert "evaluate.py" in row["reason"]
    tree = root / ".nightlab" / "worktrees" / "run-0"
    assert "patched" not in (tree / "evaluate.py").read_text() or git(tree, "status", "--porcelain") == ""


def test_out_of_scope_edit_is_refused(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws",
        proposals=[edit("import json", "import json  # x", "touch evaluator", path="evaluate.py")],
    )
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    row = ledger_rows(root)[-1]
    assert row["decision"] == "invalid" and row["commit"] is None
    assert "evaluate.py" in row["reason"]


def test_metric_only_from_evaluation_not_from_training_print(tmp_path: Path) -> None:
    # The trainer prints a fake metric; with an evaluate step only metrics.json from the evaluation counts.
    # (Split so the diff audit, which would block it first, lets it through to the runtime check.)
    fake = "NOISE = 0.002\nprint('val_loss' + ': 0.000001')"
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("NOISE = 0.002", fake, "fake print")], evaluate=True
    )
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    row = ledger_rows(root)[-1]
    assert row["status"] == "ok"
    assert row["metric_mean"] > 0.5, "the printed fake metric must not be what counts"


def test_training_writing_metrics_json_is_invalid(tmp_path: Path) -> None:
    forged = "NOISE = 0.002\nimport json as _j; _j.dump({'val_loss': 0.0}, open(os.path.join(os.environ['NIGHTLAB_RUN_DIR'], 'metrics.json'), 'w'))"
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("NOISE = 0.002", forged, "forge metrics")], evaluate=True
    )
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    row = ledger_rows(root)[-1]
    assert row["decision"] == "invalid" and "metrics.json" in row["reason"]


def test_regex_metric_source(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], source="regex")
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    rows = ledger_rows(root)
    assert rows[-1]["decision"] == "keep"
    assert abs(rows[-1]["metric_mean"] - 1.0 - 64 / 1000) < 0.02


def test_confirm_policy_reruns_before_keeping(tmp_path: Path) -> None:
    # A real but modest gain (about 2 noise sd): one run is not enough evidence, so it is replicated.
    noisy = TOY_TRAIN.replace("NOISE = 0.002", "NOISE = 0.02")
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.11")], policy="confirm", train=noisy
    )
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    row = ledger_rows(root)[-1]
    assert row["decision"] == "keep"
    assert row["n_runs"] >= 2, "confirm must replicate a candidate before keeping it"


def test_status_json_and_second_run_continues(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.2"), edit("WIDTH = 64", "WIDTH = 128")]
    )
    assert nightlab("run", str(root), "--plain", "-n", "1").returncode == 0
    assert len(ledger_rows(root)) == 2
    res = nightlab("run", str(root), "--plain", "-n", "2")
    assert res.returncode == 0, res.stderr
    rows = ledger_rows(root)
    assert [r["description"] for r in rows] == [
        "baseline",
        "LR = 0.1 -> LR = 0.2",
        "WIDTH = 64 -> WIDTH = 128",
    ]
    status = nightlab("status", str(root), "--json")
    data = json.loads(status.stdout)
    assert [e["id"] for e in data["experiments"]] == [r["id"] for r in rows]
    assert data["best"]["id"] == rows[-1]["id"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: (r / "nightlab.toml").unlink(), "nightlab.toml: not found"),
        (lambda r: (r / "nightlab.toml").write_text("[target\n"), "not valid TOML"),
        (
            lambda r: (r / "nightlab.toml").write_text(
                '[target]\neditable=["train.py"]\nrun="python train.py"\ntimout=3\n'
            ),
            "unknown key 'timout'",
        ),
        (
            lambda r: (r / "nightlab.toml").write_text(
                '[target]\neditable=["train.py"]\nrun="python train.py"\n[budget]\nseconds="x"\n'
            ),
            "[budget] seconds",
        ),
        (
            lambda r: (r / "nightlab.toml").write_text(
                '[target]\neditable=["nope*.py"]\nrun="python train.py"\n'
            ),
            "'nope*.py' matches no file",
        ),
        (
            lambda r: (r / "nightlab.toml").write_text(
                '[target]\neditable=["train.py"]\nrun="no-such-program train.py"\n'
            ),
            "program 'no-such-program' not found",
        ),
        (lambda r: (r / "train.py").write_text("x = 1\n"), "uncommitted changes"),
        (lambda r: (r / "proposals.jsonl").write_text("{bad json\n"), "proposals.jsonl line 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, mutate, expected: str) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    mutate(root)
    if expected not in ("uncommitted changes",):
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "break it", "--allow-empty")
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert expected in lines[0] and "Traceback" not in res.stderr


def test_not_a_git_repository(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "train.py").write_text("print(1)\n")
    (root / "nightlab.toml").write_text('[target]\neditable=["train.py"]\nrun="python train.py"\n')
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 2
    assert "git" in res.stderr and "Traceback" not in res.stderr


def test_metric_never_printed_stops_with_clear_error(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws", train="print('hello')\nLR = 0.1\n", proposals=[edit("LR = 0.1", "LR = 0.3")]
    )
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 2
    assert "metric 'val_loss' not found" in res.stderr


def test_code_already_measured_is_not_run_again(tmp_path: Path) -> None:
    """A proposal whose files equal an experiment that ran (here: undoing a kept change, which
    gives the baseline's code back) is skipped with the earlier experiment named; a crashed
    experiment's code may run again."""
    root = make_workspace(
        tmp_path / "ws",
        proposals=[
            edit("LR = 0.1", "LR = 0.3", "LR 0.1 -> 0.3"),
            edit("LR = 0.3", "LR = 0.1", "LR back to 0.1"),  # the baseline's code
            edit("LR = 0.3", "LR = 0.25", "LR 0.3 -> 0.25"),
            edit("LR = 0.3", "LR = 0.25", "LR 0.3 -> 0.25 again"),  # measured by the one before
            edit("import json, os, random", "import json, os, random\nraise RuntimeError('boom')", "boom"),
            edit(
                "import json, os, random", "import json, os, random\nraise RuntimeError('boom')", "boom again"
            ),
        ],
    )
    res = nightlab("run", str(root), "--plain", "--tag", "t")
    assert res.returncode == 0, res.stderr + res.stdout
    rows = ledger_rows(root)
    assert [(r["description"], r["status"]) for r in rows[1:]] == [
        ("LR 0.1 -> 0.3", "ok"),
        ("LR back to 0.1", "skipped"),
        ("LR 0.3 -> 0.25", "ok"),
        ("LR 0.3 -> 0.25 again", "skipped"),
        ("boom", "crash"),
        ("boom again", "crash"),  # no result to reuse: it runs again
    ]
    assert rows[2]["reason"] == f"the same code as #{rows[0]['id']}, already measured: not run again"
    assert rows[4]["reason"] == f"the same code as #{rows[3]['id']}, already measured: not run again"
    assert rows[2]["commit"] is None and rows[4]["commit"] is None
    assert len({r["code_hash"] for r in rows if r["code_hash"]}) == 4  # baseline, 0.3, 0.25, boom


def test_more_counts_from_where_the_tag_is(tmp_path: Path) -> None:
    """-n caps the tag's experiments in all (a second run with -n 1 stops at once); --more N adds N."""
    root = make_workspace(
        tmp_path / "ws",
        proposals=[
            edit("LR = 0.1", "LR = 0.2"),
            edit("WIDTH = 64", "WIDTH = 96"),
            edit("WIDTH = 64", "WIDTH = 80"),
        ],
    )
    assert nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1").returncode == 0
    again = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1")
    assert "1 experiment done (--max-experiments 1)" in " ".join(again.stdout.split())
    more = nightlab("run", str(root), "--plain", "--tag", "t", "--more", "2")
    assert more.returncode == 0, more.stderr
    assert sum(1 for r in ledger_rows(root) if r["kind"] == "candidate") == 3
    # The stop line names the flag the user gave, not one they did not.
    assert "3 experiments done (--more 2: 1 before this run)" in " ".join(more.stdout.split())
    none = nightlab("run", str(root), "--plain", "--tag", "t", "--more", "0")
    assert "3 experiments done (--more 0: 3 before this run)" in " ".join(none.stdout.split())
