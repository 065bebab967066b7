"""One given experiment under the harness: ``nightlab try`` and the MCP server.

Karpathy's own workflow is a coding agent editing ``train.py`` in place in a terminal. ``try``
keeps that habit and adds the harness: the uncommitted edits to the editable files become one
experiment (whole files, against the incumbent of the research branch), trained under the
budget, evaluated by the frozen code, decided by the policy and recorded in the ledger. A kept
change leaves the user's files as they are (the research branch moves); anything else puts the
editable files back to the incumbent's content, so the next edit starts from the best code.

The loop itself never reads the user's tree; only this module does, and only the editable files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nightlab.agents.base import Agent
from nightlab.errors import UserError
from nightlab.events import EventSink
from nightlab.formatting import fixed
from nightlab.paths import is_editable
from nightlab.research.loop import ResearchLoop
from nightlab.research.session import Session, build_loop, open_session
from nightlab.stats import noise_floor
from nightlab.store.ledger import ExperimentRow
from nightlab.types import Context, Edit, Proposal


class GivenProposals(Agent):
    """The loop's agent when proposals come from outside (``try``, MCP): it never proposes itself."""

    def __init__(self, name: str) -> None:
        self.name = name

    def propose(self, context: Context) -> Proposal | None:
        return None


def open_harness(
    root: Path, tag: str | None, agent_name: str, events: EventSink | None = None, check_clean: bool = True
) -> tuple[Session, ResearchLoop]:
    """The session and a loop whose proposals are handed in through :meth:`ResearchLoop.run_one`."""
    session = open_session(root, tag=tag)
    loop = build_loop(session, events=events, agent=GivenProposals(agent_name), check_clean=check_clean)
    return session, loop


@dataclass
class TryOutcome:
    """What ``nightlab try`` did: the recorded experiment and what happened to the user's files."""

    row: ExperimentRow
    restored: list[str] = field(default_factory=list)
    left_in_place: bool = False


def working_tree_edits(session: Session) -> dict[str, str | None]:
    """The editable files that differ from HEAD in the user's tree (path -> text, None if deleted).

    Anything else uncommitted is refused: the experiment would silently not include it, and the
    frozen files are the harness's to change, not the agent's.
    """
    config, workspace, root = session.config, session.workspace, session.root
    editable, frozen = config.target.editable, config.target.frozen
    dirty = workspace.dirty_files()
    inside = [p for p in dirty if is_editable(p, editable, frozen)]
    outside = [p for p in dirty if p not in inside]
    if outside:
        shown = ", ".join(outside[:5]) + (f", and {len(outside) - 5} more" if len(outside) > 5 else "")
        raise UserError(
            f"nightlab try: uncommitted changes outside the editable files ({shown}); only "
            f"{', '.join(editable)} may change: commit or revert the others (git checkout -- FILE) first"
        )
    edits: dict[str, str | None] = {}
    for path in inside:
        target = root / path
        edits[path] = target.read_text(errors="surrogateescape") if target.is_file() else None
    return edits


def try_working_tree(
    root: Path,
    description: str,
    hypothesis: str = "",
    tag: str | None = None,
    events: EventSink | None = None,
) -> tuple[Session, TryOutcome]:
    """Run the uncommitted edits to the editable files as one experiment, then keep or revert them."""
    if not description.strip():
        raise UserError('nightlab try: give the experiment a description: nightlab try -m "raise LR to 0.02"')
    session = open_session(root, tag=tag)
    edits = working_tree_edits(session)
    if not edits:
        raise UserError(
            f"nightlab try: no uncommitted edits to the editable files ({', '.join(session.config.target.editable)}): "
            "edit them first"
        )
    deleted = [p for p, text in edits.items() if text is None]
    if deleted:
        raise UserError(
            f"nightlab try: {', '.join(deleted)} deleted: an experiment can change files, not delete them"
        )
    loop = build_loop(session, events=events, agent=GivenProposals("try"), check_clean=False)
    loop.prepare()  # the baseline first, on a new tag: the proposal is made against the incumbent
    incumbent = session.ledger.incumbent(session.tag)
    assert incumbent is not None and incumbent.commit is not None  # prepare() guarantees it
    before = session.workspace.read_files(incumbent.commit, list(edits), missing_ok=True)
    changed = {p: text for p, text in edits.items() if before.get(p) != text}
    if not changed:
        raise UserError(
            f"nightlab try: {', '.join(edits)} already match the best code (#{incumbent.id}): "
            "nothing new to try; edit them first"
        )
    proposal = Proposal(
        description=description.strip(),
        hypothesis=hypothesis.strip(),
        edits=[Edit(path=p, replace=text) for p, text in changed.items() if text is not None],
        meta={"source": "nightlab try"},
    )
    row = loop.run_one(proposal)
    outcome = TryOutcome(row=row)
    if row.decision == "keep":
        return session, outcome
    if row.commit is None:  # refused before running (syntax error, no real change): let the user fix it
        outcome.left_in_place = True
        return session, outcome
    best = session.ledger.incumbent(session.tag)
    assert best is not None and best.commit is not None
    texts = session.workspace.read_files(best.commit, list(changed), missing_ok=True)
    for path in changed:
        target = session.root / path
        if path in texts:
            target.write_text(texts[path], errors="surrogateescape")
        else:
            target.unlink(missing_ok=True)  # a file the experiment created
        outcome.restored.append(path)
    return session, outcome


