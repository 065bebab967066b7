"""``nightlab ablate``: what does each kept change contribute to the best, and which can go?

A night of research keeps changes one after another, each judged against the code of its
time. Later changes can make earlier ones redundant, and a lucky keep can slip through. The
ablation leaves each kept change out of the best alone (``git`` reverts that commit on top of
the best; a change of knob values only that does not revert cleanly, because later ones moved
neighbouring lines, has its knobs set back instead (:mod:`.knob_revert`); any other change that
does not revert cleanly is reported), runs
every variant and the best itself with the same seeds, and measures each change's
contribution: how much worse the best gets without it, with a confidence interval.

A change whose contribution is not shown to exceed its complexity cost (``[policy]
complexity_penalty`` per net line added, 0 by default) does not earn its place: the simplicity
criterion lists it as a candidate to drop. ``apply`` reverts all candidates together, runs that
pruned commit with the same seeds, and commits it to the research branch only when it is not
measurably worse than the best, recording it in the ledger as the new incumbent.

With a scale (``--scale NAME``, a ``[scales.NAME]`` table as for ``nightlab validate``) the best
and every variant run at that scale: which of the changes kept at the research scale still
earn their place at the larger one (they carry over), and which do not. ``apply`` stays at the
research scale, where the branch lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nightlab.errors import UserError
from nightlab.research.session import Session
from nightlab.stats import mean, noise_floor, pooled_sd, sample_sd
from nightlab.store.backup import save_experiment
from nightlab.studies.compare import MetricComparison, compare
from nightlab.studies.knob_revert import revert_knobs_onto
from nightlab.studies.scales import apply_scale, editable_paths, resolve_scale, scaled_config, set_ref
from nightlab.studies.study import Arm, RunCallback, SideStudy, check_seed_count, known_tags, study_seeds

# ``--apply`` drops changes only when the interval rules out a loss beyond this many times the noise.
LOSS_BOUND = 3.0

HELPS = "earns its place"
DROP = "candidate to drop"
NO_REVERT = "does not revert cleanly"
NO_CHANGE = "changes nothing in the best"
FAILED = "runs failed"


@dataclass
class KeptChange:
    """A kept experiment of the research branch, as the ablation sees it."""

    experiment_id: int
    description: str
    commit: str
    net_lines: int
    delta: float | None  # the improvement measured when it was kept

    def to_dict(self) -> dict:
        return {
            "id": self.experiment_id,
            "description": self.description,
            "commit": self.commit,
            "net_lines": self.net_lines,
            "delta_when_kept": self.delta,
        }


@dataclass
class Contribution:
    """One change's contribution: the best against the best without it (B = best, A = without)."""

    change: KeptChange
    status: str
    comparison: MetricComparison | None = None
    cost: float = 0.0
    variant: str | None = None  # the commit run without the change

    @property
    def value(self) -> float | None:
        return self.comparison.improvement if self.comparison else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return self.comparison.improvement_interval() if self.comparison else None

    def to_dict(self) -> dict:
        c = self.comparison
        return {
            **self.change.to_dict(),
            "status": self.status,
            "contribution": self.value,
            "ci": list(self.interval) if self.interval else None,
            "p_value": c.p_value if c else None,
            "cost": self.cost,
            "mean_without": c.mean_a if c else None,
            "sd_without": c.sd_a if c else None,
            "values_without": c.values_a if c else [],
            "note": c.note if c else "",
            "variant_commit": self.variant,
        }


@dataclass
class AppliedPrune:
    """The outcome of ``--apply``: the pruned commit, its confirming runs, and whether it went in."""

    commit: str | None
    dropped: list[int]
    skipped: list[int]
    comparison: MetricComparison | None
    applied: bool
    reason: str
    experiment_id: int | None = None

    def to_dict(self) -> dict:
        return {
            "commit": self.commit,
            "dropped": self.dropped,
            "not_droppable_together": self.skipped,
            "applied": self.applied,
            "reason": self.reason,
            "cost_of_dropping": (-self.comparison.improvement)
            if self.comparison and self.comparison.improvement is not None
            else None,
            "interval": list(self.comparison.improvement_interval() or []) if self.comparison else None,
            "experiment": self.experiment_id,
        }


