"""Rebuild a lost or corrupt ledger from what nightlab writes independently of it.

Every experiment that got as far as a commit has a ref ``refs/nightlab/experiments/<id>``
whose commit message is ``nightlab #N: <description>`` and the hypothesis; the research branch
``nightlab/<tag>`` is the chain of kept commits on top of the tag's start commit; and every
replicate left ``.nightlab/runs/<id>/<replicate>/`` with its log and, with a JSON metric, its
``metrics.json``. That is enough to continue the night, report it and validate it. What only
the ledger knew (decision reasons, p-values, proposals refused before a commit) is lost and
said so (docs/RECOVERY.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from nightlab.config import Config
from nightlab.errors import UserError
from nightlab.metrics import parse_log_metric
from nightlab.store.export import export_tsv
from nightlab.store.ledger import Ledger
from nightlab.types import RunResult, RunStatus
from nightlab.workspace.git import Workspace

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


def ledger_holds_experiments(path: Path) -> bool:
    """True when ``path`` opens, passes the ledger's integrity check and records experiments.

    An empty ledger counts as lost: a `nightlab run` after the file was deleted creates one.
    """
    if not path.exists():
        return False
    try:
        ledger = Ledger(path)
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
    if ledger_holds_experiments(path) and not force:
        raise UserError(
            f"{path} is readable; nothing to recover (`nightlab recover --force` rebuilds it anyway)"
        )
    tags = _research_tags(workspace)
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
    if not refs:
        raise UserError(f"no refs/nightlab/experiments/* in {root}: nothing to rebuild the ledger from")

    moved = _move_aside(path)
    ledger = Ledger(path)
    experiments = runs = 0
    try:
        for exp_id in sorted(refs):
            commit = refs[exp_id]
            parent = _parent(workspace, commit)
            if commit == start and exp_id == min(i for i, c in refs.items() if c == start):
                kind, base = "baseline", start
            elif parent in kept_set or parent == start:
                kind, base = "candidate", parent
            else:
                continue  # an experiment of another research tag
            runs += _rebuild_experiment(ledger, workspace, config, tag, exp_id, kind, base, commit, kept_set)
            experiments += 1
        ledger.set_meta(f"start_commit:{tag}", start)
        ledger.set_meta("current_tag", tag)
        ledger.set_meta("metric_name", config.metric.name)
        ledger.set_meta("direction", config.metric.direction.value)
        if config.target.setup and (workspace.state_dir / "setup" / "setup.log").exists():
            ledger.set_meta("setup_done", config.target.setup)
        export_tsv(ledger, workspace.state_dir / "results.tsv", tag, config.metric.name)
    finally:
        ledger.close()
    return Recovered(tag, experiments, len(kept), runs, moved)


def _parent(workspace: Workspace, commit: str) -> str | None:
    out = workspace.git("rev-list", "--parents", "-n", "1", commit).split()
    return out[1] if len(out) > 1 else None


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
) -> int:
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
    values, holdouts, count = [], [], 0
    folder = workspace.state_dir / "runs" / f"{exp_id:04d}"
    replicates = (
        sorted((int(p.name), p) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )
    for replicate, run_dir in replicates:
        metric, holdout, tail = _read_run(run_dir, config)
        status = RunStatus.OK if metric is not None else RunStatus.CRASH
        result = RunResult(
            status=status,
            seed=config.run.seed + 1000 * exp_id + replicate,
            log_tail=tail,
            reason="" if metric is not None else "no metric in the run directory",
        )
        ledger.add_run(exp_id, replicate, result, metric, holdout, str(run_dir))
        count += 1
        if metric is not None:
            values.append(metric)
            if holdout is not None:
                holdouts.append(holdout)
    if kind == "baseline":
        decision = "baseline"
    elif commit in kept:
        decision = "keep"
    else:
        decision = "discard" if values else "crash"
    outcome: dict = {"status": "ok" if values else "crash", "decision": decision, "n_runs": count}
    if values:
        mean = sum(values) / len(values)
        outcome["metric_mean"] = mean
        if len(values) > 1:
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            outcome["metric_sem"] = (var / len(values)) ** 0.5
    if holdouts:
        outcome["holdout_mean"] = sum(holdouts) / len(holdouts)
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
