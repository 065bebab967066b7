"""An interrupted side study goes on where it stopped (fast: the runner is a stand-in, nothing trains)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import git, make_workspace
from nightlab.research.runner import Replicate
from nightlab.research.session import open_session
from nightlab.studies.study import Arm, SideStudy, study_seeds
from nightlab.types import RunResult, RunStatus


class Runner:
    """Replicates as a runner returns them; Ctrl-C at call ``stop_at`` (0-based)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.stop_at = stop_at

    def run(self, experiment_id: int, replicate: int, commit: str, seed: int) -> Replicate:
        if len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append((experiment_id, replicate, seed))
        result = RunResult(RunStatus.OK, seed=seed, total_seconds=1.0)
        return Replicate(result, 1.0 + replicate / 100, None, Path(f"r/{experiment_id}/{replicate}"))


def _arms(root: Path) -> list[Arm]:
    commits = git(root, "rev-list", "HEAD").split()
    return [Arm("A", commits[1], "side A"), Arm("B", commits[0], "side B")]


def test_an_interrupted_study_asked_again_runs_only_the_seeds_it_lacks(tmp_path: Path) -> None:
    """Ctrl-C closed the study as interrupted and `nightlab validate` again started it afresh:
    every run measured again (hours at a larger scale). Now its experiments are taken up."""
    root = make_workspace(tmp_path / "ws")
    (root / "train.py").write_text((root / "train.py").read_text().replace("LR = 0.1", "LR = 0.3"))
    git(root, "commit", "-qam", "B")
    session = open_session(root)
    seeds = study_seeds(session.config, 3)
    first = SideStudy(session, "validate", reference=_arms(root)[0].commit)
    cut = Runner(stop_at=3)  # A1 B1 A2, then Ctrl-C during B2
    with pytest.raises(KeyboardInterrupt):
        first.run(_arms(root), seeds, cut, {"mode": "budget"})  # type: ignore[arg-type]
    rows = session.ledger.experiments(kind="validate")
    assert [(r.status, r.reason) for r in rows] == [("crash", "interrupted")] * 2

    again = SideStudy(session, "validate", reference=_arms(root)[0].commit)
    arms, shown = _arms(root), []
    rest = Runner()
    again.run(arms, seeds, rest, {"mode": "budget"}, lambda arm, i, rep: shown.append((arm.label, i)))  # type: ignore[arg-type]
    ids = [r.id for r in rows]
    assert [a.experiment_id for a in arms] == ids  # the same experiments, no second pair
    assert rest.calls == [(ids[1], 1, seeds[1]), (ids[0], 2, seeds[2]), (ids[1], 2, seeds[2])]
    assert [a.resumed for a in arms] == [2, 1] and [len(a.values) for a in arms] == [3, 3]
    assert shown[:3] == [("A", 0), ("B", 0), ("A", 1)]  # what was recorded before, said first
    after = {r.id: r for r in session.ledger.experiments(kind="validate")}
    assert all(after[i].status == "ok" and after[i].n_runs == 3 for i in ids)
    assert all(after[i].meta["study"] == again.study_id for i in ids)  # the plot finds them

    # A finished study is not taken up: asked again, it is measured afresh.
    fresh, arms = Runner(), _arms(root)
    SideStudy(session, "validate", reference=arms[0].commit).run(arms, seeds, fresh, {"mode": "budget"})  # type: ignore[arg-type]
    assert len(fresh.calls) == 6 and not set(a.experiment_id for a in arms) & set(ids)


def test_other_settings_or_seeds_are_another_study(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / "train.py").write_text((root / "train.py").read_text().replace("LR = 0.1", "LR = 0.3"))
    git(root, "commit", "-qam", "B")
    session = open_session(root)
    seeds = study_seeds(session.config, 2)
    with pytest.raises(KeyboardInterrupt):
        SideStudy(session, "validate", reference=_arms(root)[0].commit).run(
            _arms(root),
            seeds,
            Runner(stop_at=1),
            {"mode": "budget"},  # type: ignore[arg-type]
        )
    other = Runner()
    SideStudy(session, "validate", reference=_arms(root)[0].commit).run(
        _arms(root),
        seeds,
        other,
        {"mode": "time_to_target"},  # type: ignore[arg-type]
    )
    assert len(other.calls) == 4  # another mode: nothing taken up
    shifted = Runner()
    SideStudy(session, "validate", reference=_arms(root)[0].commit).run(
        _arms(root),
        [s + 1 for s in seeds],
        shifted,
        {"mode": "budget"},  # type: ignore[arg-type]
    )
    assert len(shifted.calls) == 4  # other seeds: the earlier run is not one of them,
    first = session.ledger.experiments(kind="validate")[0]
    assert [r.seed for r in session.ledger.runs(first.id)] == [seeds[0]]  # and it is not overwritten
    assert first.status == "crash" and first.id not in {c[0] for c in shifted.calls}


