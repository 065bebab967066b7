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

import json
import shlex
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
from nightlab.types import Context, Direction, Edit, Proposal


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
    """What ``nightlab try`` did: the recorded experiment (None for ``--sync`` alone) and what
    happened to the user's files."""

    row: ExperimentRow | None
    synced: list[str] = field(default_factory=list)
    left_in_place: bool = False
    # The user's files differ from the best code after a keep (their edit was merged onto kept
    # changes their checkout does not have): ``--sync`` brings those in.
    behind: bool = False


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


def onto_incumbent(session: Session, edits: dict[str, str], incumbent: ExperimentRow) -> dict[str, str]:
    """The user's edits applied onto the incumbent: path -> the file as the experiment runs it.

    The user's checkout may be behind the best code (a ``nightlab run`` kept changes since), so
    their files are not the experiment: their *edit* is, the difference between their files and
    what they started from: their checkout's commit, or the best code ``try --sync`` last wrote
    into their files (whichever their file is closer to: an edit made after a sync is measured
    from the synced code, not as a change of every line the sync brought in). Each file is merged three ways (the checkout's version as the base,
    the incumbent's and the user's as the two sides), which applies that edit onto the best code
    and takes an edit already in the best code as applied. An edit that changes lines the best
    code changed too is refused, naming the file and the line.
    """
    assert incumbent.commit is not None
    workspace = session.workspace
    paths = list(edits)
    checkout = workspace.read_files(workspace.head_commit(), paths, missing_ok=True)
    synced = _synced_files(session, paths)
    best = workspace.read_files(incumbent.commit, paths, missing_ok=True)
    merged: dict[str, str] = {}
    for path, theirs in edits.items():
        bases = [text for text in (checkout.get(path), synced.get(path)) if text is not None]
        base = min(bases, key=lambda text: _distance(text, theirs)) if bases else None
        if path not in best or best[path] == base or best[path] == theirs:
            merged[path] = theirs  # the best code has this file as the checkout does: nothing to merge
            continue
        text, conflict = _merge3(best[path], base or "", theirs)
        if conflict is not None:
            raise UserError(
                f"nightlab try: your edit of {path} does not apply to the best code (#{incumbent.id}): "
                f"it changes lines the best code changed too ({conflict}); put it aside (git checkout -- "
                f"{shlex.quote(path)}), bring the best code in with `nightlab try --sync "
                f"{shlex.quote(str(session.root))}`, redo the edit there and try again"
            )
        merged[path] = text
    return merged


SYNC_RECORD = "try-synced.json"  # in the state dir: the commit `try --sync` last wrote into the checkout


def _synced_files(session: Session, paths: list[str]) -> dict[str, str]:
    """The files as the last ``try --sync`` wrote them ({} when there was none, or its commit is gone)."""
    record = session.workspace.state_dir / SYNC_RECORD
    try:
        commit = str(json.loads(record.read_text())["commit"])
        return session.workspace.read_files(commit, paths, missing_ok=True)
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return {}


def _distance(base: str, theirs: str) -> int:
    """How many lines of ``base`` an edit to ``theirs`` changes (a smaller edit is the likelier one)."""
    changes = _changes(base.splitlines(keepends=True), theirs.splitlines(keepends=True))
    return sum(max(i2 - i1, len(new)) for i1, i2, new, _ in changes)


def _merge3(ours: str, base: str, theirs: str) -> tuple[str, str | None]:
    """``ours`` with the change from ``base`` to ``theirs`` applied; the first conflict described.

    Each side's change is a list of base line ranges and what replaces them (difflib). The user's
    changes go onto ``ours`` unless the best code changed an overlapping range differently, or
    inserted at the same place. Unlike ``git merge-file``, changes to *adjacent* lines do not
    conflict: a training script's knobs are a block of adjacent constants, and changing one
    next to another that a kept change moved is the common case, not a conflict.
    """
    a, b, c = (text.splitlines(keepends=True) for text in (base, ours, theirs))
    kept, mine = _changes(a, b), _changes(a, c)
    for i1, i2, new, j1 in mine:
        for k1, k2, other, _ in kept:
            if (i1, i2, new) == (k1, k2, other):
                continue  # the same change on both sides: already in the best code
            inside = (i1 == i2 and k1 < i1 < k2) or (k1 == k2 and i1 < k1 < i2)
            if max(i1, k1) < min(i2, k2) or i1 == i2 == k1 == k2 or inside:
                shown = (new or a[i1:i2] or [""])[0].strip()[:60]
                return "", f"your line {j1 + 1}: '{shown}'"
    already = [(k1, k2, other) for k1, k2, other, _ in kept]
    ordered = sorted(already + [(i1, i2, new) for i1, i2, new, _ in mine if (i1, i2, new) not in already])
    out: list[str] = []
    pos = 0
    for start, end, lines in ordered:
        out += a[pos:start] + lines
        pos = max(pos, end)
    return "".join(out + a[pos:]), None


