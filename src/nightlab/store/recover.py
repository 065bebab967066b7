"""Rebuild a lost or corrupt ledger from what nightlab writes independently of it.

Every finished experiment left its ledger row in ``.nightlab/runs/<id>/experiment.json`` and
every replicate its outcome in ``runs/<id>/<replicate>/replicate.json``
(:mod:`nightlab.store.backup`): from those the ledger comes back as it was, decisions,
reasons, refused proposals, retried baselines and the metric as read on the night included,
whatever nightlab.toml says now. An experiment with replicates but no row of its own had not
finished; it comes back unfinished and the next ``nightlab run`` finishes it.

Workspaces from before those records (or records deleted) fall back on git and the logs: every
experiment that got as far as a commit has a ref ``refs/nightlab/experiments/<id>`` whose
commit message is ``nightlab #N: <description>`` and the hypothesis; the research branch
``nightlab/<tag>`` is the chain of kept commits on top of the tag's start commit; each
replicate's log and ``metrics.json`` are read the way nightlab.toml says today. That is enough
to continue the night; what only the ledger knew is lost and said so (docs/RECOVERY.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from nightlab.config import Config
from nightlab.errors import UserError
from nightlab.metrics import parse_log_metric
from nightlab.store.backup import experiment_dir, load_experiment, load_replicate, load_role
from nightlab.store.export import export_tsv
from nightlab.store.ledger import Ledger
from nightlab.store.schema import LedgerBusy, NewerLedger
from nightlab.types import RunResult, RunStatus
from nightlab.workspace.git import Workspace
from nightlab.workspace.gitcli import run_git

LEDGER_NAME = "ledger.db"
REASON = "rebuilt from git refs and run directories by `nightlab recover`"
_TAIL_CHARS = 4000


@dataclass
class Recovered:
    """What a rebuild found: counts for the one-line summary, and where the old file went."""

    tag: str
    experiments: int
    kept: int
    runs: int
    moved_to: Path | None
    carried: int = 0  # experiments of other tags and side studies copied from a readable ledger


def ledger_holds_experiments(path: Path) -> bool:
    """True when ``path`` opens, passes the ledger's integrity check and records experiments.

    An empty ledger counts as lost: a `nightlab run` after the file was deleted creates one. A
    ledger of a newer schema is refused (:class:`NewerLedger`): it moved aside and was rebuilt
    as this version's, without what the newer one recorded.
    """
    if not path.exists():
        return False
    try:
        ledger = Ledger(path)
    except (NewerLedger, LedgerBusy):
        raise  # not lost: a newer nightlab's ledger (a rebuild would downgrade it), or one held locked
    except UserError:
        return False
    try:
        return bool(ledger.experiments())
    finally:
        ledger.close()


def _move_aside(path: Path) -> Path | None:
    """Keep the damaged ledger (and its -wal/-shm) next to it, never delete it."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        old = Path(str(path) + suffix)
        if old.exists():
            old.rename(Path(str(target) + suffix))
    return target


def _research_tags(workspace: Workspace) -> list[str]:
    out = workspace.git("for-each-ref", "--format=%(refname)", "refs/heads/nightlab/")
    return [line.removeprefix("refs/heads/nightlab/") for line in out.splitlines() if line.strip()]


def _chain(workspace: Workspace, tag: str) -> tuple[str, list[str]]:
    """(start commit, kept commits oldest first) of the research branch of ``tag``."""
    log = workspace.git("log", "--first-parent", "--format=%H %s", f"refs/heads/nightlab/{tag}")
    kept: list[str] = []
    for line in log.splitlines():
        sha, _, subject = line.partition(" ")
        if not subject.startswith("nightlab #"):
            return sha, list(reversed(kept))
        kept.append(sha)
    raise UserError(f"branch nightlab/{tag} has no start commit below its nightlab commits; cannot recover")


