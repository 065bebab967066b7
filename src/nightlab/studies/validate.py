"""``nightlab validate``: does the research branch's gain hold at another scale?

Karpathy tuned a depth-12 model overnight, then checked the kept changes on depth 24 by hand.
This does that step as a command: the two commits (by default the research branch's start and
its best) get the scale's constants written in (:mod:`nightlab.studies.scales`), run with the same
seeds, interleaved A B A B, and are compared metric by metric (val and holdout) with Welch's
test (:mod:`nightlab.studies.compare`). ``time_to_target`` adds the measure users care about: how
long each side trains to reach a target value (:mod:`nightlab.studies.time_to_target`).

The research branch never moves; the scaled commits stay reachable under
``refs/nightlab/validate/<study>/{a,b}`` and every run is in the ledger (kind ``validate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nightlab.config import Config
from nightlab.errors import UserError
from nightlab.research.runner import Replicate
from nightlab.research.session import Session
from nightlab.stats import mean
from nightlab.store.backup import save_experiment
from nightlab.studies.compare import MetricComparison, compare
from nightlab.studies.scales import apply_scale, resolve_scale, scaled_config, set_ref
from nightlab.studies.study import Arm, RunCallback, SideStudy, check_seed_count, known_tags, study_seeds
from nightlab.studies.time_to_target import (
    MAX_CAP,
    Crossing,
    Speedup,
    capped_budget,
    crossing,
    curve_from_log,
    default_interval,
    protocol_env,
    read_curve,
    speedup,
)
from nightlab.types import Direction

# "Does not transfer" means the gain at scale is below this fraction of the gain measured
# during research (when the sides are the research branch's start and best; see --margin).
MARGIN_FRACTION = 0.25

TIME_TO_TARGET = "time to target"  # the key of its failure in ValidationReport.failures


@dataclass
class ValidateOptions:
    """What ``nightlab validate`` was asked (see the CLI's help for each)."""

    scale: str | None = None
    a: str | None = None
    b: str | None = None
    seeds: int = 3
    margin: float | None = None
    time_to_target: bool = False
    target: float | None = None
    eval_interval: float | None = None
    cap: float = 2.0


@dataclass
class Side:
    """One side of the comparison: what the user named, its commit, and the scaled commit run."""

    label: str
    rev: str
    commit: str
    run_commit: str

    def to_dict(self) -> dict:
        return {"rev": self.rev, "commit": self.commit, "run_commit": self.run_commit}


@dataclass
class TargetReport:
    """The time-to-target part: the target, each run's crossing, and the speedups."""

    target: float
    target_source: str
    interval: float
    cap: float
    crossings_a: list[Crossing | None]
    crossings_b: list[Crossing | None]
    finals_a: list[float | None]
    finals_b: list[float | None]
    time: Speedup | None
    tokens: Speedup | None
    warnings: list[str] = field(default_factory=list)
    experiment_ids: tuple[int | None, int | None] = (None, None)

    def to_dict(self) -> dict:
        def runs(crossings: list[Crossing | None], finals: list[float | None]) -> list[dict]:
            return [
                {
                    "seconds": c.seconds if c else None,
                    "tokens": c.tokens if c else None,
                    "reached": bool(c and c.reached),
                    "final_metric": f,
                }
                for c, f in zip(crossings, finals, strict=True)
            ]

        return {
            "target": self.target,
            "target_source": self.target_source,
            "eval_interval_seconds": self.interval,
            "cap_factor": self.cap,
            "a": runs(self.crossings_a, self.finals_a),
            "b": runs(self.crossings_b, self.finals_b),
            "time": self.time.to_dict() if self.time else None,
            "tokens": self.tokens.to_dict() if self.tokens else None,
            "warnings": self.warnings,
        }


@dataclass
class ValidationReport:
    """Everything ``nightlab validate`` found, for the terminal table and ``--json``."""

    scale: str | None
    a: Side
    b: Side
    seeds: list[int]
    budget: dict
    metric_name: str
    direction: str
    confidence: float
    comparisons: list[MetricComparison]
    research_gain: float | None
    study: str
    experiments: dict[str, int | None]
    target: TargetReport | None = None
    failures: dict[str, str] = field(default_factory=dict)
    plot: str | None = None

    @property
    def verdict(self) -> str | None:
        """The verdict on the validation metric (the holdout is the cross-check)."""
        return self.comparisons[0].verdict if self.comparisons else None

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "seeds": self.seeds,
            "budget": self.budget,
            "metric": self.metric_name,
            "direction": self.direction,
            "confidence": self.confidence,
            "verdict": self.verdict,
            "metrics": [c.to_dict() for c in self.comparisons],
            "research_gain": self.research_gain,
            "time_to_target": self.target.to_dict() if self.target else None,
            "failures": self.failures,
            "study": self.study,
            "experiments": self.experiments,
            "plot": self.plot,
        }


