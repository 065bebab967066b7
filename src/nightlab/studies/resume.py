"""A side study cut off (Ctrl-C, ``kill``, a lost machine) goes on where it stopped.

``nightlab validate`` and ``nightlab ablate`` record every run as it finishes, but an interrupted
study used to be closed as crashed and the next command started it afresh: on a bigger scale,
hours of runs measured again. When the same study is asked for again (the same kind, the same
code in every arm, the same settings, the same seeds), its earlier experiments are taken up
again: the runs they hold count, and only the missing seeds run.

Arms are matched by the *tree* of their commit, not the commit: an ablation's variants are
commits made afresh each time (the same code under a new timestamp). Only a study that was
interrupted (``crash`` with reason ``interrupted``) or never closed (``running``, its harness
killed: the workspace lock, held by the caller, says none runs now) is taken up; one that
finished, or stopped on an error it reported, is not.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nightlab.errors import shell_word
from nightlab.research.runner import Replicate
from nightlab.store.ledger import Ledger
from nightlab.store.schema import ExperimentRow, RunRow
from nightlab.types import RunResult, RunStatus
from nightlab.workspace.git import Workspace
from nightlab.workspace.lock import holder

# The reason SideStudy.run records for a study cut off by a signal.
INTERRUPTED = "interrupted"


@dataclass
class Resumed:
    """An earlier experiment taken up by an arm and the replicates it already holds, in seed order."""

    experiment_id: int
    replicates: list[Replicate]


def _comparable(meta: dict) -> dict:
    """The settings two attempts of one study must share: all but the study's own id."""
    return {k: v for k, v in meta.items() if k != "study"}


def _tree(workspace: Workspace, commit: str | None) -> str | None:
    if not commit:
        return None
    try:
        return workspace.git("rev-parse", f"{commit}^{{tree}}").strip()
    except Exception:  # noqa: BLE001 - a commit gone since (gc of a dropped ref): not this study
        return None


def _replicate(row: RunRow) -> Replicate:
    result = RunResult(
        status=RunStatus(row.status),
        metrics=row.metrics if isinstance(row.metrics, dict) else {},
        training_seconds=row.training_seconds,
        total_seconds=row.total_seconds or 0.0,
        peak_memory_mb=row.peak_memory_mb,
        log_tail=row.log_tail or "",
        seed=row.seed or 0,
        exit_code=row.exit_code,
        reason=row.reason or "",
        progress=row.progress,
    )
    return Replicate(result, row.metric, row.holdout, Path(row.run_dir or ""))


def _prefix(ledger: Ledger, experiment_id: int, seeds: Sequence[int]) -> list[Replicate] | None:
    """The runs of ``experiment_id`` for ``seeds[0]``, ``seeds[1]``... up to the first missing
    one; None when a recorded run is of another seed or beyond ``seeds`` (another study: taking
    it up would overwrite that run)."""
    by_index = {r.replicate: r for r in ledger.runs(experiment_id) if r.role is None}
    if any(i >= len(seeds) or row.seed != seeds[i] for i, row in by_index.items()):
        return None
    out: list[Replicate] = []
    for i in range(len(seeds)):
        row = by_index.get(i)
        if row is None:
            break
        out.append(_replicate(row))
    return out


def _cut_off(row: ExperimentRow) -> bool:
    return row.status == "running" or (row.status == "crash" and row.reason == INTERRUPTED)


def _stopped_on_error(row: ExperimentRow) -> bool:
    """Closed with the error that stopped the study (not a failed run's summary): not taken up."""
    return row.status == "crash" and bool(row.reason) and " runs failed" not in (row.reason or "")