def recover(root: Path, config: Config, tag: str | None = None, force: bool = False) -> Recovered:
    """Rebuild ``root/.nightlab/ledger.db`` for one research tag; the old file is moved aside."""
    workspace = Workspace(root)
    path = workspace.state_dir / LEDGER_NAME
    try:
        readable = ledger_holds_experiments(path) if not force else _intact(path)
    except NewerLedger as exc:
        raise UserError(
            f"{exc}; recover would rebuild it without what the newer version recorded "
            "(`--force` does, moving the file aside)"
        ) from None
    if readable and not force:
        raise UserError(
            f"{path} is readable; nothing to recover (`nightlab recover --force` rebuilds it anyway)"
        )
    tags = _research_tags(workspace)
    if not tags and not workspace.experiment_refs() and not _records(workspace.state_dir):
        # A workspace that never ran was told to name a --tag, as if there were several.
        raise UserError(
            f"nothing to recover in {root}: no branch nightlab/*, no refs/nightlab/experiments/* "
            "and no experiment records (`nightlab run` records the first experiments)"
        )
    if tag is None:
        if len(tags) != 1:
            found = ", ".join(tags) or "none"
            raise UserError(
                f"nightlab recover: name the research tag with --tag (branches nightlab/*: {found})"
            )
        tag = tags[0]
    elif tag not in tags:
        raise UserError(f"nightlab recover: no branch nightlab/{tag} in {root}")
    start, kept = _chain(workspace, tag)
    kept_set = set(kept)
    refs = workspace.experiment_refs()
    records = _records(workspace.state_dir)
    if not refs and not records:
        raise UserError(f"no refs/nightlab/experiments/* in {root}: nothing to rebuild the ledger from")
    attempts = _baseline_attempts(workspace, tag, start, refs, records)

    # Built beside the old file and put in its place once whole: a rebuild cut off (Ctrl-C, a
    # full disk) left a partial ledger in place, which the next recover took as readable.
    building = path.with_name(f"{path.name}.rebuilding")
    _remove(building)
    ledger = Ledger(building)
    experiments = runs = 0
    try:
        for exp_id in sorted(set(refs) | set(records)):
            record = records.get(exp_id)
            if record is not None:
                if record.get("tag") != tag and not _study_of(record, tag):
                    continue  # an experiment of another research tag, or its side study
                ledger.add_experiment(**record)
                runs += _rebuild_runs(ledger, workspace, config, exp_id)
                experiments += 1
                continue
            commit = refs[exp_id]
            parent = _parent(workspace, commit)
            if exp_id in attempts:
                kind, base = "baseline", commit
            elif parent in kept_set or parent == start:
                kind, base = "candidate", parent
            else:
                continue  # an experiment of another research tag
            failed = exp_id in attempts and exp_id != max(attempts)  # a later attempt replaced it
            runs += _rebuild_experiment(
                ledger, workspace, config, tag, exp_id, kind, base, commit, kept_set, failed
            )
            experiments += 1
        ledger.set_meta(f"start_commit:{tag}", start)
        ledger.set_meta("current_tag", tag)
        ledger.set_meta("metric_name", config.metric.name)
        ledger.set_meta("direction", config.metric.direction.value)
        ledger.close()
        carried = _carry_over(building, path, tag) if readable else 0
        moved = _move_aside(path)
        os.replace(building, path)
    except BaseException:
        ledger.close()
        _remove(building)
        raise
    with Ledger(path) as ledger:
        export_tsv(ledger, workspace.state_dir / "results.tsv", tag, config.metric.name)
    return Recovered(tag, experiments, len(kept), runs, moved, carried)


def _study_of(record: dict, tag: str) -> bool:
    """Whether a record is a validate or ablate experiment of research tag ``tag`` (side studies
    carry no tag of their own; their meta names the research they measured)."""
    meta = record.get("meta_json")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return False
    return (
        record.get("kind") in ("validate", "ablate")
        and isinstance(meta, dict)
        and meta.get("research_tag") == tag
    )


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _intact(path: Path) -> bool:
    """Whether ``--force`` rebuilds a ledger that reads fine (its other rows are carried over)."""
    try:
        return ledger_holds_experiments(path)
    except NewerLedger:
        return False  # its columns are not this version's: the file moved aside keeps them


