"""What `status`, `run` and `init` tell a user, checked through the real CLI (issue 17, point 8):
the sign of ``delta``, a rounded best line, a missing [metric] table said out loud, a metric
pattern that matches nothing named with its log and itself, ``init --force`` that loses nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import TOY_TOML, TOY_TRAIN, edit, git, make_workspace, nightlab


def test_status_delta_moves_with_the_metric_and_the_best_line_is_rounded(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3", "LR up")])
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    data = json.loads(nightlab("status", str(root), "--json").stdout)
    kept = data["experiments"][-1]
    assert kept["decision"] == "keep"
    # val_loss went down by ~0.4: delta is the metric's own change (the sign of the reason's Δ),
    # improvement is > 0 when better.
    assert kept["delta"] < -0.3 and kept["improvement"] == -kept["delta"]
    assert re.search(r"Δ −0\.4", kept["reason"]), kept["reason"]
    table = nightlab("status", str(root), env={"COLUMNS": "200"}).stdout
    best = [line for line in table.splitlines() if line.startswith("best:")]
    assert best == [f"best: #{kept['id']} val_loss {kept['metric']:.6f} (LR up)"]


def test_a_missing_metric_table_is_said_at_the_start_of_a_run(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml = re.sub(r"\[metric\]\n(?:[^\[].*\n)*", "", toml)
    assert "[metric]" not in toml
    train = TOY_TRAIN.replace('json.dump({"val_loss": loss}, f)', 'json.dump({"val_bpb": loss}, f)')
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], train=train, toml=toml)
    res = nightlab("run", str(root), "--plain", "-n", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    note = [line for line in res.stdout.splitlines() if line.startswith("note:")]
    assert note == [
        'note: nightlab.toml has no [metric] table; assuming name = "val_bpb", direction = "minimize", '
        "read from metrics.json in the run directory (docs/CONFIG.md, [metric])"
    ]


def test_a_pattern_that_matches_nothing_names_the_evaluation_log_and_the_pattern(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], source="regex", evaluate=True
    )
    toml = root / "nightlab.toml"
    toml.write_text(toml.read_text().replace("^val_loss:", "^valid_loss:"))
    git(root, "commit", "-qam", "a pattern that matches nothing")
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "/eval.log: [metric] pattern '^valid_loss:" in line, line
    assert "run.log:" not in line  # the metric is read from the evaluation's log, not the trainer's


def test_init_force_never_overwrites_work_git_does_not_hold(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    assert nightlab("init", str(root), "--size", "cpu").returncode == 0
    train = root / "train.py"
    committed = train.read_text()
    assert nightlab("init", str(root), "--size", "cpu", "--force").returncode == 0  # nothing to lose
    train.write_text(committed + "\n# my uncommitted idea\n")
    res = nightlab("init", str(root), "--size", "cpu", "--force")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "--force would overwrite train.py" in line and "git add -A" in line, line
    assert train.read_text().endswith("# my uncommitted idea\n")
    git(root, "commit", "-qam", "my idea")
    res = nightlab("init", str(root), "--size", "cpu", "--force")
    assert res.returncode == 0  # git holds it now, and the output names what it replaced
    assert "replaced train.py with the template's; your versions are in git" in res.stdout, res.stdout
    assert "my uncommitted idea" in git(root, "show", "HEAD~1:train.py")


def _killed_before_its_baseline(root: Path, tag: str) -> None:
    """What a run killed during its baseline leaves: the last tag run, with an unfinished baseline."""
    from nightlab.store.ledger import Ledger

    with Ledger(root / ".nightlab" / "ledger.db") as ledger:
        ledger.add_experiment(kind="baseline", tag=tag, description="baseline")
        ledger.set_meta("current_tag", tag)


def _report_files(root: Path) -> dict[str, tuple[int, bytes]]:
    """The report files' modification times and contents: equal when nothing wrote them."""
    state = root / ".nightlab"
    names = ("results.tsv", "progress.png", "report.html")
    return {name: ((state / name).stat().st_mtime_ns, (state / name).read_bytes()) for name in names}


def test_a_tag_with_no_experiments_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain", "--tag", "nov30").returncode == 0
    before = _report_files(root)
    for command in ("status", "report"):
        res = nightlab(command, str(root), "--tag", "nosuchtag")
        assert res.returncode == 2, (command, res.stdout + res.stderr)
        assert res.stderr.strip() == "error: no experiments under tag 'nosuchtag' (tags: nov30)", command
        assert "Traceback" not in res.stderr
    assert _report_files(root) == before