@dataclass
class AblationReport:
    """Everything ``nightlab ablate`` found, for the terminal table and ``--json``."""

    tag: str
    best_id: int
    best_commit: str
    metric_name: str
    direction: str
    confidence: float
    seeds: list[int]
    full_values: list[float]
    contributions: list[Contribution]
    study: str
    scale: str | None = None
    applied: AppliedPrune | None = None
    plot: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def drop_candidates(self) -> list[Contribution]:
        return [c for c in self.contributions if c.status == DROP]

    def to_dict(self) -> dict:
        return {
            "tag": self.tag,
            "best": {"id": self.best_id, "commit": self.best_commit},
            "metric": self.metric_name,
            "direction": self.direction,
            "confidence": self.confidence,
            "seeds": self.seeds,
            "full": {
                "mean": mean(self.full_values) if self.full_values else None,
                "sd": sample_sd(self.full_values),
                "values": self.full_values,
            },
            "changes": [c.to_dict() for c in self.contributions],
            "drop_candidates": [c.change.experiment_id for c in self.drop_candidates],
            "applied": self.applied.to_dict() if self.applied else None,
            "study": self.study,
            "scale": self.scale,
            "plot": self.plot,
            "notes": self.notes,
        }


def kept_changes(session: Session) -> list[KeptChange]:
    """The kept changes still in the best, oldest first (changes a past ``--apply`` dropped excluded)."""
    ledger, tag = session.ledger, session.tag
    dropped: set[int] = set()
    for e in ledger.experiments(kind="ablate", tag=tag):
        if e.decision == "keep":
            dropped.update(int(i) for i in e.meta.get("dropped", []))
    out = []
    for e in ledger.research(tag):
        if e.kind == "candidate" and e.decision == "keep" and e.commit and e.id not in dropped:
            net = (e.lines_added or 0) - (e.lines_removed or 0)
            out.append(KeptChange(e.id, e.description or "", e.commit, net, e.delta))
    return out


def run_ablation(
    session: Session,
    seeds: int = 3,
    apply: bool = False,
    on_run: RunCallback | None = None,
    scale: str | None = None,
) -> AblationReport:
    """Leave each kept change out of the best, run all with shared seeds (at ``scale`` when
    given), and judge each change."""
    config, ledger, workspace, tag = session.config, session.ledger, session.workspace, session.tag
    check_seed_count(seeds, "a contribution needs the spread of each side")
    if apply and scale is not None:
        raise UserError(
            "--apply drops changes at the research scale, where the branch lives: run it without --scale"
        )
    scale_config = resolve_scale(config, scale)
    run_config = scaled_config(config, scale_config)
    where = f" at scale {scale}" if scale else ""

    def scaled(commit: str) -> str:
        return apply_scale(workspace, config, commit, scale, scale_config)

    best = ledger.incumbent(tag)
    if best is None or not best.commit:
        raise UserError(
            f"no research session '{tag}' in the ledger (tags: {known_tags(session)}): "
            "pass --tag with one of them, or run `nightlab run` first"
        )
    changes = kept_changes(session)
    if not changes:
        raise UserError(f"nothing to ablate: no kept change on nightlab/{tag} yet")
    if apply and ledger.unfinished(tag):
        raise UserError(
            f"an experiment of nightlab/{tag} is still running: stop `nightlab run` before `nightlab ablate --apply`"
        )

    study = SideStudy(session, "ablate", reference=best.commit)
    seed_list = study_seeds(config, seeds)
    full = Arm(
        "best",
        scaled(best.commit),
        f"ablate: the best (#{best.id}){where}",
        meta={"role": "full", "scale": scale},
        base_commit=best.commit,
    )
    arms = [full]
    contributions: list[Contribution] = []
    variants: dict[int, Arm] = {}
    notes: list[str] = []
    for change in changes:
        variant = workspace.revert_commit_onto(change.commit, best.commit)
        if variant is None:  # knob moves on neighbouring lines: leave out its knobs by value
            variant = _knob_variant(session, change, best.commit, notes)
        if variant is None:
            contributions.append(Contribution(change, NO_REVERT))
            continue
        if variant == best.commit:
            contributions.append(Contribution(change, NO_CHANGE))
            continue
        set_ref(
            workspace, f"refs/nightlab/ablate/{study.study_id}/without-{change.experiment_id:04d}", variant
        )
        arm = Arm(
            f"without #{change.experiment_id}",
            scaled(variant),
            f"ablate: the best without #{change.experiment_id} {change.description}{where}",
            meta={
                "role": "without",
                "dropped": change.experiment_id,
                "dropped_description": change.description,
                "scale": scale,
            },
            base_commit=best.commit,
        )
        variants[change.experiment_id] = arm
        arms.append(arm)
        contributions.append(Contribution(change, FAILED, variant=variant))
    study.check_same_frozen(arms)
    study.run(arms, seed_list, study.runner(run_config), {"best_id": best.id}, on_run)

    penalty = config.policy.complexity_penalty
    direction = config.metric.direction
    for contribution in contributions:
        arm = variants.get(contribution.change.experiment_id)
        if arm is None:
            continue
        comparison = compare(config.metric.name, arm.values, full.values, direction, config.policy.confidence)
        contribution.comparison = comparison
        contribution.cost = penalty * max(0, contribution.change.net_lines)
        interval = comparison.improvement_interval()
        if not arm.values or not full.values:
            contribution.status = FAILED
        elif interval is not None and interval[0] > contribution.cost:
            contribution.status = HELPS
        else:
            contribution.status = DROP
    contributions.sort(key=lambda c: (c.value is None, -(c.value or 0.0)))
    report = AblationReport(
        tag=tag,
        best_id=best.id,
        best_commit=best.commit,
        metric_name=config.metric.name,
        direction=direction.value,
        confidence=config.policy.confidence,
        seeds=seed_list,
        full_values=full.values,
        contributions=contributions,
        study=study.study_id,
        scale=scale,
        notes=notes,
    )
    if full.failures:
        report.notes.append(f"the best itself: {full.failure_summary()}")
    rows = [c.to_dict() for c in contributions]
    if full.experiment_id is not None:  # kept with the study, so `nightlab report` can redraw it
        meta = ledger.experiment(full.experiment_id).meta
        ledger.finish_experiment(full.experiment_id, meta_json={**meta, "contributions": rows})
        save_experiment(session.workspace.state_dir, ledger.experiment(full.experiment_id))  # for recover
    if apply:
        report.applied = _apply(session, study, report, full, seed_list, on_run)
    try:
        from nightlab.report.validation import ablation_figure, plot_ablation

        plot = plot_ablation(
            rows, workspace.state_dir / ablation_figure(scale), config.metric.name, config.policy.confidence
        )
        report.plot = str(plot)
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not hide the results
        report.notes.append(f"could not draw ablation.png ({exc})")
    return report