def _carry_over(path: Path, old: Path, tag: str) -> int:
    """Copy what is not ``tag``'s from the readable ledger ``old``, as it was: the experiments of
    other research tags and side studies (validate, ablate), their runs, and meta keys the
    rebuild did not set (``tag`` itself is what the rebuild says). ``recover --force`` dropped them: a rebuild reads only
    one tag's records (and side studies recorded before they wrote theirs left none). Returns how many experiments were copied."""
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS old", (str(old),))

        def columns(table: str) -> str:
            names = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
            there = {r[1] for r in conn.execute(f"PRAGMA old.table_info({table})")}
            return ", ".join(f'"{n}"' for n in names if n in there and not (table == "runs" and n == "id"))

        experiments, runs = columns("experiments"), columns("runs")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "CREATE TEMP TABLE carried AS SELECT id FROM old.experiments "
            "WHERE (tag IS NULL OR tag != ?) AND id NOT IN (SELECT id FROM main.experiments)",
            (tag,),
        )
        conn.execute(
            f"INSERT INTO main.experiments ({experiments}) SELECT {experiments} FROM old.experiments "
            "WHERE id IN (SELECT id FROM carried) ORDER BY id"
        )
        conn.execute(
            f"INSERT INTO main.runs ({runs}) SELECT {runs} FROM old.runs "
            "WHERE experiment_id IN (SELECT id FROM carried) ORDER BY id"
        )
        conn.execute("INSERT OR IGNORE INTO main.meta (key, value) SELECT key, value FROM old.meta")
        count = conn.execute("SELECT count(*) FROM carried").fetchone()[0]
        conn.execute("COMMIT")
        return int(count)
    finally:
        conn.close()


def _parent(workspace: Workspace, commit: str) -> str | None:
    out = workspace.git("rev-list", "--parents", "-n", "1", commit).split()
    return out[1] if len(out) > 1 else None


def _records(state_dir: Path) -> dict[int, dict]:
    """Every experiment row recorded beside the ledger, by id (all tags)."""
    runs = state_dir / "runs"
    found: dict[int, dict] = {}
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        if folder.name.isdigit():
            record = load_experiment(folder)
            if record is not None and record["id"] == int(folder.name):
                found[record["id"]] = record
    return found


def _baseline_attempts(
    workspace: Workspace, tag: str, start: str, refs: dict[int, str], records: dict[int, dict]
) -> list[int]:
    """The ids of every baseline ``tag`` measured, failed ones included, oldest first.

    A baseline that failed is measured again, at the same start or, once the user committed a
    fix, at the new HEAD; so besides the start, an earlier commit of the user's (not one of
    nightlab's, not another tag's start) below the start is a baseline attempt too.
    """
    attempts = {i for i, r in records.items() if r.get("tag") == tag and r.get("kind") == "baseline"}
    unknown = {i: c for i, c in refs.items() if i not in records}
    if not unknown:
        return sorted(attempts)
    others = {_chain(workspace, t)[0] for t in _research_tags(workspace) if t != tag}
    shown = workspace.git("show", "-s", "--format=%H %s", *sorted(set(unknown.values())))
    subjects = dict(line.split(" ", 1) if " " in line else (line, "") for line in shown.splitlines())
    for exp_id, commit in unknown.items():
        if commit == start:
            attempts.add(exp_id)
        elif (
            not subjects.get(commit, "").startswith("nightlab #")
            and commit not in others
            and run_git(
                ["merge-base", "--is-ancestor", commit, start], workspace.root, check=False
            ).returncode
            == 0
        ):
            attempts.add(exp_id)
    return sorted(attempts)


