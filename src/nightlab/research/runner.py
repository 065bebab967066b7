"""One replicate of one experiment: check out, train, evaluate, read the metric, audit.

The loop asks for replicates and decides; this module is the only place that knows how a
replicate turns into a :class:`Replicate` (a RunResult plus the metric the policy sees), so the
order "train, audit, then the frozen evaluation in a process other than training's, then the
integrity checks" is written once. That process is a new one (``[target] evaluate``) or, with
``[target] warm_evaluate`` under the sandbox, the progress evaluator that has been running
beside training in a worktree of its own, asked only once training has ended and passed its audit.
"""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nightlab.code.flags import expand_flags
from nightlab.config import Config
from nightlab.executor import sandbox
from nightlab.executor.base import Executor
from nightlab.executor.logfile import read_from, read_log
from nightlab.executor.slots import Slot
from nightlab.metrics import MetricsFileError, non_finite_line, parse_log_metric, read_metrics_json
from nightlab.paths import matches
from nightlab.research.evaldata import data_changed
from nightlab.research.progress import ProgressEvaluator, ProgressReader, progress_every
from nightlab.research.pruning import Pruner
from nightlab.research.rundir import (
    SCORES_VARIABLE,
    drop_inner_link,
    fresh_run_dir,
    merge_scores,
    prepare_scores,
    remove_special,
    write_slot,
)
from nightlab.research.setup import SetupData
from nightlab.safefile import is_regular
from nightlab.store.backup import save_replicate
from nightlab.types import EVAL_LOG, TRAIN_LOG, RunResult, RunSpec, RunStatus
from nightlab.workspace.git import Workspace, run_worktree
from nightlab.workspace.integrity import FrozenCheck, Stamp, changed_entries, tree_stamps


@dataclass
class Replicate:
    """A finished replicate: the executor's result with the metric resolved."""

    result: RunResult
    metric: float | None
    holdout: float | None
    run_dir: Path

    @property
    def ok(self) -> bool:
        """It ended ok with a metric: a value a decision or a comparison may use."""
        return self.result.status is RunStatus.OK and self.metric is not None


PROGRESS_EVAL_LOG = "progress_eval.log"
# Set for a progress evaluator that may be asked for the final evaluation (``progress.final``).
WARM_VARIABLE = "NIGHTLAB_WARM_EVALUATE"
# Recorded (1.0) in a replicate's metrics when the warm progress evaluator did its evaluation.
WARM_METRIC = "eval_warm"
# Declared outputs move here, inside the replicate's run directory.
OUTPUTS_DIR = "outputs"
# Never an output, whatever ``[target] outputs`` says: code the evaluation could import.
NEVER_OUTPUTS = (".py", ".pth", ".pyc", ".so")