def _changes(old: list[str], new: list[str]) -> list[tuple[int, int, list[str], int]]:
    """(start, end, replacement, position in ``new``) for each changed range of ``old``; a block
    of lines replaced one for one is split into single lines (each knob its own change)."""
    from difflib import SequenceMatcher

    out = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "replace" and i2 - i1 == j2 - j1:
            out += [
                (i, i + 1, [new[j]], j)
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
                if old[i] != new[j]
            ]
        elif tag != "equal":
            out.append((i1, i2, new[j1:j2], j1))
    return out


def try_working_tree(
    root: Path,
    description: str | None,
    hypothesis: str = "",
    tag: str | None = None,
    events: EventSink | None = None,
    sync: bool = False,
) -> tuple[Session, TryOutcome]:
    """Run the uncommitted edits to the editable files as one experiment, applied onto the best code.

    The user's files are never written unless ``sync`` asks for it: then, once the experiment
    is recorded (their version is its commit), the editable files get the best code. With no
    ``description``, ``sync`` alone brings the best code in, refusing while the files hold an
    edit that is nowhere in git yet.
    """
    if description is not None and not description.strip():
        raise UserError('nightlab try: give the experiment a description: nightlab try -m "raise LR to 0.02"')
    if description is None and not sync:
        raise UserError('nightlab try: give the experiment a description: nightlab try -m "raise LR to 0.02"')
    session = open_session(root, tag=tag)
    session.check_runnable()  # the workspace lock first: never read the tree under another harness
    edits = working_tree_edits(session)
    if description is None:
        return session, _sync_only(session, edits, events)
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
    texts = {p: t for p, t in edits.items() if t is not None}
    interrupted = [e.id for e in session.ledger.unfinished(session.tag)]
    loop = build_loop(session, events=events, agent=GivenProposals("try"), check_clean=False)
    loop.prepare()  # the baseline first, on a new tag: the proposal is made against the incumbent
    finished = _finished_try_of(session, interrupted, texts)
    if finished is not None:  # the same edits, tried before and interrupted: prepare() just ended it
        return session, TryOutcome(row=finished)
    incumbent = session.ledger.incumbent(session.tag)
    assert incumbent is not None and incumbent.commit is not None  # prepare() guarantees it
    runs = onto_incumbent(session, texts, incumbent)
    before = session.workspace.read_files(incumbent.commit, list(runs), missing_ok=True)
    changed = {p: text for p, text in runs.items() if before.get(p) != text}
    if not changed:
        raise UserError(
            f"nightlab try: {', '.join(edits)} already match the best code (#{incumbent.id}): "
            "nothing new to try; edit them first"
        )
    proposal = Proposal(
        description=description.strip(),
        hypothesis=hypothesis.strip(),
        edits=[Edit(path=p, replace=text) for p, text in changed.items()],
        meta={"source": "nightlab try", "checkout": session.workspace.head_commit()},
    )
    row = loop.run_one(proposal)
    outcome = TryOutcome(row=row)
    if row.commit is None:  # refused before running (syntax error, no real change): let the user fix it
        outcome.left_in_place = True
        return session, outcome
    best = session.ledger.incumbent(session.tag)
    assert best is not None and best.commit is not None
    best_texts = session.workspace.read_files(best.commit, list(texts), missing_ok=True)
    if sync:
        outcome.synced = _write_best(session, best.commit, list(texts))
    else:
        outcome.behind = row.decision == "keep" and any(best_texts.get(p) != t for p, t in texts.items())
    return session, outcome


