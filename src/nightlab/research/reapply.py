"""Re-applying a winner whose base is gone: the candidate that beat its incumbent after another
candidate was kept meanwhile (several slots decide at once).

Keeping it as it is would throw away the change kept in between (its commit does not contain
it); keeping nothing would lose a real gain. So its change is applied onto the new incumbent
(its SEARCH/REPLACE edits again where they still match, else a three-way apply of its diff) and
the result runs as a new experiment, decided there like any other.
The first candidate is recorded as discarded, with a reason that names both: where its change
went, or the kept experiment it conflicts with.
"""

from __future__ import annotations

from dataclasses import replace

from nightlab.code.changes import code_hash, line_counts
from nightlab.code.edits import apply_edits
from nightlab.config import Config
from nightlab.errors import EditError
from nightlab.research.context import editable_texts
from nightlab.research.policy import Decision
from nightlab.research.record import Recorder
from nightlab.research.screen import Change
from nightlab.store.ledger import Ledger
from nightlab.store.schema import ExperimentRow
from nightlab.types import Edit
from nightlab.workspace.git import Workspace

META_FROM = "reapplied_from"


def reapply(
    recorder: Recorder,
    ledger: Ledger,
    workspace: Workspace,
    config: Config,
    row: ExperimentRow,
    incumbent: ExperimentRow,
    decision: Decision,
) -> ExperimentRow | None:
    """Conclude ``row`` (a would-be keep on an old incumbent) and return the experiment that
    carries its change on ``incumbent``; None when the change conflicts or is already there.

    Safe to repeat after a crash: the new experiment is made before ``row`` is concluded, and
    one made by an interrupted earlier call is found again rather than made twice."""
    n_runs = len(ledger.ok_metrics(row.id))
    moved = _earlier_attempt(ledger, row)
    if moved is None:
        made = _make(recorder, ledger, workspace, config, row, incumbent)
        if isinstance(made, str):
            recorder.concluded(
                row, n_runs, replace(decision, action="discard", reason=f"{decision.reason}; {made}")
            )
            return None
        moved = made
    why = f"{decision.reason}; but #{incumbent.id} was kept while it ran: re-applied onto it as #{moved.id}"
    recorder.concluded(row, n_runs, replace(decision, action="discard", reason=why))
    return moved


def _by_edits(config: Config, row: ExperimentRow, files: dict[str, str]) -> dict[str, str] | None:
    """The incumbent's files with the proposal's SEARCH/REPLACE edits applied again, or None.

    First choice: knob changes sit on neighbouring lines (``LR`` above ``WIDTH``), which a
    line-based three-way merge calls a conflict although each edit still applies exactly.
    Whole-file edits never go this way: they would silently undo the kept change."""
    raw = row.proposal.get("edits") or []
    try:
        edits = [Edit(path=e["path"], replace=e["replace"], search=e.get("search")) for e in raw]
    except (KeyError, TypeError):
        return None
    if not edits or any(not e.search for e in edits):
        return None
    try:
        changed = apply_edits(files, edits, config.target.editable, frozen=config.target.frozen)
    except EditError:
        return None
    return {**files, **changed}


def _earlier_attempt(ledger: Ledger, row: ExperimentRow) -> ExperimentRow | None:
    for other in ledger.experiments(kind="candidate", tag=row.tag):
        if other.id > row.id and other.meta.get(META_FROM) == row.id:
            return other
    return None


def _make(
    recorder: Recorder,
    ledger: Ledger,
    workspace: Workspace,
    config: Config,
    row: ExperimentRow,
    incumbent: ExperimentRow,
) -> ExperimentRow | str:
    """The new experiment, or why there is none (a conflict, or nothing left to add)."""
    assert row.commit and row.base_commit and incumbent.commit
    before = editable_texts(config, workspace, incumbent.commit)
    after = _by_edits(config, row, before)
    if after is None:  # whole files, or a SEARCH text the kept change altered: a three-way apply
        merged = workspace.reapply_onto(row.base_commit, row.commit, incumbent.commit, f"re-apply #{row.id}")
        if merged is None:
            return f"but it conflicts with #{incumbent.id}, kept while it ran: not re-applied"
        after = editable_texts(config, workspace, merged)
    changed: dict[str, str | None] = {p: t for p, t in after.items() if before.get(p) != t}
    changed.update({p: None for p in before if p not in after})
    if not changed:
        return f"but #{incumbent.id}, kept while it ran, already holds this change"
    added, removed = line_counts(before, after)
    change = Change(changed, code_hash(after), added, removed)  # type: ignore[arg-type]
    fields = dict(
        tag=row.tag,
        base_commit=incumbent.commit,
        agent=row.agent,
        description=f"{row.description} (re-applied onto #{incumbent.id})"[:200],
        hypothesis=row.hypothesis,
        proposal_json=row.proposal,
        meta_json={**row.meta, META_FROM: row.id},
        incumbent_id=incumbent.id,
        cost_json={},
    )
    return recorder.committed(fields, change, incumbent.commit, row.hypothesis or "")