def test_views_show_the_newest_tag_with_a_baseline_and_never_blank_its_report(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain", "--tag", "nov30").returncode == 0
    _killed_before_its_baseline(root, "dec01")
    tsv = (root / ".nightlab" / "results.tsv").read_text()
    report = nightlab("report", str(root))
    assert report.returncode == 0, report.stdout + report.stderr
    assert report.stdout.startswith("nightlab nov30:"), report.stdout
    assert (root / ".nightlab" / "results.tsv").read_text() == tsv  # the same night, redrawn
    assert json.loads(nightlab("status", str(root), "--json").stdout)["tag"] == "nov30"
    assert "nightlab status (nov30)" in nightlab("status", str(root), env={"COLUMNS": "200"}).stdout
    before = _report_files(root)
    asked = nightlab("report", str(root), "--tag", "dec01")
    assert asked.returncode == 0, asked.stdout + asked.stderr  # a state to show, not a mistake
    assert "nightlab dec01:" in asked.stdout and "no baseline yet" in asked.stdout
    assert "nothing written" in asked.stderr and "Traceback" not in asked.stderr
    assert _report_files(root) == before


def test_view_tag_skips_a_killed_baseline_and_lets_the_dashboard_name_a_new_tag(tmp_path: Path) -> None:
    from nightlab.research.session import view_tag
    from nightlab.store.ledger import Ledger

    with Ledger(tmp_path / "ledger.db") as ledger:
        done = ledger.add_experiment(kind="baseline", tag="nov30", description="baseline")
        ledger.finish_experiment(done, status="ok", decision="baseline", metric_mean=1.0, n_runs=1)
        ledger.add_experiment(kind="baseline", tag="dec01", description="baseline")
        ledger.set_meta("current_tag", "dec01")
        assert view_tag(ledger, tmp_path) == "nov30"  # dec01's run was killed: no harness holds it
        assert view_tag(ledger, tmp_path, "dec02", strict=False) == "dec02"
        assert view_tag(ledger, tmp_path, configured="dec01") == "dec01"


def test_the_stop_line_and_the_summary_count_experiments_the_same_way(tmp_path: Path) -> None:
    proposals = [edit("LR = 0.1", "LR = 0.3"), edit("WIDTH = 64", "WIDTH = 128")]
    root = make_workspace(tmp_path / "ws", proposals=proposals)
    res = nightlab("run", str(root), "--plain", "-n", "2", env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stopped: 2 experiments done (--max-experiments 2)" in res.stdout
    assert "3 total (the baseline and 2 experiments):" in res.stdout


def test_a_ledger_whose_tables_are_not_written_yet_has_no_tags(tmp_path: Path) -> None:
    # `nightlab serve` opening the ledger as the first run creates it: no tables yet.
    import sqlite3

    from nightlab.report.dashboard.data import LedgerReader

    path = tmp_path / "ledger.db"
    sqlite3.connect(path).close()
    reader = LedgerReader(path)
    try:
        assert reader.research_tags() == {}
    finally:
        reader.close()


def test_serve_waits_a_moment_for_a_ledger_the_first_run_is_creating(tmp_path: Path) -> None:
    import sqlite3
    import threading
    import time

    from nightlab.cli.watch import _workspace
    from nightlab.store.ledger import Ledger

    root = make_workspace(tmp_path / "ws")
    path = root / ".nightlab" / "ledger.db"
    path.parent.mkdir(exist_ok=True)
    sqlite3.connect(path).close()  # the file exists, its tables do not yet

    def first_run() -> None:
        time.sleep(0.3)
        # Tables and tag appear at once (built aside, then renamed in): with the tables alone
        # visible for a moment, a busy machine read today's tag in between (flaky).
        ledger = Ledger(path.with_name("building.db"))
        ledger.set_meta("current_tag", "t")
        ledger.close()
        path.with_name("building.db").replace(path)

    creator = threading.Thread(target=first_run)
    creator.start()
    try:
        assert _workspace(root, None, strict=False)[2] == "t"  # the run's tag, not today's
    finally:
        creator.join()


def test_status_json_has_each_experiments_agent_hypothesis_and_meta(tmp_path: Path) -> None:
    """What the report shows of a proposal is in the JSON too; the keys before them are unchanged."""
    proposal = {**edit("LR = 0.1", "LR = 0.3", "LR up"), "hypothesis": "LR is below its optimum"}
    root = make_workspace(tmp_path / "ws", proposals=[proposal])
    assert nightlab("run", str(root), "--plain").returncode == 0
    data = json.loads(nightlab("status", str(root), "--json").stdout)
    baseline, kept = data["experiments"]
    assert (kept["agent"], kept["hypothesis"]) == ("replay", "LR is below its optimum")
    assert kept["meta"]["replay_line"] == 1  # the agent's own note, as the ledger keeps it
    assert isinstance(baseline["meta"], dict) and not baseline["hypothesis"]
    assert data["best"]["hypothesis"] == "LR is below its optimum"
    before = {"id", "kind", "commit", "status", "decision", "metric", "spread", "runs", "delta"}
    before |= {"improvement", "delta_se", "p_value", "description", "reason", "audit"}
    assert before | {"created_at", "finished_at"} <= set(kept)


def test_a_run_that_declares_itself_invalid_has_its_status_named_once(tmp_path: Path) -> None:
    """The GPT harness ends an overspent run with ``status: invalid (...)``: the reason the run
    gives already says ``invalid``, and the experiment's reason must not say it twice."""
    train = "import sys\nLR = 0.1\nprint('status: invalid (spent 3x its FLOPs budget)')\nsys.exit(5)\n"
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")], train=train)
    res = nightlab("run", str(root), "--plain", "--tag", "t")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "(invalid: spent 3x its FLOPs budget)" in res.stderr, res.stderr
    [baseline] = json.loads(nightlab("status", str(root), "--json").stdout)["experiments"]
    assert (baseline["status"], baseline["reason"]) == ("invalid", "invalid: spent 3x its FLOPs budget")


def test_a_reason_is_led_by_its_status_exactly_once() -> None:
    from nightlab.formatting import with_status

    assert with_status("invalid", "invalid: overspent") == "invalid: overspent"
    assert with_status("invalid", "Invalid: overspent") == "Invalid: overspent"
    assert with_status("invalid", "frozen file changed: data.py") == "invalid: frozen file changed: data.py"
    assert with_status("crash", "") == "crash" and with_status("crash", None) == "crash"
    assert with_status("oom", "invalidated cache") == "oom: invalidated cache"


def test_a_lost_or_emptied_ledger_is_never_started_afresh_over_the_nights_records(tmp_path: Path) -> None:
    """A new ledger would number experiments from 1 again, over runs/0001/experiment.json, the
    record `recover` rebuilds experiment 1 from: every command refuses and names `recover`."""
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    record = root / ".nightlab" / "runs" / "0001" / "experiment.json"
    kept = record.read_text()
    ledger = root / ".nightlab" / "ledger.db"
    for lose, state in ((lambda: ledger.write_bytes(b""), "empty"), (ledger.unlink, "missing")):
        lose()
        for args in (["run", "--plain", "--tag", "u"], ["status"], ["report"], ["try", "--sync"]):
            res = nightlab(args[0], str(root), *args[1:])
            line = res.stderr.strip()
            assert res.returncode == 2 and "\n" not in line, (args, res.stdout + res.stderr)
            assert f".nightlab/ledger.db is {state}, but git holds experiments" in line, (args, line)
            assert f"`nightlab recover {root}`" in line, (args, line)
        assert record.read_text() == kept
    assert nightlab("recover", str(root)).returncode == 0
    assert json.loads(nightlab("status", str(root), "--json").stdout)["tag"] == "t"


def test_a_ledger_left_empty_by_a_refused_study_reads_as_no_experiments(tmp_path: Path) -> None:
    """`validate` refused on a new workspace still created the ledger: `status` then printed an
    empty table (exit 0), `report` a summary of nothing, and `export` a note about the dashboard
    before asking for a W&B key. Each now says there is nothing yet, in one line, exit 2."""
    root = make_workspace(tmp_path / "ws")
    refused = nightlab("validate", str(root))
    assert refused.returncode == 2 and (root / ".nightlab" / "ledger.db").exists()
    for args in (["status"], ["status", "--json"], ["report"], ["export", "--to", "wandb"]):
        res = nightlab(*args[:1], str(root), *args[1:], env={"WANDB_MODE": "offline"})
        line = res.stderr.strip()
        assert res.returncode == 2 and res.stdout == "" and "\n" not in line, (args, res.stdout, line)
        assert "no experiments" in line and f"nightlab run {root}" in line, (args, line)


def test_a_last_night_stopped_before_its_baseline_is_named_when_an_older_one_is_shown(
    tmp_path: Path,
) -> None:
    """The newest night killed during its baseline: `status` and `report` showed the night before
    (the newest with results) without a word, as if last night had done nothing."""
    from nightlab.store.ledger import Ledger

    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3", "LR up")])
    assert nightlab("run", str(root), "--plain", "--tag", "mon").returncode == 0
    with Ledger(root / ".nightlab" / "ledger.db") as ledger:  # what kill -9 during a baseline leaves
        ledger.add_experiment(kind="baseline", tag="tue", description="baseline")
        ledger.set_meta("current_tag", "tue")
    for command in ("status", "report"):
        res = nightlab(command, str(root))
        assert res.returncode == 0, res.stderr
        assert "nightlab mon:" in res.stdout or "(mon)" in res.stdout
        note = res.stderr.strip().splitlines()[0]
        assert note.startswith("note: the last night, nightlab/tue, has no baseline"), note
        assert f"nightlab status {root} --tag tue" in note and "showing nightlab/mon" in note
    named = nightlab("status", str(root), "--tag", "tue")
    assert named.returncode == 0 and "note:" not in named.stderr and "interrupted" in named.stdout
