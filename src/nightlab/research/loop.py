"""The research loop: propose, screen, commit, run, decide, record, repeat.

Read top to bottom, :meth:`ResearchLoop.run` is the whole story; every step it names lives in
its own module (screening, the replicate runner, the policy, the ledger, git). Two rules make
it safe to kill at any moment:

1. The ledger is written before git state moves. An experiment row (with its commit) exists
   before its ref does; a decision is recorded before the research branch advances.
2. Anything unfinished in the ledger is finished first on restart, replicate by replicate, so
   a ``kill -9`` loses at most the replicate that was running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from nightlab.agents.base import Agent
from nightlab.code.changes import code_hash
from nightlab.code.edits import apply_edits
from nightlab.config import Config
from nightlab.errors import EditError, UserError
from nightlab.events import Event, EventSink
from nightlab.research.context import build_context, editable_texts
from nightlab.research.policy import Evidence, Policy, noise_for, review
from nightlab.research.pruning import pruner_for
from nightlab.research.record import Recorder
from nightlab.research.runner import Replicate, ReplicateRunner
from nightlab.research.screen import Refusal, screen
from nightlab.stats import noise_floor
from nightlab.store.ledger import Ledger
from nightlab.store.schema import ExperimentRow
from nightlab.types import Context, Proposal, RunStatus
from nightlab.workspace.git import Workspace


@dataclass
class LoopLimits:
    """When to stop: whichever comes first. ``None`` means no limit."""

    max_experiments: int | None = None
    hours: float | None = None


@dataclass
class LoopOutcome:
    experiments_run: int = 0
    stopped_because: str = ""
    best_id: int | None = None


class ResearchLoop:
    """Coordinates one research session on the branch ``nightlab/<tag>``."""

    def __init__(
        self,
        config: Config,
        workspace: Workspace,
        ledger: Ledger,
        agent: Agent,
        policy: Policy,
        runner: ReplicateRunner,
        tag: str,
        start_commit: str,
        events: EventSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config, self.workspace, self.ledger = config, workspace, ledger
        self.agent, self.policy, self.runner = agent, policy, runner
        self.tag, self.start_commit = tag, start_commit
        self.events = events or EventSink()
        self.should_stop = should_stop or (lambda: False)
        self.recorder = Recorder(config, workspace, ledger, agent, tag, self.events)
        self._started = time.monotonic()
        self._limits = LoopLimits()

    # ------------------------------------------------------------------ the order
    def run(self, limits: LoopLimits) -> LoopOutcome:
        """Propose and decide experiments until a limit, the user or the agent stops it."""
        self._started, self._limits = time.monotonic(), limits
        outcome = LoopOutcome()
        self.prepare()
        prefetched: Future[Proposal | None] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightlab-propose") as pool:
            while (why := self._why_stop()) is None:
                proposal = self._next_proposal(prefetched)
                prefetched = None
                if proposal is None:
                    why = (
                        self.agent.stop_reason() or f"the {self.agent.name} agent has nothing left to propose"
                    )
                    break
                row = self._record(proposal)
                if row is not None:
                    if self._may_prefetch():  # slow agents think about the next one while this trains
                        prefetched = pool.submit(self.agent.propose, self._context())
                    self._finish(row)
                outcome.experiments_run += 1
            if prefetched is not None:
                prefetched.cancel()
        outcome.stopped_because = why
        self.recorder.lessons(self.agent.final_lessons())
        best = self.ledger.incumbent(self.tag)
        outcome.best_id = best.id if best else None
        return outcome

    def prepare(self) -> None:
        """Bring the session to a state where a proposal can run: branch, interrupted work, baseline."""
        self.recorder.reconcile_branch(self.start_commit)
        for row in self.ledger.unfinished(self.tag):  # finish what a crash interrupted
            if row.commit:
                self.workspace.set_experiment_ref(row.id, row.commit)
            self.events.emit(Event("resume", f"resuming experiment {row.id}: {row.description}"))
            self._finish(row)
        if self.ledger.incumbent(self.tag) is None:
            self._baseline()
        for entry in self.ledger.history(self.tag):  # rebuild the agent's state
            self.agent.observe(entry)

    def run_one(self, proposal: Proposal) -> ExperimentRow:
        """Record, run and decide one given proposal (``nightlab try``, the MCP server)."""
        self.prepare()
        row = self._record(proposal)
        if row is not None:
            self._finish(row)
        return self.ledger.experiments(tag=self.tag)[-1]

    # ------------------------------------------------------------------ steps
    def _why_stop(self) -> str | None:
        limits, done = self._limits, self.ledger.candidate_count(self.tag)
        # The cap counts every candidate of this tag, so a resumed session stops where it would have.
        if limits.max_experiments is not None and done >= limits.max_experiments:
            return f"{done} experiments done (--max-experiments {limits.max_experiments})"
        if limits.hours is not None and time.monotonic() - self._started >= limits.hours * 3600:
            return f"time limit of {_duration(limits.hours)} reached"
        if self.should_stop():
            return "stopped by the user"
        crashes = self.ledger.consecutive_failures(self.tag)
        if crashes >= self.config.run.max_consecutive_crashes:
            return (
                f"paused: the last {crashes} experiments all failed; see `nightlab status` and the run logs"
            )
        return None

    def _next_proposal(self, prefetched: Future[Proposal | None] | None) -> Proposal | None:
        """The prefetched proposal if it still applies to the incumbent, else a fresh one."""
        context = self._context()
        if prefetched is not None:
            proposal = prefetched.result()
            if proposal is None or _applies(proposal, context):
                return proposal
            self.events.emit(Event("proposal", "the best changed while the agent was thinking; asking again"))
        return self.agent.propose(context)

    def _record(self, proposal: Proposal) -> ExperimentRow | None:
        """Screen a proposal, then commit it as an experiment, or record why it does not run."""
        self.recorder.lessons(proposal.lessons)
        incumbent = self._incumbent()
        assert incumbent.commit is not None
        files = editable_texts(self.config, self.workspace, incumbent.commit)
        fields = self.recorder.proposal_fields(proposal, incumbent)
        screened = screen(proposal, files, self.config, self.ledger.measured_code(self.tag))
        if isinstance(screened, Refusal):
            self.recorder.refused(fields, screened)
            return None
        return self.recorder.committed(fields, screened, incumbent.commit, proposal.hypothesis)

    def _baseline(self) -> None:
        """The start commit, replicated to measure the noise floor."""
        files = editable_texts(self.config, self.workspace, self.start_commit)
        self._finish(self.recorder.baseline(self.start_commit, code_hash(files)))

    def _finish(self, row: ExperimentRow) -> None:
        """Run replicates of ``row`` until the policy decides, then record and move the branch."""
        while True:
            runs = self.ledger.runs(row.id)
            failed = [r for r in runs if r.status != "ok"]
            if failed:
                reason = self.recorder.failed(row, failed[-1], len(runs))
                if row.kind == "baseline":
                    raise UserError(
                        f"the baseline run failed ({reason}); fix the target so that "
                        f"`{self.config.target.run}` works (log: {failed[-1].run_dir}/run.log), commit "
                        "the fix and run again: until a baseline succeeds, a run starts from your latest commit"
                    )
                return
            values = self.ledger.ok_metrics(row.id)
            if row.kind == "baseline" and len(values) >= self.config.policy.baseline_runs:
                return self.recorder.measured_baseline(row, values)
            if row.kind != "baseline" and values:
                evidence = self._evidence(row, values)
                decision = review(self.policy.decide(evidence), evidence, self.config.policy)
                if decision.action != "confirm":
                    return self.recorder.concluded(row, len(values), decision)
                self.events.emit(Event("confirm", f"#{row.id} {decision.reason}", experiment_id=row.id))
            self._run_replicate(row, len(runs))

    def _run_replicate(self, row: ExperimentRow, replicate: int) -> None:
        assert row.commit is not None  # only committed experiments run
        seed = self.config.run.seed + 1000 * row.id + replicate
        line = f"#{row.id} run {replicate + 1}: {row.description}"
        self.events.emit(Event("run", line, experiment_id=row.id, replicate=replicate))
        pruner = pruner_for(self.config, self.ledger, self.tag, row, replicate)
        rep = self.runner.run(row.id, replicate, row.commit, seed, pruner=pruner)
        if rep.result.status is RunStatus.PRUNED and pruner is not None and pruner.evidence:
            self.recorder.pruned(row, pruner.evidence)
        self.ledger.add_run(row.id, replicate, rep.result, rep.metric, rep.holdout, str(rep.run_dir))
        self.events.emit(Event("run_done", _run_line(row, rep), experiment_id=row.id, replicate=replicate))

    def _evidence(self, row: ExperimentRow, values: list[float]) -> Evidence:
        incumbent = self._incumbent()
        inc_values = self.ledger.ok_metrics(incumbent.id)
        floor = noise_floor(self.ledger.replicate_groups(self.tag))
        sd, df, note = noise_for(floor, values, inc_values, self.config.policy)
        return Evidence(
            candidate=values,
            incumbent=inc_values,
            direction=self.config.metric.direction,
            noise_sd=sd,
            noise_df=df,
            lines_added=row.lines_added or 0,
            lines_removed=row.lines_removed or 0,
            noise_note=note,
            candidate_seconds=self.ledger.seconds_per_run(row.id),
            incumbent_seconds=self.ledger.seconds_per_run(incumbent.id),
        )

    def _may_prefetch(self) -> bool:
        cap = self._limits.max_experiments
        more = cap is None or self.ledger.candidate_count(self.tag) < cap
        return self.config.agent.pipeline and self.agent.pipelined and more

    def _incumbent(self) -> ExperimentRow:
        row = self.ledger.incumbent(self.tag)
        if row is None:
            raise RuntimeError("no incumbent: the baseline has not finished")
        return row

    def _context(self) -> Context:
        limits = self._limits
        done = self.ledger.candidate_count(self.tag)
        left = None if limits.max_experiments is None else max(0, limits.max_experiments - done)
        elapsed = time.monotonic() - self._started
        seconds_left = None if limits.hours is None else limits.hours * 3600 - elapsed
        return build_context(
            self.config, self.workspace, self.ledger, self.tag, self._incumbent(), left, seconds_left
        )


def _applies(proposal: Proposal, context: Context) -> bool:
    """Whether a proposal made against an older incumbent still applies to this one's files."""
    try:
        apply_edits(context.files, proposal.edits, context.editable, frozen=context.frozen)
    except EditError:
        return False
    return True


def _duration(hours: float) -> str:
    return f"{hours:g} h" if hours >= 1 else f"{hours * 60:.3g} min"


def _run_line(row: ExperimentRow, rep: Replicate) -> str:
    r = rep.result
    metric = f"{rep.metric:.6g}" if rep.metric is not None else "-"
    extra = f" ({r.reason})" if r.status.failed and r.reason else ""
    return f"#{row.id} {r.status.value} metric={metric} in {r.total_seconds:.1f}s{extra}"