def _finished_try_of(session: Session, interrupted: list[int], texts: dict[str, str]) -> ExperimentRow | None:
    """The interrupted experiment (of ``interrupted``, finished by resuming) whose commit holds
    exactly the user's edits: a second ``try`` of the same edits is that experiment's result, not
    a new one skipped as "the same code as #N"."""
    for exp_id in reversed(interrupted):
        row = session.ledger.experiment(exp_id)
        if row.kind != "candidate" or row.commit is None or row.status == "running":
            continue
        if session.workspace.read_files(row.commit, list(texts), missing_ok=True) == texts:
            return row
    return None


def _sync_only(session: Session, edits: dict[str, str | None], events: EventSink | None) -> TryOutcome:
    """``nightlab try --sync`` without ``-m``: the best code into the checkout, losing nothing."""
    best = session.ledger.incumbent(session.tag)
    if best is None or best.commit is None:
        raise UserError(
            f"nightlab try --sync: nightlab/{session.tag} has no best code yet; "
            f'run an experiment first (nightlab try -m "..." {session.root})'
        )
    unsaved = [p for p, text in edits.items() if text is not None and not _in_git(session, p, text)]
    if unsaved:
        raise UserError(
            f"nightlab try --sync: {', '.join(unsaved)} holds an edit that is not in git yet; try it first "
            f'(nightlab try -m "..." --sync) or drop it (git checkout -- {unsaved[0]})'
        )
    return TryOutcome(row=None, synced=_write_best(session, best.commit, list(edits)))


def _in_git(session: Session, path: str, text: str) -> bool:
    """Whether ``text`` is ``path`` at HEAD, at the best code or at one of the tag's experiments."""
    workspace = session.workspace
    commits = [workspace.head_commit()]
    commits += [e.commit for e in reversed(session.ledger.experiments(tag=session.tag)) if e.commit]
    for commit in dict.fromkeys(commits):
        if workspace.read_files(commit, [path], missing_ok=True).get(path) == text:
            return True
    return False


def _write_best(session: Session, commit: str, also: list[str]) -> list[str]:
    """Write the editable files of ``commit`` into the user's tree; returns the paths changed.

    Editable files the user has that ``commit`` lacks (in ``also``: files an experiment created)
    are removed; everything else of the user's is left alone.
    """
    config, root, workspace = session.config, session.root, session.workspace
    paths = [
        p
        for p in workspace.list_files(commit)
        if is_editable(p, config.target.editable, config.target.frozen)
    ]
    texts = workspace.read_files(commit, paths)
    written = []
    for path in dict.fromkeys([*paths, *also]):
        target = root / path
        current = target.read_text(errors="surrogateescape") if target.is_file() else None
        if path in texts and current != texts[path]:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(texts[path], errors="surrogateescape")
            written.append(path)
        elif path not in texts and current is not None:
            target.unlink()
            written.append(path)
    (workspace.state_dir / SYNC_RECORD).write_text(json.dumps({"commit": commit}) + "\n")
    return written


def result_block(session: Session, row: ExperimentRow) -> str:
    """The experiment in autoresearch's summary-block format: ``---`` then ``key: value`` lines."""
    metric = session.config.metric.name
    best = session.ledger.incumbent(session.tag)
    lines = [("experiment", str(row.id))]
    lines.append(
        (metric, fixed(row.metric_mean, missing="-") + (f" ± {row.metric_sem:.6f}" if row.metric_sem else ""))
    )
    if row.delta is not None:
        # Two views of one number: ``delta`` moves as the metric does (the sign of the Δ in the
        # reason and of ``delta`` in `nightlab status --json`), ``improvement`` is > 0 when better.
        direction = session.config.metric.direction
        se = f" ± {row.delta_se:.6f}" if row.delta_se is not None else ""
        better = "lower" if direction is Direction.MINIMIZE else "higher"
        change = direction.sign * row.delta
        # The incumbent's value on the runs it was compared with: ``best`` below may come from
        # other (fresh) runs of it, and the two must be reconcilable by reading.
        against = f" at {row.metric_mean - change:.6f}" if row.metric_mean is not None else ""
        lines.append(
            (
                "delta",
                f"{change:+.6f}{se} ({metric} change vs #{row.incumbent_id}{against} in the runs compared, "
                f"{better} is better)",
            )
        )
        lines.append(("improvement", f"{row.delta:+.6f} (> 0 is better)"))
    else:
        lines += [("delta", "-"), ("improvement", "-")]
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