def find_resumable(
    ledger: Ledger,
    workspace: Workspace,
    kind: str,
    arms: Sequence[tuple[str | None, dict]],
    seeds: Sequence[int],
) -> list[Resumed] | None:
    """The experiments of the newest cut-off study of ``kind`` that measured ``arms`` (commit,
    meta as recorded, in order), each with its runs for ``seeds``; None when there is none.

    A study is cut off when one of its experiments is; within it, the arms may also match
    experiments that finished (validate's fixed-budget phase before its time-to-target phase
    was interrupted), so nothing measured runs twice.
    """
    wanted = [(_tree(workspace, commit), _comparable(json.loads(json.dumps(meta, default=str))))
              for commit, meta in arms]  # fmt: skip
    if any(tree is None for tree, _ in wanted):
        return None
    studies: dict[str, list[ExperimentRow]] = {}
    for row in ledger.experiments(kind=kind):
        study = row.meta.get("study") if isinstance(row.meta, dict) else None
        if study:
            studies.setdefault(str(study), []).append(row)
    for rows in sorted(studies.values(), key=lambda rs: -rs[-1].id):
        if not any(_cut_off(r) for r in rows):
            continue
        matched: list[ExperimentRow] = []
        for tree, meta in wanted:
            found = [
                r
                for r in rows
                if r not in matched
                and not (_stopped_on_error(r) and not _cut_off(r))
                and _comparable(r.meta) == meta
                and _tree(workspace, r.commit) == tree
            ]
            if not found:
                break
            matched.append(found[-1])
        else:
            runs = [_prefix(ledger, r.id, seeds) for r in matched]
            if all(found is not None for found in runs):
                return [
                    Resumed(r.id, found) for r, found in zip(matched, runs, strict=True) if found is not None
                ]
    return None


STUDY_KINDS = ("validate", "ablate")


def harness_kind(state_dir: Path) -> str | None:
    """The command of the live harness holding the workspace (``run``, ``validate``...), or None
    when none holds it. A study's experiment still ``running`` in the ledger runs only while a
    harness of its own kind holds the workspace; otherwise its harness was killed (``kill -9``,
    the OOM killer, a lost machine) and the study was interrupted."""
    who = holder(state_dir)
    if who is None:
        return None
    try:
        words = shlex.split(who.command)
    except ValueError:
        return ""
    return next((w for w in words[1:] if not w.startswith("-")), "")


def study_state(rows: Sequence[ExperimentRow], running_kind: str | None) -> str:
    """``running``, ``interrupted`` (cut off: the same command again goes on where it stopped),
    ``failed`` (it stopped on an error it reported) or ``finished``, for one study's experiments.
    ``running_kind``: :func:`harness_kind` of the workspace."""
    if any(r.status == "running" for r in rows):
        return "running" if rows and rows[0].kind == running_kind else "interrupted"
    if any(_cut_off(r) for r in rows):
        return "interrupted"
    if any(_stopped_on_error(r) for r in rows):
        return "failed"
    return "finished"


def studies_of(ledger: Ledger, tag: str) -> dict[str, list[ExperimentRow]]:
    """The validate and ablate studies of research tag ``tag``, ``{study id: its experiments}``,
    oldest first."""
    found: dict[str, list[ExperimentRow]] = {}
    for kind in STUDY_KINDS:
        for row in ledger.experiments(kind=kind):
            meta = row.meta if isinstance(row.meta, dict) else {}
            if tag not in (row.tag, meta.get("research_tag")):
                continue
            found.setdefault(str(meta.get("study") or f"{kind}-{row.id}"), []).append(row)
    return dict(sorted(found.items(), key=lambda item: max(r.id for r in item[1])))


def study_states(ledger: Ledger, tag: str, running_kind: str | None) -> list[dict]:
    """Each study of ``tag`` as ``status --json`` shows it: its id, kind, scale, state, its
    experiments and how many runs they hold, and for an interrupted one what takes it up."""
    out = []
    for study, rows in studies_of(ledger, tag).items():
        meta = rows[0].meta if isinstance(rows[0].meta, dict) else {}
        state = study_state(rows, running_kind)
        item = {
            "study": study,
            "kind": rows[0].kind,
            "scale": meta.get("scale"),
            "mode": meta.get("mode"),
            "state": state,
            "experiments": [r.id for r in rows],
            "runs": sum(len([x for x in ledger.runs(r.id) if x.role is None]) for r in rows),
        }
        if state == "interrupted":
            item["resume"] = resume_hint(rows, ledger.path.parent.parent)
        out.append(item)
    return out


def resume_hint(rows: Sequence[ExperimentRow], root: Path) -> str:
    """What takes an interrupted study up: the same command, with the same options (those its
    experiments recorded named: the scale, time to target)."""
    metas = [r.meta for r in rows if isinstance(r.meta, dict)]
    scale = next((m["scale"] for m in metas if m.get("scale")), None)
    words = f" --scale {shell_word(str(scale))}" if scale else ""
    if any(m.get("mode") == "time_to_target" for m in metas):
        words += " --time-to-target"
    return f"`nightlab {rows[0].kind} {shell_word(root)}{words}` again, with the options it had, goes on where it stopped"
