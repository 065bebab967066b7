"""The research loop: propose, screen, commit, run, decide, record, repeat; in every slot at once.

Read top to bottom, :meth:`ResearchLoop.run` is the whole story; every step it names lives in
its own module (screening, the dispatcher of replicates to slots, the agent's desk, the policy,
the ledger, git). This thread alone writes the ledger and moves git refs; slots only train.

Three rules make it safe to kill at any moment and to run many experiments at once:

1. The ledger is written before git state moves. An experiment row (with its commit) exists
   before its ref does; a decision is recorded before the research branch advances.
2. Anything unfinished in the ledger is finished first on restart, replicate by replicate, so
   a ``kill -9`` loses at most the replicates that were running.
3. A candidate is judged against the incumbent it was proposed on. If another one was kept
   meanwhile, a candidate that would be kept is re-applied onto the new best (a three-way
   apply) and decided again there as a new experiment; no keep rests on a base that is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from nightlab.agents.base import Agent
from nightlab.code.changes import code_hash
from nightlab.code.edits import apply_edits
from nightlab.config import Config
from nightlab.errors import EditError, UserError
from nightlab.events import Event, EventSink
from nightlab.executor.slots import Slot
from nightlab.research.context import build_context, editable_texts
from nightlab.research.desk import AgentDesk
from nightlab.research.dispatch import Dispatcher, InFlight
from nightlab.research.estimate import REPORT, evidence_for, fresh_roles, remeasured, report_count
from nightlab.research.policy import Policy, review
from nightlab.research.pruning import pruner_for
from nightlab.research.reapply import reapply
from nightlab.research.record import Recorder
from nightlab.research.runner import Replicate, ReplicateRunner
from nightlab.research.screen import Refusal, screen
from nightlab.store.backup import save_role
from nightlab.store.ledger import Ledger
from nightlab.store.schema import ExperimentRow
from nightlab.store.spending import add_unrecorded_cost, as_cost, unrecorded_cost
from nightlab.types import Context, HistoryEntry, Proposal, RunStatus
from nightlab.workspace.git import Workspace

# How long the loop sleeps at most between looks at the stop conditions while runs train.
_TICK_SECONDS = 1.0


@dataclass
class LoopLimits:
    """When to stop: whichever comes first. ``None`` means no limit."""

    max_experiments: int | None = None
    hours: float | None = None
    cap_from: str = ""  # where the cap came from, as the user wrote it (default: --max-experiments N)


@dataclass
class LoopOutcome:
    experiments_run: int = 0
    stopped_because: str = ""
    best_id: int | None = None
    agent_failed: bool = False  # the agent stopped on a failure (its API gone), not a limit


class ResearchLoop:
    """Coordinates one research session on the branch ``nightlab/<tag>``, over ``slots``."""

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
        slots: list[Slot] | None = None,
        wants_quiet: Callable[[], bool] | None = None,
    ) -> None:
        self.config, self.workspace, self.ledger = config, workspace, ledger
        self.agent, self.policy, self.runner = agent, policy, runner
        self.tag, self.start_commit = tag, start_commit
        self.events = events or EventSink()
        # Asked only once every experiment started is decided (it may block: the dashboard's
        # pause); until then ``wants_quiet`` says a pause or stop waits: no new proposal starts.
        self.should_stop = should_stop or (lambda: False)
        self.wants_quiet = wants_quiet or (lambda: False)
        self.slots = slots or [Slot(0)]
        self.desk = AgentDesk(agent)
        # The recorder tells the desk of results; the desk tells the agent, on the agent's thread.
        self.recorder = Recorder(config, workspace, ledger, self.desk, tag, self.events)  # type: ignore[arg-type]
        self._started = time.monotonic()
        self._limits = LoopLimits()
        self._active: dict[int, ExperimentRow] = {}  # experiments not yet decided, by id
        # The replicates each one asks for now, by role (None: deciding; "compare"/"report":
        # a kept change's fresh runs, research/estimate.py).
        self._want: dict[int, list[str | None]] = {}
        self._held: Proposal | None = None  # a proposal that waits for a free slot
        self._confirming: set[int] = set()  # candidates the policy wants confirmed
        self._dropped: list[Proposal] = []  # made and never run: their cost goes on the tag's record

    # ------------------------------------------------------------------ the order
    def run(self, limits: LoopLimits) -> LoopOutcome:
        """Propose and decide experiments until a limit, the user or the agent stops it; with
        several slots, several replicates train at once while the agent proposes the next."""
        self._started, self._limits = time.monotonic(), limits
        outcome = LoopOutcome()
        try:
            why = self._loop(outcome)
        finally:  # also at Ctrl-C: what the agent spent is on record however the night ends
            self._settle_spending([self._held] if self._held is not None else [])
        outcome.stopped_because = why or "nothing left to run"
        best = self.ledger.incumbent(self.tag)
        outcome.best_id = best.id if best else None
        return outcome

    def _loop(self, outcome: LoopOutcome) -> str | None:
        """:meth:`run`'s body; returns why it stopped."""
        why: str | None = None
        with self._dispatching() as slots:
            self._resume()
            while True:
                waiting = any(self._want.get(i) for i in self._active)  # replicates not started yet
                idle = not slots.busy and not self.desk.busy and not waiting
                quiet = not idle and self.wants_quiet()  # a pause or stop waits for the experiments
                why = why or self._why_stop(idle)
                self._start_wanted(slots)  # what undecided experiments want runs even when stopping
                if not quiet and (why is not None or (self.desk.busy and self.agent.pipelined)):
                    self._start_extra(slots)  # slots that would idle: confirm sooner
                if why is None and not quiet:
                    if self._may_ask(slots):  # first: the agent thinks while the held one is recorded
                        self.desk.ask(self._context())
                    if self._take_held(slots):
                        continue
                if not slots.busy and not self.desk.busy and (why is not None or not self._active):
                    break
                self._recorded(slots, slots.wait(_TICK_SECONDS, also=self.desk.asked))
                if self.desk.ready:
                    proposal = self.desk.take()
                    if proposal is None:
                        if why is None:
                            outcome.agent_failed = self.agent.failed()
                        why = (
                            why
                            or self.agent.stop_reason()
                            or f"the {self.agent.name} agent has nothing left to propose"
                        )
                    elif why is None:
                        self._held = proposal
                        outcome.experiments_run += 1
                    else:
                        self._dropped.append(proposal)
        self.desk.close()
        self.recorder.write_tsv()
        self.recorder.lessons(self.agent.final_lessons())
        return why

    def _settle_spending(self, held: list[Proposal]) -> None:
        """Put what the agent spent outside any experiment on the tag's record (store/spending.py)."""
        dropped, self._dropped = self._dropped + held, []
        costs = [p.cost for p in dropped] + [self.desk.unreturned_cost()]
        add_unrecorded_cost(self.ledger, self.tag, [c for c in costs if c], dropped=len(dropped))

    def prepare(self) -> None:
        """Bring the session to a state where a proposal can run: branch, interrupted work
        finished, baseline measured (``nightlab try`` and the MCP server, before they propose)."""
        with self._dispatching() as slots:
            self._resume()
            self._drain(slots)
        self.recorder.write_tsv()

    def run_one(self, proposal: Proposal) -> ExperimentRow:
        """Record, run and decide one given proposal (``nightlab try``, the MCP server)."""
        self.prepare()
        with self._dispatching() as slots:
            row = self._record(proposal)
            if row is not None:
                self._activate(row)
                self._drain(slots)
        self.recorder.write_tsv()
        return self.ledger.experiments(tag=self.tag)[-1]

    def _resume(self) -> None:
        """The branch where the ledger says; interrupted experiments and the baseline made active
        (their replicates then run like any others)."""
        self.recorder.reconcile_branch(self.start_commit)
        for row in self.ledger.unfinished(self.tag):  # finish what a crash interrupted
            if row.commit:
                self.workspace.set_experiment_ref(row.id, row.commit)
            self.events.emit(Event("resume", f"resuming experiment {row.id}: {row.description}"))
            self._activate(row)
        if self.ledger.incumbent(self.tag) is None and not any(
            r.kind == "baseline" for r in self._active.values()
        ):
            self._baseline()
        for entry in self.ledger.history(self.tag):  # rebuild the agent's state
            self.agent.observe(entry)
        if hasattr(self.agent, "inherit_cost"):
            self.agent.inherit_cost(as_cost(unrecorded_cost(self.ledger, self.tag)))

    # ------------------------------------------------------------------ steps
    def _why_stop(self, idle: bool) -> str | None:
        limits, done = self._limits, self.ledger.candidate_count(self.tag)
        # The cap counts every candidate of this tag, so a resumed session stops where it would have.
        if limits.max_experiments is not None and done >= limits.max_experiments:
            noun = "experiment" if done == 1 else "experiments"
            source = limits.cap_from or f"--max-experiments {limits.max_experiments}"
            return f"{done} {noun} done ({source})"
        if limits.hours is not None and time.monotonic() - self._started >= limits.hours * 3600:
            return f"time limit of {_duration(limits.hours)} reached"
        if idle and self.should_stop():
            return "stopped by the user"
        crashes = self.ledger.consecutive_failures(self.tag)
        if crashes >= self.config.run.max_consecutive_crashes:
            return (
                f"paused: the last {crashes} experiments all failed; see `nightlab status` and the run logs"
            )
        return None

    def _may_ask(self, slots: Dispatcher) -> bool:
        """Ask the agent now? Only with a measured incumbent, room under the cap, and a slot that
        will be free for the answer: free now (besides the held proposal's), or soon for a slow
        agent, which thinks while every slot trains."""
        if self.desk.busy or self.ledger.incumbent(self.tag) is None:
            return False
        held = self._held is not None
        cap = self._limits.max_experiments
        if cap is not None and self.ledger.candidate_count(self.tag) + held >= cap:
            return False
        if slots.free > held:
            return True
        return not held and self.config.agent.pipeline and self.agent.pipelined

    def _take_held(self, slots: Dispatcher) -> bool:
        """Record the held proposal once a slot is free; True when it was taken (an experiment,
        or dropped because it no longer applies: the agent is then asked again, not the night ended)."""
        if self._held is None or slots.free == 0:
            return False
        proposal, self._held = self._held, None
        if self.desk.asked_against != self._incumbent().commit and not _applies(proposal, self._context()):
            what = f"'{proposal.description}' no longer applies: the best changed while the agent wrote it"
            self.events.emit(Event("notice", f"{what}; not run, asking again"))
            self._dropped.append(proposal)
            return True
        row = self._record(proposal)
        if row is not None:
            self._activate(row)
        return True

    def _record(self, proposal: Proposal) -> ExperimentRow | None:
        """Screen a proposal, then commit it as an experiment, or record why it does not run."""
        self.recorder.lessons(proposal.lessons)
        incumbent = self._incumbent()
        assert incumbent.commit is not None
        files = editable_texts(self.config, self.workspace, incumbent.commit)
        fields = self.recorder.proposal_fields(proposal, incumbent)
        measured, running = self.ledger.measured_code(self.tag), self.ledger.running_code(self.tag)
        screened = screen(proposal, files, self.config, measured, running)
        if isinstance(screened, Refusal):
            self.recorder.refused(fields, screened)
            return None
        return self.recorder.committed(fields, screened, incumbent.commit, proposal.hypothesis)

    def _baseline(self) -> None:
        """The start commit, replicated to measure the noise floor."""
        files = editable_texts(self.config, self.workspace, self.start_commit)
        self._activate(self.recorder.baseline(self.start_commit, code_hash(files)))

    def _activate(self, row: ExperimentRow) -> None:
        """Put ``row`` among the undecided experiments; what it wants next is judged from its runs."""
        self._active[row.id] = row
        self._judge(row)

    def _start_wanted(self, slots: Dispatcher) -> None:
        """Give free slots the replicates the undecided experiments want, oldest experiment first."""
        for exp_id in sorted(self._active):
            wanted = self._want.get(exp_id) or []
            while slots.free > 0 and wanted:
                self._start(slots, self._active[exp_id], wanted.pop(0))

    def _start_extra(self, slots: Dispatcher) -> None:
        """Extra confirmation replicates in slots nothing else can use now (a slow agent is
        thinking, or no new proposal will come), up to the policy's ``max_runs``."""
        limit = getattr(self.policy, "max_runs", None)
        if not isinstance(limit, int) or self._held is not None:
            return
        for exp_id in sorted(self._confirming):
            row = self._active.get(exp_id)
            while row is not None and slots.free > 0:
                started = len(self.ledger.runs(exp_id)) + len(slots.replicates_of(exp_id))
                if started >= limit:
                    break
                self._start(slots, row, None)

    def _start(self, slots: Dispatcher, row: ExperimentRow, role: str | None = None) -> None:
        taken = {r.replicate for r in self.ledger.runs(row.id)} | set(slots.replicates_of(row.id))
        replicate = next(i for i in range(len(taken) + 1) if i not in taken)
        seed = self.config.run.seed + 1000 * row.id + replicate
        pruner = pruner_for(self.config, self.ledger, self.tag, row, replicate)
        slot = slots.start(row, replicate, seed, pruner, role).slot
        where = f" [slot {slot.index}: {slot.label}]" if len(self.slots) > 1 else ""
        line = f"#{row.id} run {replicate + 1}{where}: {row.description}"
        data = {"slot": slot.index, "device": slot.label}
        self.events.emit(Event("run", line, experiment_id=row.id, replicate=replicate, data=data))

    def _recorded(self, slots: Dispatcher, finished: list[InFlight]) -> None:
        """Write finished replicates to the ledger, then judge each experiment none of whose
        replicates still runs (a decision sees every run that was started)."""
        for flight in finished:
            row, rep = flight.row, flight.future.result()
            if rep.result.status is RunStatus.PRUNED and flight.pruner is not None and flight.pruner.evidence:
                self.recorder.pruned(row, flight.pruner.evidence)
            self.ledger.add_run(
                row.id, flight.replicate, rep.result, rep.metric, rep.holdout, str(rep.run_dir), flight.role
            )
            if flight.role:  # beside the ledger too, for `nightlab recover`
                save_role(rep.run_dir, flight.role)
            retries = rep.result.metrics.get("infra_retries")
            if retries:
                message = f"#{row.id} run {flight.replicate + 1}: re-run after {retries:g} infrastructure failure(s)"
                self.events.emit(Event("notice", message, experiment_id=row.id))
            self.events.emit(
                Event("run_done", _run_line(row, rep), experiment_id=row.id, replicate=flight.replicate)
            )
        for exp_id in sorted({f.row.id for f in finished}):
            if exp_id in self._active and not slots.replicates_of(exp_id):
                self._judge(self._active[exp_id])

    def _judge(self, row: ExperimentRow) -> None:
        """Decide ``row`` from its recorded runs, or set how many more replicates it wants."""
        runs = self.ledger.runs(row.id)
        failed = [r for r in runs if r.status != "ok"]
        if failed:
            reason = self.recorder.failed(row, failed[-1], len(runs))
            self._retire(row)
            if row.kind == "baseline":
                raise UserError(
                    f"the baseline run failed ({reason}); fix the target so that "
                    f"`{self.config.target.run}` works (log: {failed[-1].run_dir}/run.log), commit "
                    "the fix and run again: until a baseline succeeds, a run starts from your latest commit"
                )
            return
        values = self.ledger.decided_metrics(row.id)
        remeasure = self.config.policy.remeasure
        if row.kind == "baseline":  # its replicates, then runs of its own for the value reported
            wanted = [None] * (self._baseline_runs() - len(values)) + [REPORT] * (
                remeasure - report_count(runs)
            )
            if not wanted:
                self.recorder.measured_baseline(
                    row, self.ledger.ok_metrics(row.id), report_count(runs) or None
                )
                return self._retire(row)
            self._want[row.id] = wanted
            return
        if not values:
            self._want[row.id] = [None]
            return
        evidence = evidence_for(self.ledger, self.config, self.tag, row, values, self._incumbent())
        decision = review(self.policy.decide(evidence), evidence, self.config.policy)
        incumbent = self._incumbent()
        if decision.action == "keep" and row.incumbent_id == incumbent.id:
            wanted = fresh_roles(runs, remeasure)
            if wanted:  # fresh runs first: its value must not rest on the runs that selected it
                if not any(r.role for r in runs):
                    self.events.emit(
                        Event("confirm", f"#{row.id} kept; fresh runs to value it", experiment_id=row.id)
                    )
                self._confirming.discard(row.id)
                self._want[row.id] = wanted
                return
        if decision.action == "confirm":
            self.events.emit(Event("confirm", f"#{row.id} {decision.reason}", experiment_id=row.id))
            self._want[row.id] = [None]
            self._confirming.add(row.id)
            return
        if decision.action == "keep" and row.incumbent_id != incumbent.id:
            moved = reapply(self.recorder, self.ledger, self.workspace, self.config, row, incumbent, decision)
            self._retire(row)
            if moved is not None:
                self._activate(moved)
            return
        if decision.action == "keep":
            decision = remeasured(self.ledger, self.config, self.tag, row, decision)
        reported = report_count(runs) or None
        self.recorder.concluded(row, len(self.ledger.ok_metrics(row.id)), decision, estimate_runs=reported)
        self._retire(row)

    def _retire(self, row: ExperimentRow) -> None:
        self._active.pop(row.id, None)
        self._want.pop(row.id, None)
        self._confirming.discard(row.id)

    def _baseline_runs(self) -> int:
        """``[policy] baseline_runs``, up to twice as many where slots would idle beside its last
        round of runs (report runs counted): they cost no time and measure the noise as judged."""
        runs, other = self.config.policy.baseline_runs, self.config.policy.remeasure
        rounds = -(-(runs + other) // len(self.slots))
        return max(runs, min(rounds * len(self.slots) - other, 2 * runs))

    def _drain(self, slots: Dispatcher) -> None:
        """Run what the undecided experiments want until every one is decided (no new proposals)."""
        while self._active or slots.busy:
            self._start_wanted(slots)
            self._recorded(slots, slots.wait(_TICK_SECONDS))

    def _dispatching(self) -> _Dispatching:
        return _Dispatching(self)

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
        context = build_context(
            self.config, self.workspace, self.ledger, self.tag, self._incumbent(), left, seconds_left
        )
        context.running = [
            _running_entry(r) for _, r in sorted(self._active.items()) if r.kind == "candidate"
        ]
        return context


class _Dispatching:
    """The dispatcher for one ``run``: its slots' worktrees made here, on this thread; on any
    exception (Ctrl-C included) the runs in flight are killed before the slots are released,
    and so is what the agent runs for a proposal in progress (a coding CLI)."""

    def __init__(self, loop: ResearchLoop) -> None:
        self.loop = loop
        self.slots: Dispatcher | None = None

    def __enter__(self) -> Dispatcher:
        loop = self.loop
        prepare = getattr(loop.runner, "prepare_slots", None)  # local worktrees; a cluster needs none
        if prepare is not None:
            prepare(loop.slots)
        self.slots = Dispatcher(loop.runner, loop.slots)
        return self.slots

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            self.loop.desk.interrupt()
        if self.slots is None:
            return
        stop = getattr(getattr(self.loop.runner, "executor", None), "stop", None)
        self.slots.close(on_stop=stop if kind is not None else None)


def _running_entry(row: ExperimentRow) -> HistoryEntry:
    """An undecided experiment as agents see it: what it tries, no result yet."""
    return HistoryEntry(
        id=row.id,
        description=row.description or "",
        status="running",
        decision="",
        reason="",
        metric=None,
        spread=None,
        runs=0,
        delta=None,
        diff=row.diff or "",
        hypothesis=row.hypothesis or "",
        meta=row.meta,
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