def result_block(session: Session, row: ExperimentRow) -> str:
    """The experiment in autoresearch's summary-block format: ``---`` then ``key: value`` lines."""
    metric = session.config.metric.name
    best = session.ledger.incumbent(session.tag)
    lines = [("experiment", str(row.id))]
    lines.append(
        (metric, fixed(row.metric_mean, missing="-") + (f" ± {row.metric_sem:.6f}" if row.metric_sem else ""))
    )
    if row.delta is not None:
        se = f" ± {row.delta_se:.6f}" if row.delta_se is not None else ""
        lines.append(("delta", f"{row.delta:+.6f}{se} (improvement over #{row.incumbent_id}, > 0 is better)"))
    else:
        lines.append(("delta", "-"))
    lines += [
        ("decision", row.decision or row.status),
        ("status", row.status),
        ("reason", " ".join((row.reason or "").split())),
        ("runs", str(row.n_runs or 0)),
        ("commit", row.commit[:12] if row.commit else "- (not run)"),
        ("best", f"{fixed(best.metric_mean, missing='-')} (#{best.id})" if best else "-"),
    ]
    width = max(len(k) for k, _ in lines) + 2
    return "---\n" + "\n".join(f"{(k + ':').ljust(width)}{v}" for k, v in lines) + "\n"


def state_dict(session: Session, max_experiments: int | None = None) -> dict:
    """Best, noise floor and budget left: what an outside agent needs before its next experiment."""
    ledger, tag, config = session.ledger, session.tag, session.config
    best = ledger.incumbent(tag)
    noise = noise_floor(ledger.replicate_groups(tag))
    done = sum(1 for e in ledger.research(tag) if e.kind == "candidate")
    cap = max_experiments if max_experiments is not None else config.run.max_experiments
    return {
        "tag": tag,
        "branch": f"nightlab/{tag}",
        "metric": config.metric.name,
        "direction": config.metric.direction.value,
        "best": (
            {
                "id": best.id,
                "value": best.metric_mean,
                "sem": best.metric_sem,
                "description": best.description,
            }
            if best
            else None
        ),
        "noise_sd": noise.sd if noise else None,
        "experiments_done": done,
        "experiments_left": None if cap is None else max(0, cap - done),
        "budget_per_run": {
            "seconds": config.budget.seconds,
            "tokens": config.budget.tokens,
            "steps": config.budget.steps,
            "timeout": config.budget.timeout,
        },
        "editable": list(config.target.editable),
        "frozen": list(config.target.frozen),
    }


def history_rows(session: Session, limit: int | None = None) -> list[dict]:
    """Finished experiments, oldest first, as agents see them (never the holdout metric)."""
    rows = []
    for e in session.ledger.history(session.tag):
        rows.append(
            {
                "id": e.id,
                "description": e.description,
                "metric": e.metric,
                "se": e.spread,
                "improvement": e.delta,
                "runs": e.runs,
                "status": e.status,
                "decision": e.decision,
                "reason": e.reason,
            }
        )
    return rows[-limit:] if limit else rows