def _knob_variant(session: Session, change: KeptChange, head: str, notes: list[str]) -> str | None:
    """``head`` without ``change``'s knob moves (:mod:`nightlab.studies.knob_revert`), noting
    which of its knobs a later kept change moved again (those stay as ``head`` has them)."""
    config, workspace = session.config, session.workspace
    paths = editable_paths(workspace, config, head)
    knobs = revert_knobs_onto(workspace, change.commit, head, paths, config.target.run)
    if knobs is None:
        return None
    if knobs.commit is None:
        notes.append(
            f"#{change.experiment_id}: every knob it moved ({', '.join(knobs.kept)}) was moved again by a "
            "later kept change: nothing of it is left in the best to leave out"
        )
        return None
    again = f"; {', '.join(knobs.kept)} moved again by a later kept change, left as the best has it"
    notes.append(
        f"#{change.experiment_id}: left out by its knobs ({', '.join(knobs.reverted)} set back), "
        f"not by git{again if knobs.kept else ''}"
    )
    return knobs.commit


def _apply(
    session: Session,
    study: SideStudy,
    report: AblationReport,
    full: Arm,
    seeds: list[int],
    on_run: RunCallback | None,
) -> AppliedPrune:
    """Drop every candidate together, confirm with the same seeds, and commit it if no worse."""
    workspace, config, tag = session.workspace, session.config, session.tag
    candidates = report.drop_candidates
    if not candidates:
        return AppliedPrune(None, [], [], None, False, "every change earns its place: nothing to drop")
    head, dropped, skipped = report.best_commit, [], []
    for c in sorted(candidates, key=lambda c: -c.change.experiment_id):  # newest first: fewer conflicts
        reverted = workspace.revert_commit_onto(c.change.commit, head)
        if reverted is None:
            reverted = _knob_variant(session, c.change, head, [])
        if reverted is None:
            skipped.append(c.change.experiment_id)
            continue
        head = reverted
        dropped.append(c.change.experiment_id)
    if not dropped:
        return AppliedPrune(None, [], skipped, None, False, "the candidates do not revert cleanly together")
    dropped.sort()
    names = ", ".join(f"#{i}" for i in dropped)
    pruned_commit = head  # one revert commit per dropped change, on top of the best
    set_ref(workspace, f"refs/nightlab/ablate/{study.study_id}/pruned", pruned_commit)
    pruned = Arm("pruned", pruned_commit, f"ablate: the best without {names}", meta={"role": "pruned", "dropped": dropped},
                 base_commit=report.best_commit)  # fmt: skip
    study.check_same_frozen([pruned])
    study.run([pruned], seeds, study.runner(config), {"best_id": report.best_id}, on_run)
    direction = config.metric.direction
    comparison = compare(config.metric.name, pruned.values, full.values, direction, config.policy.confidence)
    interval = comparison.improvement_interval()
    if not pruned.values:
        return AppliedPrune(
            pruned_commit,
            dropped,
            skipped,
            comparison,
            False,
            f"the pruned commit failed: {pruned.failure_summary()}",
        )
    if interval is None or interval[0] > 0:
        why = "too few runs to confirm" if interval is None else "the best is measurably better with them"
        return AppliedPrune(pruned_commit, dropped, skipped, comparison, False, f"not applied: {why}")
    harm = _possible_harm(session, report, comparison, interval, pruned.values, full.values)
    if harm:
        return AppliedPrune(pruned_commit, dropped, skipped, comparison, False, f"not applied: {harm}")
    old = workspace.branch_commit(tag)
    if old != report.best_commit:
        return AppliedPrune(pruned_commit, dropped, skipped, comparison, False,
                            f"not applied: nightlab/{tag} moved during the ablation")  # fmt: skip
    exp_id = _record_applied(session, study.study_id, report, pruned, comparison, dropped)
    workspace.advance_branch(tag, pruned_commit, old)  # after the ledger, as the loop does
    return AppliedPrune(
        pruned_commit, dropped, skipped, comparison, True, f"applied: nightlab/{tag} drops {names}", exp_id
    )


