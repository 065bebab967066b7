"""Writing the research down: ledger rows, experiment refs, the research branch, the events.

The loop says *when* something happened (a proposal screened, a decision taken); the
:class:`Recorder` knows *how* it is written, in the order that makes a ``kill -9`` harmless at any
instant (the loop's rule 1): the ledger row first, then the finished row's copy beside it for
``nightlab recover`` (:mod:`nightlab.store.backup`), then the git ref or the branch move, then
the events and results.tsv that anyone watching reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from nightlab.agents.base import Agent
from nightlab.config import Config
from nightlab.events import Event, EventSink
from nightlab.formatting import with_status
from nightlab.research.policy import Decision
from nightlab.research.screen import Change, Refusal
from nightlab.stats import mean, sample_sd
from nightlab.store.backup import save_experiment
from nightlab.store.export import export_tsv
from nightlab.store.ledger import Ledger
from nightlab.store.schema import ExperimentRow, RunRow
from nightlab.types import Proposal
from nightlab.workspace.git import Workspace

# results.tsv is rewritten after a decision at most this often (and always at the end).
TSV_EVERY_SECONDS = 2.0


@dataclass
class Recorder:
    """Records one tag's experiments; tells the agent and the event subscribers about each."""

    config: Config
    workspace: Workspace
    ledger: Ledger
    agent: Agent
    tag: str
    events: EventSink
    _tsv_written: float = field(default=-1e9, repr=False)
    _tsv_stale: bool = field(default=False, repr=False)

    def proposal_fields(self, proposal: Proposal, incumbent: ExperimentRow) -> dict:
        """The ledger columns every candidate has, whether it runs or not."""
        text = proposal.description.strip()
        return dict(
            tag=self.tag,
            base_commit=incumbent.commit,
            agent=self.agent.name,
            description=text.splitlines()[0][:200] if text else "(no description)",
            hypothesis=proposal.hypothesis,
            proposal_json=proposal.to_dict(),
            meta_json=proposal.meta,
            incumbent_id=incumbent.id,
            cost_json=proposal.cost.to_dict() if proposal.cost else {},
        )

    def refused(self, fields: dict, refusal: Refusal) -> None:
        """A proposal that does not run, recorded with its outcome in one insert: a kill -9
        between two writes would leave a "running" row without a commit for the next run."""
        exp_id = self.ledger.add_experiment(
            kind="candidate",
            commit=None,
            diff="",
            n_runs=0,
            status=refusal.status,
            decision=refusal.decision,
            reason=refusal.reason,
            **fields,
        )
        self.ledger.finish_experiment(exp_id)  # the finish time
        self._save(exp_id)
        self._decided(exp_id, f"#{exp_id} {fields['description']}: {refusal.reason}", refusal.status)

    def committed(self, fields: dict, change: Change, base: str, hypothesis: str) -> ExperimentRow:
        """A candidate that runs: its commit on ``base``, its ledger row, then its ref (rule 1)."""
        if change.audit:  # [audit] mode "mark": it runs, and the ledger keeps why it was flagged
            fields = {**fields, "meta_json": {**fields["meta_json"], "audit": change.audit}}
        # The commit is named after the experiment it will be (the ledger id, which its ref also
        # carries): the commit comes first, since the row records it.
        number = self.ledger.next_experiment_id()
        message = f"nightlab #{number}: {fields['description']}\n\n{hypothesis}".strip()
        commit = self.workspace.commit_files(base, change.changed, message)
        exp_id = self.ledger.add_experiment(
            id=number,
            kind="candidate",
            commit=commit,
            diff=self.workspace.diff(base, commit),
            lines_added=change.lines_added,
            lines_removed=change.lines_removed,
            code_hash=change.code_hash,
            **fields,
        )
        self.workspace.set_experiment_ref(exp_id, commit)
        self.events.emit(Event("proposal", f"#{exp_id} {fields['description']}", experiment_id=exp_id))
        return self.ledger.experiment(exp_id)

    def baseline(self, start_commit: str, code_hash: str) -> ExperimentRow:
        """The start commit as the baseline experiment (it is replicated for the noise floor)."""
        exp_id = self.ledger.add_experiment(
            kind="baseline",
            tag=self.tag,
            base_commit=start_commit,
            commit=start_commit,
            agent="baseline",
            description="baseline",
            hypothesis="",
            diff="",
            code_hash=code_hash,
        )
        # The tag is the last used only now that something is recorded under it: a harness
        # opened on a misspelt --tag and left (an MCP server never called, a run stopped
        # before its baseline) must not make the next plain command research that tag.
        self.ledger.set_meta("current_tag", self.tag)
        self.workspace.set_experiment_ref(exp_id, start_commit)
        return self.ledger.experiment(exp_id)

    def check_seeds(self, values: list[float], experiment: int | None = None) -> None:
        """Replicates run with different seeds; identical results mean the seed does not reach
        the metric. For the baseline that is the script ignoring its seed: said once per tag (an
        event now, a warning in status and the report for good). For a candidate whose baseline
        did vary, it is that change (a seed fixed in it, or a model collapsed to a constant
        output): said of that experiment only, and its runs stay out of the noise floor
        (:func:`nightlab.stats.noise_floor`)."""
        if len(values) < 2 or max(values) != min(values):
            return
        key = f"warning:seeds:{self.tag}"
        if self.ledger.get_meta(key):
            return
        if experiment is not None:
            self.events.emit(
                Event(
                    "notice",
                    f"#{experiment}: {len(values)} runs with different seeds gave exactly {values[0]:.6g}, "
                    "though the baseline's varied: this change makes the result independent of the seed "
                    "(a seed fixed in it, or a model that collapsed to a constant output)",
                    experiment_id=experiment,
                )
            )
            return
        message = (
            f"{len(values)} runs with different seeds gave exactly {values[0]:.6g}: the training script "
            "ignores NIGHTLAB_SEED, so the noise floor cannot be measured; seed it from the variable "
            "(e.g. torch.manual_seed(int(os.environ['NIGHTLAB_SEED']))), or declare [policy] noise_sd"
        )
        self.ledger.set_meta(key, message)
        self.events.emit(Event("notice", f"warning: {message}"))

    def concluded(
        self, row: ExperimentRow, n_runs: int, decision: Decision, estimate_runs: int | None = None
    ) -> None:
        """The policy's decision; a keep moves the research branch, after the ledger (rule 1)."""
        self.check_seeds(self.ledger.ok_metrics(row.id), experiment=row.id)
        action = "keep" if decision.action == "keep" else "discard"
        self.ledger.finish_experiment(
            row.id,
            status="ok",
            decision=action,
            reason=decision.reason,
            n_runs=n_runs,
            delta=decision.delta,
            delta_se=decision.delta_se,
            p_value=decision.p_value,
            estimate_runs=estimate_runs,
            **self.ledger.outcome(row.id),
        )
        self._save(row.id)
        if action == "keep":
            self.workspace.advance_branch(self.tag, row.commit or "", self.workspace.branch_commit(self.tag))
        self._decided(row.id, f"#{row.id} {row.description}: {decision.reason}", action)

    def measured_baseline(self, row: ExperimentRow, values: list[float], reported: int | None = None) -> None:
        """The baseline measured: ``values`` every ok replicate; ``reported`` how many of them are
        runs of its own for the value reported (never compared with by the policy)."""
        self.check_seeds(values)
        sd = sample_sd(values)
        spread = f", run-to-run sd {sd:.4g}" if sd is not None else ""
        value = self.ledger.outcome(row.id).get("metric_mean")
        reason = (
            f"baseline {value if value is not None else mean(values):.6g}{spread} over {len(values)} runs"
        )
        if reported:
            reason += f" (its value from {reported} of them the policy never compares with)"
        self.ledger.finish_experiment(
            row.id,
            status="ok",
            decision="baseline",
            reason=reason,
            n_runs=len(values),
            estimate_runs=reported,
            **self.ledger.outcome(row.id),
        )
        self._save(row.id)
        self._decided(row.id, reason, "baseline")

    def pruned(self, row: ExperimentRow, evidence: dict) -> None:
        """Keep a pruned run's evidence with its experiment (``meta.pruned``), before its run row.

        ``estimate`` shifts the incumbent's final mean by the gap seen at the checkpoint: a rough
        guess an agent may use to rank the configuration, never a measurement (the experiment's
        metric stays empty, and nothing is decided on it)."""
        incumbent = self.ledger.incumbent(self.tag)  # the one the pruner compared with
        final = incumbent.metric_mean if incumbent is not None else None
        record = dict(evidence)
        if final is not None and "value" in evidence and "incumbent" in evidence:
            record["estimate"] = final + (evidence["value"] - evidence["incumbent"])
        current = self.ledger.experiment(row.id).meta
        self.ledger.update_experiment(row.id, meta_json={**current, "pruned": record})

    def failed(self, row: ExperimentRow, run: RunRow, n_runs: int) -> str:
        """A replicate that failed ends the experiment (crash, or invalid); returns the reason."""
        decision = {"invalid": "invalid", "pruned": "discard"}.get(run.status, "crash")
        reason = with_status(run.status, run.reason)
        self.ledger.finish_experiment(
            row.id, status=run.status, decision=decision, reason=reason, n_runs=n_runs
        )
        self._save(row.id)
        self._decided(row.id, f"#{row.id} {row.description}: {reason}", decision, tell=row.kind != "baseline")
        return reason

    def lessons(self, lessons: dict[int, str]) -> None:
        """One-line lessons an agent drew about earlier experiments, kept with those experiments."""
        for exp_id, text in lessons.items():
            try:
                self.ledger.set_lesson(int(exp_id), str(text))
            except (KeyError, ValueError):
                continue
            if self.ledger.experiment(int(exp_id)).finished:
                self._save(int(exp_id))

    def reconcile_branch(self, start_commit: str) -> None:
        """Make ``nightlab/<tag>`` point at the incumbent (a crash may have come in between)."""
        best = self.ledger.incumbent(self.tag)
        target = best.commit if best is not None and best.commit else start_commit
        current = self.workspace.branch_commit(self.tag)
        if current is None:
            self.workspace.create_branch(self.tag, target)
        elif current != target:
            self.workspace.advance_branch(self.tag, target, current)

    def _save(self, exp_id: int) -> None:
        """The finished row beside the ledger too, for `nightlab recover` (store/backup.py)."""
        save_experiment(self.workspace.state_dir, self.ledger.experiment(exp_id))

    def _decided(self, exp_id: int, message: str, outcome: str, tell: bool = True) -> None:
        """After every finished experiment: the decision event, results.tsv, and the agent hears."""
        best = self.ledger.incumbent(self.tag)
        data = {"outcome": outcome, "best": best.metric_mean if best else None}
        self.events.emit(Event("decision", message, experiment_id=exp_id, data=data))
        if not tell:
            return
        self.write_tsv(force=False)
        entry = self.ledger.history_entry(exp_id)
        self.agent.observe(entry)
        self.events.emit(Event("finished", entry.description, experiment_id=exp_id))

    def write_tsv(self, force: bool = True) -> None:
        """results.tsv, rewritten whole: after every decision, but at most every
        :data:`TSV_EVERY_SECONDS` when decisions come faster (many slots), and always at the end
        (``force``), so a long night does not spend its coordinator rewriting one file."""
        now = time.monotonic()
        if not force and now - self._tsv_written < TSV_EVERY_SECONDS:
            self._tsv_stale = True
            return
        if force and not self._tsv_stale:
            return
        export_tsv(self.ledger, self.workspace.state_dir / "results.tsv", self.tag, self.config.metric.name)
        self._tsv_written, self._tsv_stale = now, False