def run_validation(
    session: Session, options: ValidateOptions, on_run: RunCallback | None = None
) -> ValidationReport:
    """Run the validation study ``options`` describes and return its report."""
    config = session.config
    check_seed_count(options.seeds, "a comparison needs the spread of each side")
    if not 1 < options.cap <= MAX_CAP:
        raise UserError(
            f"--cap must be above 1 and at most {MAX_CAP:g}: the cap is a multiple of the scale's budget"
        )
    if options.target is not None and not options.time_to_target:
        raise UserError("--target only applies with --time-to-target")
    scale = resolve_scale(config, options.scale)
    run_config = scaled_config(config, scale)
    longest = (run_config.budget.seconds or 0) * (options.cap if options.time_to_target else 1)
    if options.eval_interval and longest and options.eval_interval >= longest:
        raise UserError(  # no evaluation would happen; it read as "the target writes no curve"
            f"--eval-interval {options.eval_interval:g} s is not below the {longest:g} s of training a run "
            "may do: no evaluation would happen; give a fraction of the budget (default: a tenth)"
        )
    side_a, side_b, research_gain, holdout_gain = _sides(session, options)
    workspace = session.workspace
    side_a.run_commit = apply_scale(workspace, config, side_a.commit, options.scale, scale)
    side_b.run_commit = apply_scale(workspace, config, side_b.commit, options.scale, scale)

    study = SideStudy(session, "validate", reference=side_a.run_commit)
    seeds = study_seeds(config, options.seeds)
    set_ref(workspace, f"refs/nightlab/validate/{study.study_id}/a", side_a.run_commit)
    set_ref(workspace, f"refs/nightlab/validate/{study.study_id}/b", side_b.run_commit)
    direction = config.metric.direction
    report = ValidationReport(
        scale=options.scale,
        a=side_a,
        b=side_b,
        seeds=seeds,
        budget=run_config.budget.model_dump(exclude_none=True),
        metric_name=config.metric.name,
        direction=direction.value,
        confidence=config.policy.confidence,
        comparisons=[],
        research_gain=research_gain,
        study=study.study_id,
        experiments={},
    )
    budget = run_config.budget
    # The plot's axis. A FLOPs budget gives each side its own tokens and steps: training seconds
    # are what the sides share (and what time to target is about).
    unit = "seconds" if budget.seconds or budget.flops else "tokens" if budget.tokens else "steps"
    meta = {
        "scale": options.scale,
        "rev_a": side_a.rev,
        "rev_b": side_b.rev,
        "budget_unit": unit,
        "budget_tokens": budget.tokens,
        "budget_steps": budget.steps,
    }
    target_from_a: float | None = options.target
    if not (options.time_to_target and options.target is not None):  # --target skips this phase
        mean_a = _fixed_budget(
            study, report, run_config, options, meta, (research_gain, holdout_gain), on_run
        )
        target_from_a = target_from_a if target_from_a is not None else mean_a
    if options.time_to_target:
        if target_from_a is None:
            raise UserError(
                f"side A has no successful run at this scale, so there is no target: "
                f"pass --target, or fix side A ({report.failures.get('A', 'see the run logs')})"
            )
        try:
            report.target = _time_to_target(
                study, run_config, side_a, side_b, options, target_from_a, seeds, meta, on_run
            )
        except UserError as exc:
            if not report.comparisons:
                raise
            # The fixed-budget verdict stands and is shown; the time to target is what failed.
            report.failures[TIME_TO_TARGET] = str(exc)
        else:
            ids = report.target.experiment_ids
            report.experiments.update({"A (time to target)": ids[0], "B (time to target)": ids[1]})
    try:
        from nightlab.report.validation import plot_validation

        report.plot = str(plot_validation(session.ledger, study.study_id, workspace.state_dir / "validation.png",
                                          config.metric.name, direction))  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not hide the results
        report.failures["plot"] = f"could not draw validation.png ({exc})"
    return report


def _fixed_budget(
    study: SideStudy,
    report: ValidationReport,
    run_config: Config,
    options: ValidateOptions,
    meta: dict,
    gains: tuple[float | None, float | None],
    on_run: RunCallback | None,
) -> float | None:
    """Both sides at the scale's budget, compared per metric into ``report``; side A's mean."""
    config = study.session.config
    direction = config.metric.direction
    env = protocol_env(options.eval_interval, None, direction) if options.eval_interval else {}
    arm_a, arm_b = _arms(report.a, report.b, options.scale, "budget")
    study.check_same_frozen([arm_a, arm_b])
    study.run([arm_a, arm_b], report.seeds, study.runner(run_config, env), {**meta, "mode": "budget"}, on_run)
    report.experiments.update({"A": arm_a.experiment_id, "B": arm_b.experiment_id})
    for label, arm in (("A", arm_a), ("B", arm_b)):
        if arm.failure_summary():
            report.failures[label] = arm.failure_summary()
    metrics = [(config.metric.name, arm_a.values, arm_b.values, gains[0])]
    if config.metric.holdout and (arm_a.holdouts or arm_b.holdouts):
        metrics.append((config.metric.holdout, arm_a.holdouts, arm_b.holdouts, gains[1]))
    for name, values_a, values_b, gain in metrics:
        margin = options.margin if options.margin is not None else _margin(gain)
        report.comparisons.append(
            compare(name, values_a, values_b, direction, config.policy.confidence, margin)
        )
    _note_verdict(study.session, arm_a, arm_b, report.comparisons[0])
    return mean(arm_a.values) if arm_a.values else None