class ReplicateRunner:
    """Runs replicates of committed experiments in a worktree, under the frozen check."""

    def __init__(
        self,
        config: Config,
        workspace: Workspace,
        executor: Executor,
        frozen: FrozenCheck,
        worktree: str,
        extra_env: dict[str, str] | None = None,
        setup: SetupData | None = None,
    ) -> None:
        self.config = config
        self.workspace = workspace
        self.executor = executor
        self.frozen = frozen
        self.worktree = worktree
        self.extra_env = dict(extra_env or {})
        self.setup = setup
        self._keep = setup.keep if setup else []

    def with_config(self, config: Config, extra_env: dict[str, str] | None = None) -> ReplicateRunner:
        """The same worktree, executor, frozen check and setup data with another budget or extra
        environment (a side study at another scale, time-to-target's evaluation protocol)."""
        return ReplicateRunner(
            config, self.workspace, self.executor, self.frozen, self.worktree, extra_env, self.setup
        )

    def prepare_slots(self, slots: list[Slot]) -> None:
        """Make each slot's worktrees now, on the caller's thread: ``git worktree add`` from
        several slot threads at once would race on the repository's worktree list."""
        for slot in slots:
            self.workspace.worktree(run_worktree(slot.index))
            if self.config.target.progress_evaluate:
                self.workspace.worktree(evaluator_worktree(run_worktree(slot.index)))

    def run_dir(self, experiment_id: int, replicate: int) -> Path:
        return self.workspace.state_dir / "runs" / f"{experiment_id:04d}" / str(replicate)

    def _spec(
        self,
        command: str,
        cwd: Path,
        run_dir: Path,
        seed: int,
        timeout: float,
        log: str,
        slot: Slot | None = None,
        scores: Path | None = None,
    ) -> RunSpec:
        env = dict(self.config.target.env)
        env.update(self.config.budget.env())
        every = progress_every(self.config)
        if every is not None:  # checkpoints for the pruner and for the incumbent's curve
            env["NIGHTLAB_PROGRESS_EVERY"] = f"{every:g}"
        env.update(self.extra_env)
        if self.config.target.evaluate:
            # The template's train.py then skips its own in-process evaluation.
            env["NIGHTLAB_EVAL_SEPARATE"] = "1"
        # The optional sandbox: no network, writes only to the worktree and the run directory, and
        # for the training process (only) the [target] private files, unix sockets and state gone.
        hide = sandbox.private_files(self.config.target.private, cwd, env) if log == TRAIN_LOG else None
        state = self.workspace.state_dir if hide is not None else None
        # The progress evaluator's scores folder: its to write, hidden from the training process.
        extra = [] if scores is None else [scores]
        if hide is not None:
            hide, extra = hide + extra, []
        return RunSpec(
            command=sandbox.wrap(
                expand_flags(command, cwd), [cwd, run_dir, *extra], self.config.run.sandbox, hide, state
            ),
            cwd=cwd,
            run_dir=run_dir,
            seed=seed,
            timeout=timeout,
            env=env,
            log_name=log,
            allow_env=list(self.config.run.allow_env),
            slot_env=dict(slot.env) if slot is not None else {},
        )

    def run(
        self,
        experiment_id: int,
        replicate: int,
        commit: str,
        seed: int,
        run_dir: Path | None = None,
        pruner: Pruner | None = None,
        slot: Slot | None = None,
    ) -> Replicate:
        """Train and evaluate ``commit`` once; never raises for anything the script does.

        ``run_dir`` replaces the experiment's run directory (``nightlab check`` records nothing);
        ``pruner`` watches the run's progress and may stop it early (recorded as ``pruned``);
        ``slot`` is where it runs (its worktree, devices and cores), for replicates run at once."""
        run_dir = fresh_run_dir(run_dir or self.run_dir(experiment_id, replicate), slot)
        name = run_worktree(slot.index) if slot is not None else self.worktree
        tree = self._checkout(name, commit)
        before = self.frozen.describe(tree)
        if before:  # the commit itself changes a frozen file: the edit check should have caught it
            result = RunResult(status=RunStatus.INVALID, seed=seed, reason=before)
            save_replicate(run_dir, result, None, None)
            return Replicate(result, None, None, run_dir)

        scores = prepare_scores(run_dir) if self.config.target.progress_evaluate else None
        command = expand_flags(self.config.target.run, tree)  # read before the run can change it
        write_slot(run_dir, slot, command)
        spec = self._spec(command, tree, run_dir, seed, self.config.budget.timeout, TRAIN_LOG, slot, scores)
        key = secrets.token_hex(16) if self.config.target.progress_signed else None
        reader = ProgressReader(run_dir, self.config, key, scores)
        if pruner is not None or scores is not None:  # a checkpoint refused ends the run at once
            spec.stop_when = lambda: reader.stop_reason(pruner.should_stop if pruner else None)
        companion, stamps = self._progress_evaluator(name, commit, run_dir, seed, slot, key, scores)
        reader.evaluator = companion  # one that ends before training does stops the run, invalid
        try:
            result = self.executor.run(spec)
        except BaseException:
            if companion is not None:
                companion.finish(self.config.budget.evaluate_timeout)
            raise
        # Special files the run planted go before anything reads the run directory.
        result.seed, result.command, eval_log, planted = seed, command, "", remove_special(run_dir)
        # Audit (and restore) before the evaluation, so nothing the training left behind in the
        # worktree (a patched prepare.py, a sitecustomize.py, a .pth or .pyc) reaches it.
        problem = self._audit(tree, run_dir) or planted or reader.stop_reason(None)
        evaluated_in = tree
        if not problem and result.status is RunStatus.OK and self.config.target.evaluate:
            warm = self._evaluate_warm(companion, run_dir, result) if companion is not None else None
            if warm is not None:
                (result, eval_log), evaluated_in = warm, companion.tree  # type: ignore[union-attr]
            else:
                tail = self._finish(companion)
                result, eval_log = self._evaluate(tree, run_dir, seed, result, slot)
                result.total_seconds += tail
            problem = self._audit(evaluated_in, run_dir)
        else:
            result.total_seconds += self._finish(companion)
        if companion is not None and stamps is not None and not problem:
            changed = changed_entries(stamps, tree_stamps(companion.tree))
            if changed:  # even a write undone: its code may have been swapped while it loaded
                shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
                problem = f"the progress evaluator's worktree changed during the run: {shown}"
        points = reader.points()  # the evaluator has scored them all
        result.progress = [p.to_dict() for p in points]
        if reader.refused and not problem:  # a checkpoint failed the final export's checks
            problem = f"progress evaluator: {reader.refused}"
        if reader.forged and not problem:
            problem = (
                f"{reader.forged} progress point(s) the frozen evaluator did not sign (forged by the run)"
            )
        if result.status is RunStatus.PRUNED and result.training_seconds is None:
            # Stopped before its summary: it trained at least until its last checkpoint said.
            trained = [p.seconds for p in points if p.seconds is not None]
            result.training_seconds = max(trained) if trained else None
        if problem:
            result.status = RunStatus.INVALID
            result.reason = problem
        merge_scores(run_dir)  # the evaluator has ended: its scores and log join the run's record
        metric, holdout = self._read_metric(run_dir, result, eval_log)
        drift = data_changed(
            self.workspace.state_dir, self.frozen.expected, run_dir / self.config.metric.file
        )
        if drift and metric is not None:  # scored on other val or holdout data than the evaluations before
            result.status, result.reason, metric, holdout = RunStatus.INVALID, drift, None, None
        save_replicate(run_dir, result, metric, holdout)  # what `nightlab recover` reads back
        return Replicate(result, metric, holdout, run_dir)

    def _finish(self, companion: ProgressEvaluator | None) -> float:
        """Let the progress evaluator score what is left and end; the seconds that took, which
        are the replicate's too (a warm evaluator's are in its evaluation's)."""
        if companion is None:
            return 0.0
        started = time.perf_counter()
        companion.finish(self.config.budget.evaluate_timeout)
        return time.perf_counter() - started

    def _checkout(self, name: str, commit: str) -> Path:
        """Worktree ``name`` holding exactly ``commit`` (and the setup data), ready to run in."""
        tree = self.workspace.worktree(name)
        self.workspace.checkout(tree, commit, keep=self._keep)
        if self.setup is not None:
            self.setup.link_into(tree)
        return tree

    def _progress_evaluator(
        self,
        name: str,
        commit: str,
        run_dir: Path,
        seed: int,
        slot: Slot | None,
        key: str | None = None,
        scores: Path | None = None,
    ) -> tuple[ProgressEvaluator | None, dict[str, Stamp] | None]:
        """The frozen progress evaluator beside the training process, when the target has one,
        and (when it may do the final evaluation) the stamps of its worktree.

        It runs in a worktree of its own (the same commit). Under the sandbox the training
        process can write there only where the workspace lies in scratch space (``/tmp``); and
        for a warm evaluator, whose verdict is the final metric, any write there during the run
        (even one undone before the audit, to swap its code while it loaded) shows in the
        worktree's stamps and makes the run invalid. Its Python writes no bytecode there. Its log
        and its scores go to ``scores``, beside the run directory, which training cannot see.
        """
        command = self.config.target.progress_evaluate
        if not command:
            return None, None
        tree = self._checkout(evaluator_worktree(name), commit)
        if self.frozen.describe(tree):
            return None, None  # never run an evaluator whose files are not the frozen ones
        warm = self._warm_possible()
        # Training, the checkpoints left after it, and (warm) the final evaluation.
        timeout = self.config.budget.timeout + self.config.budget.evaluate_timeout * (2 if warm else 1)
        spec = self._spec(command, tree, run_dir, seed, timeout, PROGRESS_EVAL_LOG, slot, scores)
        if scores is not None:  # NIGHTLAB_RUN_DIR stays the run's: the checkpoints and markers
            spec.run_dir, spec.env["NIGHTLAB_RUN_DIR"] = scores, str(run_dir.resolve())
            spec.env[SCORES_VARIABLE] = str(scores.resolve())
        if key is not None:  # the evaluator's only: the training process's spec never has it
            spec.env["NIGHTLAB_PROGRESS_KEY"] = key
        stamps = None
        if warm:
            spec.env[WARM_VARIABLE] = "1"
            spec.env["PYTHONDONTWRITEBYTECODE"] = "1"
            stamps = tree_stamps(tree)
        return ProgressEvaluator(spec, warm=warm, run_dir=run_dir), stamps

    def _warm_possible(self) -> bool:
        """The final evaluation may be left to the progress evaluator: asked for, and the sandbox
        keeps the training process out of the evaluator's worktree and process (Landlock). The
        config's validation has made sure ``evaluate`` and ``progress_evaluate`` are set."""
        return self.config.target.warm_evaluate and sandbox.check(self.config.run.sandbox) is not None

    def _evaluate_warm(
        self, companion: ProgressEvaluator, run_dir: Path, train: RunResult
    ) -> tuple[RunResult, str] | None:
        """The final evaluation by the progress evaluator, which has been running (imports done,
        data loaded) since training started; None when it cannot (not asked for, no longer
        running, or it ended without a metrics file): the caller then runs ``evaluate`` itself.

        The request (``progress.final``) is made only now, after the training process has ended
        and its worktree has passed the audit. The evaluator's output from the request on
        becomes ``eval.log``, which the harness writes (nothing the run left under that name
        survives); the verdict is the metrics file written after the request.
        """
        metrics_file = run_dir / self.config.metric.file
        if not companion.warm or not companion.running or metrics_file.exists():
            return None
        eval_log = run_dir / EVAL_LOG
        eval_log.unlink(missing_ok=True)  # the dashboard shows it from now on: "evaluating"
        eval_log.write_text(f"# the final evaluation, by the warm progress evaluator ({PROGRESS_EVAL_LOG})\n")
        log = Path(companion.spec.run_dir) / PROGRESS_EVAL_LOG  # the scores folder
        offset = log.stat().st_size if log.exists() else 0
        started = time.perf_counter()
        ev = companion.finish(self.config.budget.evaluate_timeout, final=True)
        seconds = time.perf_counter() - started
        if ev is None or not metrics_file.exists():
            metrics_file.unlink(missing_ok=True)  # half a verdict, if it was stopped while writing
            eval_log.unlink(missing_ok=True)  # `evaluate` writes its own
            return None
        text = read_from(log, offset)
        with eval_log.open("a") as handle:
            handle.write(text)
        ev.total_seconds = seconds
        merged = self._merge_evaluation(train, ev, seed=train.seed)
        merged.metrics[WARM_METRIC] = 1.0
        return merged, text

    def _evaluate(
        self, tree: Path, run_dir: Path, seed: int, train: RunResult, slot: Slot | None
    ) -> tuple[RunResult, str]:
        metrics_file = run_dir / self.config.metric.file
        if metrics_file.exists():
            train.status = RunStatus.INVALID
            train.reason = f"the training process wrote {self.config.metric.file}; only the evaluation may"
            return train, ""
        spec = self._spec(
            self.config.target.evaluate or "",
            tree,
            run_dir,
            seed,
            self.config.budget.evaluate_timeout,
            EVAL_LOG,
            slot,
        )
        ev = self.executor.run(spec)
        return self._merge_evaluation(train, ev, seed), read_log(run_dir / EVAL_LOG)

    @staticmethod
    def _merge_evaluation(train: RunResult, ev: RunResult, seed: int | None) -> RunResult:
        """The replicate's result: training's, with the evaluation's status, metrics and time."""
        merged = RunResult(
            status=ev.status,
            metrics={**train.metrics, **ev.metrics},
            training_seconds=train.training_seconds,
            total_seconds=train.total_seconds + ev.total_seconds,
            peak_memory_mb=train.peak_memory_mb,
            log_tail=train.log_tail if ev.status is RunStatus.OK else ev.log_tail,
            seed=seed,
            exit_code=ev.exit_code,
            reason=ev.reason if ev.status.failed else train.reason,
            log_path=train.log_path,
            progress=train.progress,  # the curve the pruner judges later candidates against
        )
        if ev.status.failed and not merged.reason:
            merged.reason = f"evaluation failed ({ev.status.value})"
        if ev.status is not RunStatus.OK:
            merged.reason = f"evaluation: {merged.reason}"
        merged.metrics["eval_total_seconds"] = ev.total_seconds
        return merged

    def _audit(self, tree: Path, run_dir: Path) -> str | None:
        """What the run did to its worktree: declared outputs move to the run directory; anything
        else it changed is undone and makes the run invalid, as does a change to setup data."""
        self._collect_outputs(tree, run_dir)
        frozen = self.frozen.describe(tree)
        touched = self.workspace.modified_tracked_files(tree, allowed=self._keep)
        self.workspace.restore(tree, keep=self._keep)  # always: a planted .pyc is not "touched"
        if frozen:
            return frozen
        changed = self.setup.changed() if self.setup is not None else []
        if changed:
            return (
                "the run changed data the setup command made: "
                + ", ".join(changed[:5])
                + " (setup data is read-only to runs: write new files to $NIGHTLAB_RUN_DIR instead)"
            )
        if touched:
            return "the run changed files outside its run directory: " + _undeclared(touched)
        return None

    def _collect_outputs(self, tree: Path, run_dir: Path) -> None:
        """Move the files a run may write in its worktree (``[target] outputs``) into
        ``run_dir/outputs/``. Python files never count as outputs: the evaluation must not be
        able to import something a run wrote."""
        outputs = self.config.target.outputs
        if not outputs:
            return
        for rel in self.workspace.new_files(tree):
            if matches(rel, outputs) and not rel.endswith(NEVER_OUTPUTS) and not matches(rel, self._keep):
                if not is_regular(tree / rel):  # a link inside goes; another, or a FIFO, the audit reports
                    drop_inner_link(tree, rel)
                    continue
                destination = run_dir / OUTPUTS_DIR / rel
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(tree / rel), destination)

    def _read_metric(
        self, run_dir: Path, result: RunResult, eval_log: str
    ) -> tuple[float | None, float | None]:
        cfg = self.config.metric
        metrics: dict[str, float] = {}
        if cfg.source == "json":
            path = run_dir / cfg.file
            if path.exists():
                raw = read_log(path)
                if '"invalid"' in raw and result.status is not RunStatus.INVALID:
                    result.status = RunStatus.INVALID
                    result.reason = _invalid_reason(raw) or result.reason
                try:
                    metrics = read_metrics_json(path)
                except MetricsFileError:  # a malformed file is the script's fault, not the harness's
                    metrics = {}
        result.metrics.update(metrics)
        value: float | None = metrics.get(cfg.name)
        if cfg.source == "regex" and cfg.pattern:
            log = read_log(run_dir / TRAIN_LOG)
            # With an evaluate step, only the evaluation's own output counts, never the trainer's.
            value = parse_log_metric(eval_log if self.config.target.evaluate else log, cfg.pattern)
        holdout = metrics.get(cfg.holdout) if cfg.holdout else None
        if result.status is RunStatus.OK and value is None and cfg.source == "regex":
            said = non_finite_line(eval_log if self.config.target.evaluate else log, cfg.name, cfg.pattern)
            if said is not None:  # the pattern wants a number; the run printed nan
                result.status = RunStatus.NAN
                result.reason = f"metric '{cfg.name}' is NaN (the log says: {said[:120]})"
                return None, None
        if result.status is RunStatus.OK and value is None:
            result.status = RunStatus.CRASH
            if cfg.source == "json":
                path = run_dir / cfg.file
                if not path.exists():
                    where = f"{path}: the run wrote no such file ([metric] file)"
                elif metrics:
                    where = f"{path}, which holds {', '.join(sorted(metrics)[:12])} ([metric] name)"
                else:
                    where = f"{path}: no number in it (a JSON object of numbers is expected)"
            else:  # the log the pattern was run over, and the pattern, so the mismatch can be seen
                log_name = EVAL_LOG if self.config.target.evaluate else TRAIN_LOG
                where = f"{run_dir / log_name}: [metric] pattern {cfg.pattern!r} matched no line"
            result.reason = f"metric '{cfg.name}' not found in {where}"
        if result.status is not RunStatus.OK:
            return None, None
        if value is not None and value != value:  # NaN metric
            result.status = RunStatus.NAN
            result.reason = f"metric '{cfg.name}' is NaN"
            return None, None
        return value, holdout


def _invalid_reason(raw: str) -> str | None:
    import json

    try:
        data = json.loads(raw)
    except ValueError:
        return None
    reason = data.get("invalid") if isinstance(data, dict) else None
    return f"evaluation: {reason}" if reason else None


def _undeclared(paths: list[str]) -> str:
    """The paths, and how to declare them as outputs when they are new files a run may write."""
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    new = [p for p in paths if not p.endswith(NEVER_OUTPUTS)]
    if not new:
        return shown
    top = new[0].split("/", 1)
    glob = f"{top[0]}/**" if len(top) > 1 else top[0]
    return (
        f"{shown} (write under $NIGHTLAB_RUN_DIR, or declare outputs the run may write: "
        f'[target] outputs = ["{glob}"])'
    )


def evaluator_worktree(name: str) -> str:
    """The worktree the progress evaluator of worktree ``name``'s runs works in."""
    return f"{name}-eval"
