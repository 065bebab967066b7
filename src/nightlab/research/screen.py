"""Screening a proposal before anything runs: it becomes a :class:`Change`, or a :class:`Refusal`.

In order, each step cheaper than a training run and each able to stop the proposal:

1. the agent itself refused it (it could not make a usable one, and says why);
2. the edits apply to the incumbent's files, only to editable files (:mod:`nightlab.code.edits`);
3. every changed Python file still parses;
4. the diff audit (:mod:`nightlab.code.audit`): blocked, or marked and run;
5. a change that cannot move the metric (nothing, comments, only the seed) is skipped;
6. code already measured (the same files as an earlier experiment that ran), or running now in
   another slot, is skipped.

The loop records a refusal as it is and runs a change; this module decides which is which and
never touches git, the ledger or a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nightlab.code.audit import audit_change
from nightlab.code.changes import classify_change, code_hash, line_counts
from nightlab.code.edits import apply_edits, python_syntax_error
from nightlab.config import Config
from nightlab.errors import EditError
from nightlab.types import Proposal

_NO_EFFECT = {
    "none": "the edits change nothing",
    "cosmetic": "only comments or whitespace change",
    "seed": "only the seed changes",
}


@dataclass
class Change:
    """A proposal that passed screening: the files it changes and what the ledger keeps of it."""

    changed: dict[str, str]  # path -> new text, changed files only
    code_hash: str  # of all editable files after the change
    lines_added: int
    lines_removed: int
    audit: list[str] = field(default_factory=list)  # flags under [audit] mode = "mark"


@dataclass
class Refusal:
    """Why a proposal does not run: recorded with this status, decision and reason."""

    status: str  # "invalid" or "skipped"
    decision: str  # "invalid" or "discard"
    reason: str


def screen(
    proposal: Proposal,
    files: Mapping[str, str],
    config: Config,
    measured: Mapping[str, int],
    running: Mapping[str, int] | None = None,
) -> Change | Refusal:
    """Screen ``proposal`` against the incumbent's editable ``files``.

    ``measured`` maps the code hash of every experiment that ran to its id, ``running`` that of
    every experiment still in flight in another slot (duplicates of either are skipped with a
    reason that names the other experiment).
    """
    if proposal.refused:
        return Refusal("invalid", "invalid", f"proposal refused: {proposal.refused}")
    target = config.target
    try:
        changed = apply_edits(files, proposal.edits, target.editable, frozen=target.frozen)
        for path, text in changed.items():
            problem = python_syntax_error(path, text)
            if problem:
                raise EditError(problem)
    except EditError as exc:
        return Refusal("invalid", "invalid", f"edit refused: {exc}")
    flags = audit_change(dict(files), changed, config) if config.audit.mode != "off" else []
    if flags and config.audit.mode == "block":
        return Refusal("invalid", "invalid", "audit: " + "; ".join(flags))
    after = {**files, **changed}
    kind = classify_change(files, after)
    if kind != "code":
        return Refusal("skipped", "discard", f"{_NO_EFFECT[kind]}: cannot change the result, not run")
    digest = code_hash(after)
    if digest in measured:
        return Refusal(
            "skipped", "discard", f"the same code as #{measured[digest]}, already measured: not run again"
        )
    if running and digest in running:
        return Refusal(
            "skipped", "discard", f"the same code as #{running[digest]}, running now: not run twice"
        )
    added, removed = line_counts(files, after)
    return Change(changed, digest, added, removed, flags)