def _rebuild_runs(ledger: Ledger, workspace: Workspace, config: Config, exp_id: int) -> int:
    """The replicates of ``exp_id`` into the ledger: as recorded, else read from their logs."""
    folder = experiment_dir(workspace.state_dir, exp_id)
    replicates = (
        sorted((int(p.name), p) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )
    for replicate, run_dir in replicates:
        recorded = load_replicate(run_dir)
        if recorded is not None:
            result, metric, holdout = recorded
        else:
            metric, holdout, tail = _read_run(run_dir, config)
            result = RunResult(
                status=RunStatus.OK if metric is not None else RunStatus.CRASH,
                seed=config.run.seed + 1000 * exp_id + replicate,
                log_tail=tail,
                reason="" if metric is not None else "no metric in the run directory",
            )
        ledger.add_run(exp_id, replicate, result, metric, holdout, str(run_dir), load_role(run_dir))
    return len(replicates)


def _rebuild_experiment(
    ledger: Ledger,
    workspace: Workspace,
    config: Config,
    tag: str,
    exp_id: int,
    kind: str,
    base: str,
    commit: str,
    kept: set[str],
    failed: bool,
) -> int:
    """An experiment with a ref but no recorded row: unfinished, or from before the records."""
    if kind == "baseline":
        description, hypothesis, diff = "baseline", "", ""
    else:
        message = workspace.git("log", "-1", "--format=%B", commit)
        subject, _, body = message.partition("\n")
        description = subject.split(": ", 1)[1] if subject.startswith("nightlab #") else subject
        hypothesis, diff = body.strip(), workspace.diff(base, commit)
    ledger.add_experiment(
        id=exp_id,
        kind=kind,
        tag=tag,
        base_commit=base,
        commit=commit,
        agent="recovered",
        description=description,
        hypothesis=hypothesis,
        diff=diff,
    )
    count = _rebuild_runs(ledger, workspace, config, exp_id)
    folder = experiment_dir(workspace.state_dir, exp_id)
    if any(load_replicate(p) is not None for p in folder.glob("*") if p.name.isdigit()):
        return count  # recorded replicates and no recorded end: it was running; `nightlab run` finishes it
    runs = ledger.runs(exp_id)
    broken = [r for r in runs if r.status != "ok"]
    values = ledger.ok_metrics(exp_id)
    outcome: dict = {"status": "ok", "n_runs": count, **ledger.outcome(exp_id)}
    if broken or failed or not values:
        # Any failed replicate ended the experiment; a baseline measured again had failed.
        status = broken[-1].status if broken else "crash"
        outcome = {
            "status": status,
            "decision": {"invalid": "invalid", "pruned": "discard"}.get(status, "crash"),
            "n_runs": count,
        }
    elif kind == "baseline":
        outcome["decision"] = "baseline"
    else:
        outcome["decision"] = "keep" if commit in kept else "discard"
    ledger.finish_experiment(exp_id, reason=REASON, **outcome)
    return count


def _read_run(run_dir: Path, config: Config) -> tuple[float | None, float | None, str]:
    """The metric, the holdout and the log tail of one replicate, read the way nightlab.toml says."""
    cfg = config.metric
    log_path = run_dir / "run.log"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    data: dict = {}
    metrics_file = run_dir / cfg.file
    if metrics_file.exists():
        try:
            loaded = json.loads(metrics_file.read_text(errors="replace"))
            data = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            data = {}
    if "invalid" in data:
        return None, None, log[-_TAIL_CHARS:]
    if config.target.evaluate and not (run_dir / "eval.log").exists():
        # Without the evaluation's log the metrics file can only be the trainer's: never trust it.
        return None, None, log[-_TAIL_CHARS:]
    if cfg.source == "regex" and cfg.pattern:
        eval_log = run_dir / "eval.log"
        text = eval_log.read_text(errors="replace") if config.target.evaluate and eval_log.exists() else log
        metric = parse_log_metric(text, cfg.pattern)
    else:
        metric = _number(data.get(cfg.name))
    holdout = _number(data.get(cfg.holdout)) if cfg.holdout else None
    return metric, holdout, log[-_TAIL_CHARS:]


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    return None