def _sides(session: Session, options: ValidateOptions) -> tuple[Side, Side, float | None, float | None]:
    """Side A and B from --a/--b or the research session's start and best, and the research gain."""
    ledger, tag = session.ledger, session.tag
    start = ledger.get_meta(f"start_commit:{tag}")
    best = ledger.incumbent(tag)
    if (options.a is None or options.b is None) and (start is None or best is None):
        raise UserError(
            f"no finished research session '{tag}' in the ledger to take the defaults from "
            f"(tags: {known_tags(session)}): pass --a REV and --b REV (or --tag, or run `nightlab run` first)"
        )
    rev_a = options.a or f"start of nightlab/{tag}"
    rev_b = options.b or f"best of nightlab/{tag} (#{best.id})"  # type: ignore[union-attr]
    commit_a = _resolve(session, options.a) if options.a else str(start)
    commit_b = _resolve(session, options.b) if options.b else str(best.commit)  # type: ignore[union-attr]
    if commit_a == commit_b:
        raise UserError(
            f"A and B are the same commit ({commit_a[:12]}): nothing kept on nightlab/{tag} yet, "
            "or pass --a/--b with two different revisions"
        )
    gain = holdout_gain = None
    if options.a is None and options.b is None and best is not None:
        baseline = next((e for e in ledger.research(tag) if e.decision == "baseline"), None)
        direction = session.config.metric.direction
        if baseline is not None and baseline.metric_mean is not None and best.metric_mean is not None:
            gain = direction.improvement(best.metric_mean, baseline.metric_mean)
        if baseline is not None and baseline.holdout_mean is not None and best.holdout_mean is not None:
            holdout_gain = direction.improvement(best.holdout_mean, baseline.holdout_mean)
    return Side("A", rev_a, commit_a, commit_a), Side("B", rev_b, commit_b, commit_b), gain, holdout_gain


def _resolve(session: Session, rev: str) -> str:
    """The commit of ``rev``: a git revision, or an experiment id as `nightlab status` shows it
    (``#3``, or ``3`` when no revision has that name): ``--a 2`` was 'not a commit'."""
    digits = rev.removeprefix("#")
    if not digits.isdigit():
        return session.workspace.resolve(rev)
    if not rev.startswith("#"):
        try:
            return session.workspace.resolve(rev)
        except UserError:
            pass  # not a revision: an experiment id
    try:
        row = session.ledger.experiment(int(digits))
    except KeyError:
        ids = [e.id for e in session.ledger.experiments() if e.commit]
        known = f"ids with a commit: {ids[0]} to {ids[-1]}" if ids else "none has a commit yet"
        raise UserError(
            f"'{rev}' is neither a revision nor an experiment of the ledger ({known}; `nightlab status` lists them)"
        ) from None
    if not row.commit:
        raise UserError(f"experiment #{row.id} has no commit ({row.status}: {row.description}): give another")
    return row.commit


def _margin(research_gain: float | None) -> float:
    return MARGIN_FRACTION * research_gain if research_gain and research_gain > 0 else 0.0


def _arms(side_a: Side, side_b: Side, scale: str | None, mode: str) -> tuple[Arm, Arm]:
    where = f"scale {scale}" if scale else "research scale"
    suffix = ", time to target" if mode == "time_to_target" else ""
    arms = []
    for side in (side_a, side_b):
        arms.append(
            Arm(
                label=side.label,
                commit=side.run_commit,
                base_commit=side.commit,
                description=f"validate {side.label} at {where}{suffix}: {side.rev} ({side.commit[:12]})",
                meta={"side": side.label},
            )
        )
    return arms[0], arms[1]


def _note_verdict(session: Session, arm_a: Arm, arm_b: Arm, comparison: MetricComparison) -> None:
    """Store the verdict with both sides' ledger experiments, where `nightlab status` users look."""
    text = f"{comparison.verdict}: {comparison.note}"
    for arm in (arm_a, arm_b):
        if arm.experiment_id is not None:
            session.ledger.finish_experiment(arm.experiment_id, reason=text)
            # The record recover rebuilds from, with the verdict (study.py wrote it before).
            save_experiment(session.workspace.state_dir, session.ledger.experiment(arm.experiment_id))


