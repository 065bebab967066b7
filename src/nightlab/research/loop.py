"""The research loop: propose, commit, run, decide, record, repeat.

Read top to bottom, :meth:`ResearchLoop.run` is the whole story. Two rules make it safe to
kill at any moment:

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
from nightlab.code.audit import audit_change
from nightlab.code.changes import classify_change, line_counts
from nightlab.code.edits import apply_edits, python_syntax_error
from nightlab.config import Config
from nightlab.errors import EditError, UserError
from nightlab.events import Event, EventSink
from nightlab.paths import editable_files, select
from nightlab.research.policy import Decision, Policy
from nightlab.research.runner import Replicate, ReplicateRunner
from nightlab.stats import pooled_sd
from nightlab.store.ledger import ExperimentRow, Ledger
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
        self.config = config
        self.workspace = workspace
        self.ledger = ledger
        self.agent = agent
        self.policy = policy
        self.runner = runner
        self.tag = tag
        self.start_commit = start_commit
        self.events = events or EventSink()
        self.should_stop = should_stop or (lambda: False)
        self.direction = config.metric.direction

    # ------------------------------------------------------------------ the loop
    def run(self, limits: LoopLimits) -> LoopOutcome:
        outcome = LoopOutcome()
        started = time.monotonic()
        self.prepare()
        prefetched: Future[Proposal | None] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightlab-propose") as pool:
            while True:
                done = self._count_candidates()
                # The cap counts every candidate of this tag, so a resumed session stops where it would have.
                if limits.max_experiments is not None and done >= limits.max_experiments:
                    outcome.stopped_because = (
                        f"{done} experiments done (--max-experiments {limits.max_experiments})"
                    )
                    break
                if limits.hours is not None and time.monotonic() - started >= limits.hours * 3600:
                    outcome.stopped_because = f"time limit of {_duration(limits.hours)} reached"
                    break
                if self.should_stop():
                    outcome.stopped_because = "stopped by the user"
                    break
                crashes = self._consecutive_failures()
                if crashes >= self.config.run.max_consecutive_crashes:
                    outcome.stopped_because = f"paused: the last {crashes} experiments all failed; see `nightlab status` and the run logs"
                    break
                proposal = self._next_proposal(prefetched, limits, started)
                prefetched = None
                if proposal is None:
                    why = getattr(self.agent, "stop_reason", None)
                    outcome.stopped_because = (
                        why or f"the {self.agent.name} agent has nothing left to propose"
                    )
                    break
                self._save_lessons(proposal)
                row = self._record_proposal(proposal, done + 1)
                if row is not None:
                    if getattr(self.agent, "pipelined", False) and done + 1 < (
                        limits.max_experiments or 1 << 30
                    ):
                        # Slow agents (LLMs) think about the next experiment while this one trains.
                        context = self._context(limits, started)
                        prefetched = pool.submit(self.agent.propose, context)
                    self._finish(row)
                outcome.experiments_run += 1
            if prefetched is not None:
                prefetched.cancel()
        flush = getattr(self.agent, "flush_lessons", None)
        if callable(flush):
            self._save_lessons(Proposal(description="", edits=[], meta={"lessons": flush() or {}}))
        best = self.ledger.incumbent(self.tag)
        outcome.best_id = best.id if best else None
        return outcome

    def prepare(self) -> None:
        """Bring the session to a state where a proposal can run: branch, interrupted work, baseline."""
        self._reconcile_branch()
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
        self._save_lessons(proposal)
        self._record_proposal(proposal, self._count_candidates() + 1)
        latest = self.ledger.experiments(tag=self.tag)[-1]
        if latest.status == "running":
            self._finish(latest)
        return self.ledger.experiment(latest.id)

    def _next_proposal(
        self, prefetched: Future[Proposal | None] | None, limits: LoopLimits, started: float
    ) -> Proposal | None:
        """The prefetched proposal if it still applies to the incumbent, else a fresh one."""
        context = self._context(limits, started)
        if prefetched is not None:
            proposal = prefetched.result()
            if proposal is None or self._applies(proposal, context.files):
                return proposal
            self.events.emit(Event("proposal", "the best changed while the agent was thinking; asking again"))
        return self.agent.propose(context)

    def _applies(self, proposal: Proposal, files: dict[str, str]) -> bool:
        try:
            apply_edits(files, proposal.edits, self.config.target.editable, frozen=self.config.target.frozen)
        except EditError:
            return False
        return True

    def _save_lessons(self, proposal: Proposal) -> None:
        """Agents may attach one-line lessons about earlier experiments; the ledger keeps them."""
        lessons = proposal.meta.get("lessons") if isinstance(proposal.meta, dict) else None
        for exp_id, text in (lessons or {}).items():
            try:
                self.ledger.set_lesson(int(exp_id), str(text))
            except (KeyError, ValueError):
                continue

    # ------------------------------------------------------------------ steps
    def _baseline(self) -> None:
        """The start commit, replicated to measure the noise floor."""
        diff = ""
        exp_id = self.ledger.add_experiment(
            kind="baseline",
            tag=self.tag,
            base_commit=self.start_commit,
            commit=self.start_commit,
            agent="baseline",
            description="baseline",
            hypothesis="",
            diff=diff,
        )
        self.workspace.set_experiment_ref(exp_id, self.start_commit)
        self._finish(self.ledger.experiment(exp_id))

    def _record_proposal(self, proposal: Proposal, number: int) -> ExperimentRow | None:
        """Turn a proposal into a committed experiment, or record why it cannot be run."""
        incumbent = self._incumbent()
        editable = self._editable_paths(incumbent.commit)
        files = self.workspace.read_files(incumbent.commit, editable)
        common = dict(
            tag=self.tag,
            base_commit=incumbent.commit,
            agent=self.agent.name,
            description=proposal.description.strip().splitlines()[0][:200]
            if proposal.description.strip()
            else "(no description)",
            hypothesis=proposal.hypothesis,
            proposal_json=proposal.to_dict(),
            meta_json=proposal.meta,
            incumbent_id=incumbent.id,
            cost_json=_cost(proposal.meta),
        )
        if isinstance(proposal.meta, dict) and proposal.meta.get("invalid"):
            return self._record_unrun(
                common, "invalid", "invalid", f"proposal refused: {proposal.meta['invalid']}"
            )
        try:
            changed = apply_edits(
                files, proposal.edits, self.config.target.editable, frozen=self.config.target.frozen
            )
            for path, text in changed.items():
                problem = python_syntax_error(path, text) if path.endswith(".py") else None
                if problem:
                    raise EditError(problem)
        except EditError as exc:
            return self._record_unrun(common, "invalid", "invalid", f"edit refused: {exc}")
        flags = audit_change(files, changed, self.config) if self.config.audit.mode != "off" else []
        if flags and self.config.audit.mode == "block":
            return self._record_unrun(common, "invalid", "invalid", "audit: " + "; ".join(flags))
        if flags:  # mode "mark": it runs, and the ledger keeps why it was flagged
            meta = proposal.meta if isinstance(proposal.meta, dict) else {}
            common["meta_json"] = {**meta, "audit": flags}

        new_files = {**files, **changed}
        kind = classify_change(files, new_files)
        if kind != "code":
            why = {
                "none": "the edits change nothing",
                "cosmetic": "only comments or whitespace change",
                "seed": "only the seed changes",
            }[kind]
            return self._record_unrun(
                common, "skipped", "discard", f"{why}: cannot change the result, not run"
            )

        added, removed = line_counts(files, new_files)
        message = f"nightlab #{number}: {common['description']}\n\n{proposal.hypothesis}".strip()
        commit = self.workspace.commit_files(incumbent.commit, changed, message)
        diff = self.workspace.diff(incumbent.commit, commit)
        exp_id = self.ledger.add_experiment(
            kind="candidate", commit=commit, diff=diff, lines_added=added, lines_removed=removed, **common
        )
        self.workspace.set_experiment_ref(exp_id, commit)  # after the ledger row: rule 1
        self.events.emit(Event("proposal", f"#{exp_id} {common['description']}", experiment_id=exp_id))
        return self.ledger.experiment(exp_id)

    def _record_unrun(self, common: dict, status: str, decision: str, reason: str) -> None:
        # One insert with the outcome: a kill -9 between two writes would leave a "running" row
        # without a commit, which the next `nightlab run` would then try to run.
        exp_id = self.ledger.add_experiment(
            kind="candidate",
            commit=None,
            diff="",
            status=status,
            decision=decision,
            reason=reason,
            n_runs=0,
            **common,
        )
        self.ledger.finish_experiment(exp_id)  # the finish time
        row = self.ledger.experiment(exp_id)
        self._emit_decision(exp_id, f"#{exp_id} {row.description}: {reason}", status)
        self._after(exp_id)
        return None

    def _finish(self, row: ExperimentRow) -> None:
        """Run replicates of ``row`` until the policy decides, then record and move the branch."""
        is_baseline = row.kind == "baseline"
        replicates = [r for r in self.ledger.runs(row.id)]
        while True:
            values = [r.metric for r in replicates if r.status == "ok" and r.metric is not None]
            failed = [r for r in replicates if r.status != "ok"]
            if failed:
                self._conclude_failed(row, failed[-1], len(replicates))
                return
            if is_baseline:
                if len(values) >= self.config.policy.baseline_runs:
                    self._conclude_baseline(row, values)
                    return
            elif values:
                decision = self._decide(row, values)
                if decision.action != "confirm":
                    self._conclude(row, values, decision)
                    return
                self.events.emit(Event("confirm", f"#{row.id} {decision.reason}", experiment_id=row.id))
            replicates.append(self._run_replicate(row, len(replicates)))

    def _run_replicate(self, row: ExperimentRow, replicate: int):
        seed = self.config.run.seed + 1000 * row.id + replicate
        self.events.emit(
            Event(
                "run",
                f"#{row.id} run {replicate + 1}: {row.description}",
                experiment_id=row.id,
                replicate=replicate,
            )
        )
        rep: Replicate = self.runner.run(row.id, replicate, row.commit, seed)
        self.ledger.add_run(row.id, replicate, rep.result, rep.metric, rep.holdout, str(rep.run_dir))
        self.events.emit(Event("run_done", _run_line(row, rep), experiment_id=row.id, replicate=replicate))
        return self.ledger.runs(row.id)[-1]

    def _decide(self, row: ExperimentRow, values: list[float]) -> Decision:
        incumbent = self._incumbent()
        inc_values = [
            r.metric for r in self.ledger.runs(incumbent.id) if r.status == "ok" and r.metric is not None
        ]
        sd, df = pooled_sd(self.ledger.replicate_groups(self.tag))
        return self.policy.decide(
            values,
            inc_values,
            sd,
            self.direction,
            lines_added=row.lines_added or 0,
            lines_removed=row.lines_removed or 0,
            noise_df=df,
        )

    def _conclude(self, row: ExperimentRow, values: list[float], decision: Decision) -> None:
        action = "keep" if decision.action == "keep" else "discard"
        self.ledger.finish_experiment(
            row.id,
            status="ok",
            decision=action,
            reason=decision.reason,
            n_runs=len(values),
            delta=decision.delta,
            delta_se=decision.delta_se,
            p_value=decision.p_value,
            **self._means(row.id),
        )
        if action == "keep":  # after the ledger: rule 1
            old = self.workspace.branch_commit(self.tag)
            self.workspace.advance_branch(self.tag, row.commit, old)
        self._emit_decision(row.id, f"#{row.id} {row.description}: {decision.reason}", action)
        self._after(row.id)

    def _conclude_baseline(self, row: ExperimentRow, values: list[float]) -> None:
        mean = sum(values) / len(values)
        noise = None
        if len(values) > 1:
            noise = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        spread = f", run-to-run sd {noise:.4g}" if noise is not None else ""
        reason = f"baseline {mean:.6g}{spread} over {len(values)} runs"
        self.ledger.finish_experiment(
            row.id, status="ok", decision="baseline", reason=reason, n_runs=len(values), **self._means(row.id)
        )
        self._emit_decision(row.id, reason, "baseline")
        self._after(row.id)

    def _conclude_failed(self, row: ExperimentRow, failed, n_runs: int) -> None:
        status = failed.status
        decision = "invalid" if status == RunStatus.INVALID.value else "crash"
        reason = f"{status}: {failed.reason}" if failed.reason else status
        self.ledger.finish_experiment(row.id, status=status, decision=decision, reason=reason, n_runs=n_runs)
        self._emit_decision(row.id, f"#{row.id} {row.description}: {reason}", decision)
        if row.kind == "baseline":
            raise UserError(
                f"the baseline run failed ({reason}); fix the target so that `{self.config.target.run}` "
                f"works (log: {failed.run_dir}/run.log)"
            )
        self._after(row.id)

    def _after(self, exp_id: int) -> None:
        """After every finished experiment: results.tsv, and the agent hears about it."""
        self.ledger.export_tsv(self.workspace.state_dir / "results.tsv", self.tag, self.config.metric.name)
        for entry in self.ledger.history(self.tag):
            if entry.id == exp_id:
                self.agent.observe(entry)
                self.events.emit(Event("finished", entry.description, experiment_id=exp_id))
                break

    # ------------------------------------------------------------------ helpers
    def _emit_decision(self, exp_id: int, message: str, outcome: str) -> None:
        best = self.ledger.incumbent(self.tag)
        data = {"outcome": outcome, "best": best.metric_mean if best else None}
        self.events.emit(Event("decision", message, experiment_id=exp_id, data=data))

    def _means(self, exp_id: int) -> dict:
        runs = [r for r in self.ledger.runs(exp_id) if r.status == "ok" and r.metric is not None]
        if not runs:
            return {}
        values = [r.metric for r in runs]
        mean = sum(values) / len(values)
        sem = None
        if len(values) > 1:
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            sem = (var / len(values)) ** 0.5
        holdouts = [r.holdout for r in runs if r.holdout is not None]
        out = {"metric_mean": mean, "metric_sem": sem}
        if holdouts:
            out["holdout_mean"] = sum(holdouts) / len(holdouts)
        return out

    def noise_sd(self) -> float | None:
        sd, _dof = pooled_sd(self.ledger.replicate_groups(self.tag))
        return sd

    def _incumbent(self) -> ExperimentRow:
        row = self.ledger.incumbent(self.tag)
        if row is None:
            raise RuntimeError("no incumbent: the baseline has not finished")
        return row

    def _editable_paths(self, commit: str) -> list[str]:
        target = self.config.target
        return editable_files(self.workspace.list_files(commit), target.editable, target.frozen)

    def _frozen_texts(self, commit: str) -> dict[str, str]:
        frozen = select(self.workspace.list_files(commit), self.config.target.frozen)
        texts = self.workspace.read_files(commit, frozen)
        return {p: t for p, t in texts.items() if len(t) < 200_000}

    def _count_candidates(self) -> int:
        return sum(1 for e in self.ledger.experiments(tag=self.tag) if e.kind == "candidate")

    def _consecutive_failures(self) -> int:
        count = 0
        for e in reversed(self.ledger.experiments(tag=self.tag)):
            if e.kind != "candidate" or e.status in ("skipped", "invalid"):
                continue
            if e.status in ("crash", "timeout", "oom", "nan"):
                count += 1
            else:
                break
        return count

    def _context(self, limits: LoopLimits, started: float) -> Context:
        incumbent = self._incumbent()
        editable = self._editable_paths(incumbent.commit)
        program_path = self.workspace.root / "program.md"
        done = self._count_candidates()
        left = None if limits.max_experiments is None else max(0, limits.max_experiments - done)
        seconds_left = None if limits.hours is None else limits.hours * 3600 - (time.monotonic() - started)
        return Context(
            files=self.workspace.read_files(incumbent.commit, editable),
            history=self.ledger.history(self.tag),
            metric_name=self.config.metric.name,
            direction=self.direction.value,
            best=incumbent.metric_mean,
            noise=self.noise_sd(),
            program=program_path.read_text() if program_path.is_file() else "",
            frozen_files=self._frozen_texts(incumbent.commit),
            experiments_left=left,
            seconds_left=seconds_left,
            incumbent_commit=incumbent.commit,
            editable=list(self.config.target.editable),
        )

    def _reconcile_branch(self) -> None:
        """Make ``nightlab/<tag>`` point at the incumbent (a crash may have come in between)."""
        best = self.ledger.incumbent(self.tag)
        target = best.commit if best is not None else self.start_commit
        current = self.workspace.branch_commit(self.tag)
        if current is None:
            self.workspace.create_branch(self.tag, target)
        elif current != target:
            self.workspace.advance_branch(self.tag, target, current)


def _duration(hours: float) -> str:
    return f"{hours:g} h" if hours >= 1 else f"{hours * 60:.3g} min"


def _cost(meta: dict) -> dict:
    """What the proposal cost (an LLM's tokens and dollars), as the ledger's cost column."""
    if not isinstance(meta, dict):
        return {}
    keys = ("tokens_in", "tokens_out", "cost_usd", "model", "attempts")
    return {k: meta[k] for k in keys if k in meta}


def _run_line(row: ExperimentRow, rep: Replicate) -> str:
    r = rep.result
    metric = f"{rep.metric:.6g}" if rep.metric is not None else "-"
    extra = f" ({r.reason})" if r.status.failed and r.reason else ""
    return f"#{row.id} {r.status.value} metric={metric} in {r.total_seconds:.1f}s{extra}"