def test_runs_with_another_budget_or_environment_are_another_study(tmp_path: Path) -> None:
    """Nothing in a study's meta said its budget: one interrupted at 5 s was taken up at 60 s."""
    root = make_workspace(tmp_path / "ws")
    (root / "train.py").write_text((root / "train.py").read_text().replace("LR = 0.1", "LR = 0.3"))
    git(root, "commit", "-qam", "B")
    session = open_session(root)
    seeds = study_seeds(session.config, 2)
    cut = Runner(stop_at=1)
    cut.config = session.config  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        SideStudy(session, "validate", reference=_arms(root)[0].commit).run(_arms(root), seeds, cut, {})  # type: ignore[arg-type]
    longer = Runner()
    longer.config = session.config.model_copy(
        update={"budget": session.config.budget.model_copy(update={"seconds": 60})}
    )  # type: ignore[attr-defined]
    SideStudy(session, "validate", reference=_arms(root)[0].commit).run(_arms(root), seeds, longer, {})  # type: ignore[arg-type]
    assert len(longer.calls) == 4  # nothing taken up
    again = Runner()
    again.config = session.config  # type: ignore[attr-defined]
    again.extra_env = {"NIGHTLAB_EVAL_INTERVAL_SECONDS": "1"}  # type: ignore[attr-defined]
    SideStudy(session, "validate", reference=_arms(root)[0].commit).run(_arms(root), seeds, again, {})  # type: ignore[arg-type]
    assert len(again.calls) == 4
    same = Runner()
    same.config = session.config  # type: ignore[attr-defined]
    SideStudy(session, "validate", reference=_arms(root)[0].commit).run(_arms(root), seeds, same, {})  # type: ignore[arg-type]
    assert len(same.calls) == 3  # the first study, taken up: its one run stands


def test_a_study_killed_outright_reads_interrupted_while_another_study_runs(tmp_path: Path) -> None:
    """A study whose harness got kill -9 left its experiments "running"; a later study of the
    same kind (other seeds: not a resume of it) holds the workspace, and the killed one read
    as running beside it. It is closed as interrupted when the new one starts, still resumable."""
    from nightlab.studies.resume import study_states

    root = make_workspace(tmp_path / "ws")
    (root / "train.py").write_text((root / "train.py").read_text().replace("LR = 0.1", "LR = 0.3"))
    git(root, "commit", "-qam", "B")
    session = open_session(root)
    seeds = study_seeds(session.config, 2)
    with pytest.raises(KeyboardInterrupt):
        SideStudy(session, "validate", reference=_arms(root)[0].commit).run(
            _arms(root), seeds, Runner(stop_at=1), {}
        )  # type: ignore[arg-type]
    killed = [r.id for r in session.ledger.experiments(kind="validate")]
    for experiment_id in killed:  # what kill -9 leaves: no handler closed them
        session.ledger.update_experiment(experiment_id, status="running", reason=None, finished_at=None)

    seen: list[list[str]] = []

    class Watching(Runner):
        def run(self, experiment_id: int, replicate: int, commit: str, seed: int) -> Replicate:
            seen.append([s["state"] for s in study_states(session.ledger, session.tag, "validate")])
            return super().run(experiment_id, replicate, commit, seed)

    other = Watching()
    SideStudy(session, "validate", reference=_arms(root)[0].commit).run(
        _arms(root), [s + 1 for s in seeds], other, {}
    )  # type: ignore[arg-type]
    assert len(other.calls) == 4 and seen[0] == ["interrupted", "running"], seen
    rows = {r.id: r for r in session.ledger.experiments(kind="validate")}
    assert [(rows[i].status, rows[i].reason) for i in killed] == [("crash", "interrupted")] * 2
    again = Runner()  # and the killed study is still taken up by the same study asked again
    SideStudy(session, "validate", reference=_arms(root)[0].commit).run(_arms(root), seeds, again, {})  # type: ignore[arg-type]
    assert len(again.calls) == 3 and {c[0] for c in again.calls} == set(killed)