def _possible_harm(
    session: Session,
    report: AblationReport,
    comparison: MetricComparison,
    interval: tuple[float, float],
    pruned: list[float],
    full: list[float],
) -> str | None:
    """Why dropping could cost more than it saves, though the loss is not significant.

    "Not measurably worse" alone has no power with few seeds: at two, an interval spans almost
    anything, and a change worth 98% of the metric was dropped. So the drop must also look
    harmless: the best no more than the noise better with the changes (``tolerance``, one
    run-to-run sd, or the complexity cost saved when larger), and its interval must rule out a
    loss beyond three times that."""
    floor = noise_floor(session.ledger.replicate_groups(session.tag))
    sd = floor.sd if floor is not None and floor.sd > 0 else pooled_sd([pruned, full])[0]
    cost = sum(c.cost for c in report.drop_candidates)
    tolerance = max(cost, sd or 0.0)
    better = comparison.improvement or 0.0  # how much better the best is than the pruned commit
    if better > tolerance:
        return (
            f"the best is {better:.4g} better with them, more than the run-to-run noise "
            f"({tolerance:.4g}); they are not shown to help, but nothing says they do not"
        )
    if interval[1] > LOSS_BOUND * tolerance:
        return (
            f"with {len(pruned)} seeds the best may be up to {interval[1]:.4g} better with them "
            f"({comparison.confidence:.0%} CI), more than {LOSS_BOUND:g}x the noise ({tolerance:.4g}); "
            "more seeds (--seeds N) can tell"
        )
    return None


def _record_applied(
    session: Session,
    study_id: str,
    report: AblationReport,
    pruned: Arm,
    comparison: MetricComparison,
    dropped: list[int],
) -> int:
    """The pruned commit as a kept experiment of the tag (the new incumbent), with its runs."""
    ledger, workspace = session.ledger, session.workspace
    names = ", ".join(f"#{i}" for i in dropped)
    values, holdouts = pruned.values, pruned.holdouts
    sd = sample_sd(values)
    interval = comparison.improvement_interval()
    shown = f" ({comparison.confidence:.0%} CI {interval[0]:+.4g} … {interval[1]:+.4g})" if interval else ""
    reason = (
        f"simplicity: dropped {names}; the best is {comparison.improvement:+.4g} better with them{shown}, "
        "not measurably better"
    )
    exp_id = ledger.add_experiment(
        kind="ablate",
        tag=session.tag,
        status="ok",  # finished from the start: `nightlab run` never sees it as interrupted
        decision="keep",
        reason=reason,
        base_commit=report.best_commit,
        commit=pruned.commit,
        agent="ablate",
        description=f"ablate: drop {names}",
        diff=workspace.diff(report.best_commit, pruned.commit),
        meta_json={"study": study_id, "dropped": dropped, "role": "applied"},
        incumbent_id=report.best_id,
        n_runs=len(values),
        metric_mean=mean(values),
        metric_sem=None if sd is None else sd / len(values) ** 0.5,
        holdout_mean=mean(holdouts) if holdouts else None,
    )
    for i, rep in enumerate(pruned.replicates):
        ledger.add_run(exp_id, i, rep.result, rep.metric, rep.holdout, str(rep.run_dir))
    ledger.finish_experiment(exp_id)
    workspace.set_experiment_ref(exp_id, pruned.commit)
    return exp_id
