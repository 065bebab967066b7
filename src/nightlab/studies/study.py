"""Side studies (``nightlab validate``, ``nightlab ablate``): several commits run with shared seeds.

A side study runs a few *arms* (commits) with the same seeds, interleaved seed by seed
(A B A B ...), so slow drift of the machine (a neighbour's job, thermal throttling) hits every
arm alike instead of biasing whichever ran last. It uses the same executor, the same frozen
check and the same evaluation as the research loop, and records every run in the ledger as
experiments of kind ``validate`` or ``ablate``.

Those experiments carry no research tag (the tag lives in their meta as ``research_tag``), so
they never enter the research history, the noise floor or the resume logic of ``nightlab run``:
a validation at another scale has another noise level and must not pollute the one the keep
decisions rest on. Each run gets its own worktree slot, so a study can run beside a research
session on the same workspace without the two resetting each other's checkouts.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nightlab.config import Config
from nightlab.errors import UserError
from nightlab.formatting import with_status
from nightlab.research.runner import Replicate, ReplicateRunner
from nightlab.research.session import Session
from nightlab.stats import mean, sample_sd
from nightlab.store.backup import save_experiment
from nightlab.studies.resume import INTERRUPTED, find_resumable
from nightlab.types import RunStatus

# The kinds of side study; each runs in its own worktree (``study-<kind>``), so `validate` and
# `ablate` may run beside `nightlab run` on one workspace.
KINDS = ("validate", "ablate")
# Seeds of side-study runs: far from the loop's (run.seed + 1000 * experiment + replicate).
SEED_BASE = 7_000_000
# An arm whose first runs all fail (e.g. out of memory at a larger scale) stops after this many.
MAX_FAILURES_WITHOUT_SUCCESS = 2
# The most seeds a study takes per arm: past it a study runs for weeks (10**20 built a list of
# that many seeds before its first run and never started one).
MAX_SEEDS = 1000


def check_seed_count(seeds: int, why: str) -> None:
    """Refuse a seed count a study cannot use (``why``: what the spread is needed for)."""
    if seeds < 2:
        raise UserError(f"--seeds must be at least 2: {why}")
    if seeds > MAX_SEEDS:
        raise UserError(f"--seeds {seeds} is more than {MAX_SEEDS}: give 2 to {MAX_SEEDS} runs per side")


@dataclass
class Arm:
    """One commit of a study: ``label`` as printed, ``meta`` stored with its ledger experiment."""

    label: str
    commit: str
    description: str
    meta: dict = field(default_factory=dict)
    base_commit: str | None = None
    experiment_id: int | None = None
    replicates: list[Replicate] = field(default_factory=list)
    # Replicates taken up from an interrupted attempt of the same study (studies/resume.py).
    resumed: int = 0

    @property
    def values(self) -> list[float]:
        """The metric of each ok run, in seed order."""
        return [r.metric for r in self.replicates if r.ok and r.metric is not None]

    @property
    def holdouts(self) -> list[float]:
        return [r.holdout for r in self.replicates if r.ok and r.holdout is not None]

    @property
    def failures(self) -> list[Replicate]:
        return [r for r in self.replicates if r.result.status is not RunStatus.OK]

    def failure_summary(self) -> str:
        """'2 of 3 runs failed (oom: CUDA out of memory)', or '' when none did."""
        bad = self.failures
        if not bad:
            return ""
        last = bad[-1].result
        why = with_status(last.status.value, last.reason)
        return f"{len(bad)} of {len(self.replicates)} runs failed ({why})"


RunCallback = Callable[[Arm, int, Replicate], None]


def known_tags(session: Session) -> str:
    """The research tags of the ledger, newest first, for an error about a --tag that has none
    (``ablate --tag typo`` said "pass --tag" to the user who had)."""
    newest = list(reversed(session.ledger.research_tags()))
    return (", ".join(newest[:8]) + (", ..." if len(newest) > 8 else "")) or "none yet"


def study_seeds(config: Config, count: int) -> list[int]:
    """The seeds every arm of a study runs with, the same list for each arm."""
    return [config.run.seed + SEED_BASE + i for i in range(count)]


class SideStudy:
    """Runs arms with shared seeds through one executor and records them in the ledger.

    ``kind`` is the ledger kind (``validate`` or ``ablate``). ``reference`` is the commit whose
    frozen files define the frozen check; every arm must have the same frozen files, or the
    arms would not be measured by the same evaluation.
    """

    def __init__(self, session: Session, kind: str, reference: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        self.session = session
        self.kind = kind
        self.study_id = uuid.uuid4().hex[:10]
        self.reference = reference
        session.check_runnable()
        # The session builds the executor and the frozen check, as for `nightlab run`.
        self._runner = session.runner(f"study-{kind}", reference)
        self.frozen = self._runner.frozen

    def check_same_frozen(self, arms: Sequence[Arm]) -> None:
        """Refuse arms whose frozen files differ from the reference's (another evaluation)."""
        workspace = self.session.workspace
        paths = sorted(self.frozen.expected)
        ref_texts = workspace.read_files(self.reference, paths, missing_ok=True)
        for arm in arms:
            texts = workspace.read_files(arm.commit, paths, missing_ok=True)
            differ = [p for p in paths if texts.get(p) != ref_texts.get(p)]
            if differ:
                raise UserError(
                    f"{arm.label} ({arm.commit[:12]}) has other frozen files than {self.reference[:12]} "
                    f"({', '.join(differ[:3])}): the two would not be measured by the same evaluation; "
                    "compare commits of one research session"
                )

    def runner(self, config: Config, extra_env: dict[str, str] | None = None) -> ReplicateRunner:
        """A replicate runner in this study's worktree, with ``config``'s budget and the extra env."""
        return self._runner.with_config(config, extra_env)

    def _meta(self, arm: Arm, meta: dict) -> dict:
        return {
            "study": self.study_id,
            "research_tag": self.session.tag,
            "label": arm.label,
            **arm.meta,
            **meta,
        }

    def record(self, arm: Arm, meta: dict) -> None:
        """The ledger experiment of ``arm`` (no research tag: see the module docstring)."""
        full_meta = self._meta(arm, meta)
        arm.experiment_id = self.session.ledger.add_experiment(
            kind=self.kind,
            tag=None,
            base_commit=arm.base_commit,
            commit=arm.commit,
            agent=self.kind,
            description=arm.description[:200],
            meta_json=full_meta,
        )

    def run(
        self,
        arms: Sequence[Arm],
        seeds: Sequence[int],
        runner: ReplicateRunner,
        meta: dict | None = None,
        on_run: RunCallback | None = None,
    ) -> None:
        """Run every arm once per seed, interleaved, recording each run as it finishes.

        Interrupted (Ctrl-C), the arms' experiments are closed as crashed with the reason, so
        the ledger never holds a side study that looks as if it were still running; the same
        study asked for again takes them up and runs only the seeds they lack (resume.py).
        """
        ledger = self.session.ledger
        # What the runs run with (budget, command, environment): another one is another study.
        meta = {**(meta or {}), "runs_with": runs_fingerprint(runner)}
        self._take_up_or_record(arms, seeds, meta)
        if on_run is not None:  # what the interrupted attempt measured, said as such
            for i in range(max((arm.resumed for arm in arms), default=0)):
                for arm in arms:
                    if i < arm.resumed:
                        on_run(arm, i, arm.replicates[i])
        try:
            for i, seed in enumerate(seeds):
                for arm in arms:
                    if i < arm.resumed or _given_up(arm):
                        continue
                    assert arm.experiment_id is not None
                    rep = runner.run(arm.experiment_id, i, arm.commit, seed)
                    ledger.add_run(
                        arm.experiment_id, i, rep.result, rep.metric, rep.holdout, str(rep.run_dir)
                    )
                    arm.replicates.append(rep)
                    if on_run is not None:
                        on_run(arm, i, rep)
        except BaseException as exc:
            # A study that found it cannot answer (a UserError) says why; anything else was cut off.
            reason = str(exc) if isinstance(exc, UserError) else INTERRUPTED
            for arm in arms:
                if arm.experiment_id is not None:
                    ledger.finish_experiment(
                        arm.experiment_id, status="crash", reason=reason, n_runs=len(arm.replicates)
                    )
                    self._save(arm.experiment_id)
            raise
        for arm in arms:
            self._finish(arm)

    def _take_up_or_record(self, arms: Sequence[Arm], seeds: Sequence[int], meta: dict) -> None:
        """Each arm's experiment: the one of an interrupted attempt of this study, with its runs
        (re-opened, under this study's id), or a new one."""
        metas = [self._meta(arm, meta) for arm in arms]
        found = find_resumable(
            self.session.ledger,
            self.session.workspace,
            self.kind,
            [(a.commit, m) for a, m in zip(arms, metas, strict=True)],
            seeds,
        )
        taken_ids = {t.experiment_id for t in found or []}
        ledger = self.session.ledger
        for row in ledger.experiments(kind=self.kind):
            # An earlier study of this kind killed with its harness (kill -9) left its experiments
            # "running"; this harness holds the workspace now, so none of them runs: closed as
            # interrupted, they read so while this study runs, and stay resumable.
            if row.status == "running" and row.id not in taken_ids:
                ledger.finish_experiment(
                    row.id, status="crash", reason=INTERRUPTED, n_runs=len(ledger.runs(row.id))
                )
                self._save(row.id)
        for index, arm in enumerate(arms):
            if found is None:
                self.record(arm, meta)
                continue
            taken = found[index]
            arm.experiment_id, arm.replicates = taken.experiment_id, list(taken.replicates)
            arm.resumed = len(taken.replicates)
            self.session.ledger.update_experiment(
                taken.experiment_id, status="running", reason=None, finished_at=None, meta_json=metas[index]
            )

    def _finish(self, arm: Arm) -> None:
        values, holdouts = arm.values, arm.holdouts
        assert arm.experiment_id is not None
        outcome: dict = {"n_runs": len(arm.replicates)}
        if values:
            sd = sample_sd(values)
            outcome.update(
                status="ok",
                metric_mean=mean(values),
                metric_sem=None if sd is None else sd / len(values) ** 0.5,
                holdout_mean=mean(holdouts) if holdouts else None,
                reason=arm.failure_summary() or None,
            )
        else:
            last = arm.failures[-1].result.status.value if arm.failures else "crash"
            outcome.update(status=last, reason=arm.failure_summary() or "no runs")
        self.session.ledger.finish_experiment(arm.experiment_id, **outcome)
        self._save(arm.experiment_id)

    def _save(self, experiment_id: int) -> None:
        """The closed experiment's row beside its runs (``runs/<id>/experiment.json``), as the
        research loop writes its own: a lost ledger's rebuild (``nightlab recover``) keeps the
        study, hours of runs at a larger scale, instead of dropping it."""
        save_experiment(self.session.workspace.state_dir, self.session.ledger.experiment(experiment_id))


def runs_fingerprint(runner: ReplicateRunner) -> str:
    """A short hash of the configuration and extra environment ``runner`` runs with: an
    interrupted study is taken up only by a study whose runs would be the same (a budget
    changed in nightlab.toml since makes another study, whose meta says nothing else of it)."""
    config = getattr(runner, "config", None)
    text = config.model_dump_json() if config is not None else ""
    env = json.dumps(sorted(getattr(runner, "extra_env", {}).items()))
    return hashlib.sha256(f"{text}\n{env}".encode()).hexdigest()[:16]


def _given_up(arm: Arm) -> bool:
    return not arm.values and len(arm.failures) >= MAX_FAILURES_WITHOUT_SUCCESS