def _time_to_target(
    study: SideStudy,
    run_config: Config,
    side_a: Side,
    side_b: Side,
    options: ValidateOptions,
    target: float,
    seeds: list[int],
    meta: dict,
    on_run: RunCallback | None,
) -> TargetReport:
    """Both sides train (up to ``cap`` times the budget) until they reach ``target``."""
    config = study.session.config
    direction: Direction = config.metric.direction
    interval = options.eval_interval or default_interval(run_config.budget)
    if interval is None:
        raise UserError("--eval-interval SECONDS is needed when the budget is in tokens or steps")
    cap_config = run_config.model_copy(
        update={"budget": capped_budget(run_config.budget, options.cap)}, deep=True
    )
    env = protocol_env(interval, target, direction)
    arm_a, arm_b = _arms(side_a, side_b, options.scale, "time_to_target")
    study.check_same_frozen([arm_a, arm_b])
    run_meta = {
        **meta,
        "mode": "time_to_target",
        "target": target,
        "eval_interval": interval,
        "cap": options.cap,
    }
    no_points = UserError(
        f"the runs left no {config.metric.name} progress points: the target does not support periodic "
        "evaluation (NIGHTLAB_EVAL_INTERVAL_SECONDS, scored by [target] progress_evaluate), nor "
        "prints it for [metric] progress_pattern with a (?P<seconds>...) group; see docs/VALIDATION.md"
    )

    def first_tells(arm: Arm, i: int, rep: Replicate) -> None:
        """A finished run without a single point means the target writes none: the runs left
        would cost their time and show nothing."""
        curve_from_log(rep.run_dir, config)
        if on_run is not None:
            on_run(arm, i, rep)
        if rep.result.status.value == "ok" and not read_curve(rep.run_dir, config.metric.name):
            raise no_points

    study.run([arm_a, arm_b], seeds, study.runner(cap_config, env), run_meta, first_tells)

    def crossings(arm: Arm) -> tuple[list[Crossing | None], list[float | None]]:
        out, finals = [], []
        for rep in arm.replicates:
            ok = rep.result.status.value == "ok"
            out.append(
                crossing(read_curve(rep.run_dir, config.metric.name), target, direction) if ok else None
            )
            finals.append(rep.metric if ok else None)
        return out, finals

    cross_a, finals_a = crossings(arm_a)
    cross_b, finals_b = crossings(arm_b)
    ok_runs = [c for c, f in zip(cross_a + cross_b, finals_a + finals_b, strict=True) if f is not None]
    if ok_runs and all(c is None for c in ok_runs):
        raise no_points
    warnings = _check_claims(
        cross_a + cross_b, finals_a + finals_b, target, direction, arm_a.values + arm_b.values
    )
    for label, cs in (("A", cross_a), ("B", cross_b)):
        missed = sum(1 for c in cs if c is not None and not c.reached)
        if missed:
            warnings.append(
                f"{missed} run(s) of side {label} did not reach the target within {options.cap:g}x the budget: "
                "their time counts as the time they trained (a lower bound)"
            )
    return TargetReport(
        target=target,
        target_source="--target" if options.target is not None else "mean of side A at the scale's budget",
        interval=interval,
        cap=options.cap,
        crossings_a=cross_a,
        crossings_b=cross_b,
        finals_a=finals_a,
        finals_b=finals_b,
        time=speedup([c for c in cross_a if c], [c for c in cross_b if c], "time", config.policy.confidence),
        tokens=speedup(
            [c for c in cross_a if c], [c for c in cross_b if c], "tokens", config.policy.confidence
        ),
        warnings=warnings,
        experiment_ids=(arm_a.experiment_id, arm_b.experiment_id),
    )


def _check_claims(
    crossings: list[Crossing | None],
    finals: list[float | None],
    target: float,
    direction: Direction,
    values: list[float],
) -> list[str]:
    """Flag runs whose curve says 'reached' while the frozen final evaluation is far from it.

    The curve is measured inside the training process (on a val subset); the frozen evaluation
    after it is the harness's own. A run that stopped at the target should score about the
    target there; far worse means the curve cannot be trusted.
    """
    spread = max(values) - min(values) if len(values) > 1 else 0.0
    tolerance = max(3 * spread, 0.01 * abs(target))
    bad = 0
    for c, final in zip(crossings, finals, strict=True):
        if (
            c is not None
            and c.reached
            and final is not None
            and direction.improvement(final, target) < -tolerance
        ):
            bad += 1
    if not bad:
        return []
    return [
        f"{bad} run(s) claimed the target on their curve but scored worse than it by more than {tolerance:.3g} "
        "in the frozen evaluation: their times are not trustworthy"
    ]
