"""``nightlab ablate`` end to end through the real CLI, on the synthetic target.

The research branch is made by a real ``nightlab run`` under the greedy policy (autoresearch's
rule: keep whatever single run looks better), fed one real improvement and several changes
that cannot matter (an unused constant each), some of which greedy keeps by luck. The
ablation must find the one that matters and list the rest as candidates to drop.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from test_validate import synthetic_workspace

from helpers import edit, git, nightlab

USEFUL = edit("WEIGHT_DECAY = 0.1", "WEIGHT_DECAY = 0.02", "weight decay 0.1 -> 0.02")
# Lines of the synthetic target after which an unused constant is added: one distinct place each,
# so every change reverts on its own.
ANCHORS = [
    "LEARNING_RATE = 0.01",
    "DEPTH = 3",
    "BATCH_SIZE = 64",
    "WARMUP_RATIO = 0.5",
    'ACTIVATION = "relu"',
    "USE_BIAS = True",
    "DROPOUT = 0.2",
]


def useless(i: int) -> dict:
    anchor = ANCHORS[i]
    return edit(anchor, f"UNUSED_{i} = {i}  # does nothing\n{anchor}", f"unused constant {i}")


def ablation_workspace(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    root = synthetic_workspace(
        tmp_path / "ws", [USEFUL] + [useless(i) for i in range(len(ANCHORS))], "greedy"
    )
    res = nightlab("run", str(root), "--plain", "--tag", "t")
    assert res.returncode == 0, res.stderr + res.stdout
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    kept = dict(con.execute("select description, id from experiments where decision = 'keep'").fetchall())
    con.close()
    assert "weight decay 0.1 -> 0.02" in kept
    assert len(kept) >= 3, f"precondition: greedy should keep at least two lucky useless changes, kept {kept}"
    return root, kept


@pytest.mark.slow
def test_ablation_finds_the_useful_change_and_apply_drops_the_rest(tmp_path: Path) -> None:
    root, kept = ablation_workspace(tmp_path)
    useful_id = kept["weight decay 0.1 -> 0.02"]
    branch_before = git(root, "rev-parse", "nightlab/t")
    res = nightlab("ablate", str(root), "--json", "--seeds", "3")
    assert res.returncode == 0, res.stderr + res.stdout
    data = json.loads(res.stdout)
    changes = {c["id"]: c for c in data["changes"]}
    assert set(changes) == set(kept.values())
    # Sorted by contribution, the useful change first, with its known size (0.0244) in its interval.
    assert data["changes"][0]["id"] == useful_id
    top = changes[useful_id]
    assert top["status"] == "earns its place"
    assert top["ci"][0] < 0.0244 < top["ci"][1] and top["ci"][0] > 0
    useless_ids = sorted(set(kept.values()) - {useful_id})
    assert sorted(data["drop_candidates"]) == useless_ids
    for i in useless_ids:
        assert changes[i]["status"] == "candidate to drop"
        assert changes[i]["ci"][0] <= 0 <= changes[i]["ci"][1]
    assert git(root, "rev-parse", "nightlab/t") == branch_before  # without --apply nothing moves
    assert Path(data["plot"]).stat().st_size > 1000

    # The terminal table names every change and the candidates.
    table = nightlab("ablate", str(root), "--seeds", "2")
    assert table.returncode == 0, table.stderr
    assert "earns its place" in table.stdout and "candidates to drop" in table.stdout

    res = nightlab("ablate", str(root), "--json", "--seeds", "3", "--apply")
    assert res.returncode == 0, res.stderr + res.stdout
    applied = json.loads(res.stdout)["applied"]
    assert applied["applied"] is True, applied
    assert sorted(applied["dropped"]) == useless_ids
    text = git(root, "show", "nightlab/t:train.py")
    assert "WEIGHT_DECAY = 0.02" in text and "UNUSED_" not in text
    assert git(root, "rev-parse", "nightlab/t") == applied["commit"]
    assert git(root, "merge-base", "--is-ancestor", branch_before, "nightlab/t") == ""
    # The ledger holds the pruned commit as the new incumbent, so `nightlab run` continues from it.
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    row = con.execute(
        'select kind, tag, decision, commit_, n_runs from (select *, "commit" as commit_ from experiments) '
        "order by id desc limit 1"
    ).fetchone()
    con.close()
    assert row == ("ablate", "t", "keep", applied["commit"], 3)
    # A second ablation sees only the change that is left.
    again = nightlab("ablate", str(root), "--json", "--seeds", "2")
    assert again.returncode == 0, again.stderr
    assert [c["id"] for c in json.loads(again.stdout)["changes"]] == [useful_id]
    # `nightlab report` redraws the bar chart from the ledger.
    (root / ".nightlab" / "ablation.png").unlink()
    assert nightlab("report", str(root)).returncode == 0
    assert (root / ".nightlab" / "ablation.png").stat().st_size > 1000


@pytest.mark.slow
def test_change_that_does_not_revert_is_reported(tmp_path: Path) -> None:
    # The second change edits the line the first one wrote: the first cannot be left out alone.
    first = edit("WEIGHT_DECAY = 0.1", "WEIGHT_DECAY = 0.05", "weight decay 0.05")
    second = edit("WEIGHT_DECAY = 0.05", "WEIGHT_DECAY = 0.02", "weight decay 0.02")
    root = synthetic_workspace(tmp_path / "ws", [first, second], "greedy")
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    res = nightlab("ablate", str(root), "--json", "--seeds", "2")
    assert res.returncode == 0, res.stderr + res.stdout
    statuses = {c["description"]: c["status"] for c in json.loads(res.stdout)["changes"]}
    assert statuses["weight decay 0.05"] == "does not revert cleanly"
    assert statuses["weight decay 0.02"] == "earns its place"
    res = nightlab("ablate", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "no such directory" in res.stderr

    # At a larger scale ([scales.big]: DEPTH = 5, BATCH_SIZE = 128): the same question there.
    res = nightlab("ablate", str(root), "--json", "--seeds", "2", "--scale", "big")
    assert res.returncode == 0, res.stderr + res.stdout
    data = json.loads(res.stdout)
    assert data["scale"] == "big"
    statuses = {c["description"]: c["status"] for c in data["changes"]}
    assert statuses == {
        "weight decay 0.05": "does not revert cleanly",
        "weight decay 0.02": "earns its place",
    }
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    commits = [
        c
        for (c,) in con.execute(
            'select "commit" from experiments where json_extract(meta_json, "$.study") = ?', (data["study"],)
        )
    ]
    con.close()
    assert len(commits) == 2  # the best and the best without #2, both with the scale written in
    for commit in commits:
        text = git(root, "show", f"{commit}:train.py")
        assert "DEPTH = 5" in text and "BATCH_SIZE = 128" in text
    assert Path(data["plot"]).name == "ablation-big.png" and (root / ".nightlab" / "ablation.png").exists()
    (root / ".nightlab" / "ablation-big.png").unlink()
    assert nightlab("report", str(root)).returncode == 0  # redraws each scale's latest figure
    assert (root / ".nightlab" / "ablation-big.png").stat().st_size > 1000
    res = nightlab("ablate", str(root), "--scale", "big", "--apply")
    assert res.returncode == 2 and "without --scale" in res.stderr
    res = nightlab("ablate", str(root), "--scale", "huge")
    assert res.returncode == 2 and "no [scales.huge]" in res.stderr


def _harm(pruned: list[float], full: list[float], floor: list[list[float]]) -> str | None:
    from types import SimpleNamespace

    from nightlab.studies.ablate import AblationReport, _possible_harm
    from nightlab.studies.compare import compare

    comparison = compare("val_loss", pruned, full, "minimize", 0.95)
    interval = comparison.improvement_interval()
    assert interval is not None and interval[0] <= 0  # not measurably worse: the old rule applied
    session = SimpleNamespace(tag="t", ledger=SimpleNamespace(replicate_groups=lambda tag: floor))
    report = AblationReport(
        tag="t", best_id=1, best_commit="x", metric_name="val_loss", direction="minimize",
        confidence=0.95, seeds=[1, 2], full_values=full, contributions=[], study="s",
    )  # fmt: skip
    return _possible_harm(session, report, comparison, interval, pruned, full)  # type: ignore[arg-type]


def test_apply_does_not_drop_a_change_the_few_seeds_cannot_clear() -> None:
    noise = [[0.146, 0.147], [0.0027, 0.0028]]  # run-to-run sd about 0.0007
    # Two seeds, one of them wild: "not measurably worse", yet the best is far better with it.
    why = _harm([0.146, 0.55], [0.0027, 0.0029], noise)
    assert why is not None and "better with them, more than the run-to-run noise" in why
    # Level on average, but two seeds of a noisy metric cannot rule out a large loss.
    why = _harm([1.0, 1.2], [1.1, 1.1], [[1.0, 1.2]])
    assert why is not None and "more seeds (--seeds N) can tell" in why
    # Level, and the interval rules out anything beyond the noise: dropping is safe.
    assert _harm([1.0, 1.003, 0.998], [1.001, 1.0, 0.999], [[1.0, 1.003, 0.998]]) is None


def test_a_knob_move_that_git_cannot_revert_is_left_out_by_its_knobs(tmp_path: Path) -> None:
    """The search agent's kept changes are knob moves on neighbouring lines, the learning rate in
    most of them: git's revert of the older one conflicts. Its knobs the best still holds are set
    back instead, and the ablation says which it left as the best has them."""
    first = edit(
        "LEARNING_RATE = 0.01  # peak learning rate (best: 0.03 * sqrt(BATCH_SIZE / 256))\n"
        "WEIGHT_DECAY = 0.1",
        "LEARNING_RATE = 0.015  # peak learning rate (best: 0.03 * sqrt(BATCH_SIZE / 256))\n"
        "WEIGHT_DECAY = 0.02",
        "WEIGHT_DECAY 0.1 → 0.02, LEARNING_RATE 0.01 → 0.015",
    )
    second = edit(
        "LEARNING_RATE = 0.015  # peak learning rate (best: 0.03 * sqrt(BATCH_SIZE / 256))\n"
        "WEIGHT_DECAY = 0.02  # AdamW weight decay (best: 0.02)\nDEPTH = 3",
        "LEARNING_RATE = 0.016  # peak learning rate (best: 0.03 * sqrt(BATCH_SIZE / 256))\n"
        "WEIGHT_DECAY = 0.02  # AdamW weight decay (best: 0.02)\nDEPTH = 6",
        "DEPTH 3 → 6, LEARNING_RATE 0.015 → 0.016",
    )
    root = synthetic_workspace(tmp_path / "ws", [first, second], "greedy")
    res = nightlab("run", str(root), "--plain", "--tag", "t")
    assert res.returncode == 0, res.stderr + res.stdout
    best = git(root, "rev-parse", "nightlab/t")
    first_commit = git(root, "rev-parse", "nightlab/t~1")
    from nightlab.workspace.git import Workspace

    assert Workspace(root).revert_commit_onto(first_commit, best) is None  # git cannot: the precondition
    res = nightlab("ablate", str(root), "--json", "--seeds", "2")
    assert res.returncode == 0, res.stderr + res.stdout
    data = json.loads(res.stdout)
    changes = {c["description"]: c for c in data["changes"]}
    left_out = changes["WEIGHT_DECAY 0.1 → 0.02, LEARNING_RATE 0.01 → 0.015"]
    assert left_out["status"] in ("earns its place", "candidate to drop")  # measured, not "does not revert"
    text = git(root, "show", f"{left_out['variant_commit']}:train.py")
    assert "WEIGHT_DECAY = 0.1  #" in text and "LEARNING_RATE = 0.016  #" in text and "DEPTH = 6  #" in text
    assert git(root, "rev-parse", f"{left_out['variant_commit']}~1") == best
    assert any("WEIGHT_DECAY set back" in n and "LEARNING_RATE moved again" in n for n in data["notes"])
    # Weight decay 0.1 -> 0.02 is worth 0.0244 on this target: the best without it is that much worse.
    assert left_out["ci"][0] < 0.0244 < left_out["ci"][1]


def test_a_tag_with_no_session_names_the_tags_there_are(tmp_path: Path) -> None:
    """`ablate --tag typo` said "run `nightlab run` first (or pass --tag)" to a user who had
    passed --tag. It lists the ledger's tags (validate's message too)."""
    from helpers import make_workspace, record_timed_runs

    root = make_workspace(tmp_path / "ws")
    (root / ".nightlab").mkdir()
    record_timed_runs(root / ".nightlab" / "ledger.db")  # a research session of tag t
    res = nightlab("ablate", str(root), "--tag", "typo", "--seeds", "2")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no research session 'typo' in the ledger (tags: t): pass --tag"), last
