"""Figures of the side studies: ``validation.png`` (learning curves) and ``ablation.png`` (bars).

Both are drawn from the ledger and the run directories alone, so ``nightlab report`` redraws
them at any time (:func:`write_study_plots`), as ``nightlab validate`` and ``nightlab ablate``
do when they finish.

The learning curves come from each run's progress points (periodic evaluations, see
:mod:`nightlab.studies.time_to_target`); runs without one fall back to the training loss their log
prints (``step N | loss X``), so a plain fixed-budget validation still shows how each side
learned. The frozen evaluation's final value of every run is a dot at the run's end.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from nightlab.config import Config  # noqa: E402
from nightlab.report.files import save_figure  # noqa: E402
from nightlab.studies.resume import INTERRUPTED  # noqa: E402
from nightlab.studies.time_to_target import CurvePoint, read_curve  # noqa: E402
from nightlab.types import TRAIN_LOG, Direction  # noqa: E402

if TYPE_CHECKING:
    from nightlab.store.ledger import ExperimentRow, Ledger

SIDE_COLOURS = {"A": "#7f8c8d", "B": "#2e86de"}
HELPS_GREEN, DROP_GREY, FAIL_RED = "#27ae60", "#bbbbbb", "#e74c3c"
_LOG_LOSS = re.compile(r"step\s+(\d+)\b.*?\bloss\s+([-+0-9.eE]+)")


def study_experiments(ledger: Ledger, kind: str, study: str | None = None) -> list[ExperimentRow]:
    """The experiments of one side study (when ``study`` is None, the latest of ``kind`` that
    was not cut off, else the latest: `nightlab report` redrew validation.png from a study
    interrupted after two runs, over the figure of the last complete one)."""
    rows = ledger.experiments(kind=kind)
    if study is None:
        studies = [e.meta.get("study") for e in rows if e.meta.get("study")]
        if not studies:
            return []
        cut_off = {
            e.meta.get("study")
            for e in rows
            if e.status == "running" or (e.status == "crash" and e.reason == INTERRUPTED)
        }
        whole = [s for s in studies if s not in cut_off]
        study = (whole or studies)[-1]
    return [e for e in rows if e.meta.get("study") == study]


AXIS_LABELS = {"seconds": "training seconds", "tokens": "tokens", "steps": "optimizer steps"}


def curve_axis(experiments: list[ExperimentRow]) -> str:
    """The learning curves' x axis: the unit of the study's budget.

    A tokens or steps budget makes that unit the axis, because seconds on a loaded machine say
    little; tokens win when both are set (both budgets apply, and tokens are the finer measure).
    """
    units = {e.meta.get("budget_unit") for e in experiments}
    return "tokens" if "tokens" in units else "steps" if "steps" in units else "seconds"


def point_x(point: CurvePoint, axis: str) -> float | None:
    """Where one periodic evaluation sits on ``axis`` (None if its curve line lacks that field)."""
    return {"seconds": point.training_seconds, "tokens": point.tokens, "steps": point.step}[axis]


def run_end(
    axis: str, mode: str, points: list[CurvePoint], meta: dict, training_seconds: float | None
) -> float | None:
    """Where a run's final (frozen) evaluation goes on ``axis``.

    In seconds, the run's own training time. In tokens or steps, a budget run ends at its budget
    and a time-to-target run at its last periodic evaluation (where it stopped).
    """
    if axis == "seconds":
        return training_seconds
    if mode != "budget":
        return point_x(points[-1], axis) if points else None
    return meta.get(f"budget_{axis}")


def _log_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(step, training loss) pairs a template-style log prints."""
    path = run_dir / TRAIN_LOG
    if not path.is_file():
        return []
    return [
        (float(m.group(1)), float(m.group(2))) for m in _LOG_LOSS.finditer(path.read_text(errors="replace"))
    ]


def plot_validation(
    ledger: Ledger, study: str, path: Path, metric_name: str, direction: Direction | str = Direction.MINIMIZE
) -> Path:
    """Draw both sides' learning curves of validation study ``study`` to ``path`` (PNG)."""
    experiments = study_experiments(ledger, "validate", study)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    curves: list[tuple[str, str, list[tuple[float, float]]]] = []  # side, mode, points
    log_curves: list[tuple[str, list[tuple[float, float]]]] = []
    finals: list[tuple[str, float, float]] = []  # side, where it ended (on the x axis), final metric
    target = None
    axis = curve_axis(experiments)
    for e in experiments:
        side, mode = e.meta.get("side", "?"), e.meta.get("mode", "budget")
        target = e.meta.get("target", target)
        for run in ledger.runs(e.id):
            if not run.run_dir:
                continue
            run_dir = Path(run.run_dir)
            points = read_curve(run_dir, metric_name)
            if points:
                xs = [point_x(p, axis) for p in points]
                curves.append(
                    (side, mode, [(x, p.value) for x, p in zip(xs, points, strict=True) if x is not None])
                )
            elif run.status == "ok":
                log_curves.append((side, _log_curve(run_dir)))
            end = run_end(axis, mode, points, e.meta, run.training_seconds)
            if run.status == "ok" and run.metric is not None and end is not None:
                finals.append((side, end, run.metric))

    scale = next((e.meta.get("scale") for e in experiments if e.meta.get("scale")), None)
    better = "lower" if Direction(direction) is Direction.MINIMIZE else "higher"
    use_log = not curves and any(points for _, points in log_curves)
    where = f"scale {scale}" if scale else "research scale"
    title = (
        f"nightlab validate ({where}): A = {_side_rev(experiments, 'A')}, B = {_side_rev(experiments, 'B')}"
    )
    zoom = _zoom([v for _, _, v in finals] + ([float(target)] if target is not None else []))
    every = [v for _, _, points in curves for _, v in points] + [v for _, _, v in finals]
    if zoom and every and (zoom[1] - zoom[0]) > 0.5 * (max(every) - min(every)):
        zoom = None  # the end is spread as widely as the whole curve: nothing to zoom into
    panels = 2 if curves and zoom else 1
    fig, axes = plt.subplots(1, panels, figsize=(8 * panels, 6), squeeze=False)
    try:
        for i, ax in enumerate(axes[0]):
            if use_log:
                _draw_log_curves(ax, log_curves)
            else:
                _draw_curves(ax, curves, finals, target, metric_name, better)
                ax.set_xlabel(AXIS_LABELS[axis])
            if i == 1 and zoom:
                ax.set_ylim(*zoom)
                ax.set_title("near the end (zoomed)", fontsize=10)
            ax.grid(True, alpha=0.2)
        if axes[0][0].get_legend_handles_labels()[0]:
            axes[0][0].legend(fontsize=8)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path


def _zoom(values: list[float]) -> tuple[float, float] | None:
    """A y-range around the final values and the target, where the two sides are told apart."""
    if len(values) < 2:
        return None
    lo, hi = min(values), max(values)
    pad = (hi - lo) or abs(lo) * 0.01 or 0.01
    return lo - 3 * pad, hi + 3 * pad


def _draw_log_curves(ax, log_curves) -> None:  # noqa: ANN001 - matplotlib types
    seen: set[str] = set()
    for side, points in log_curves:
        if points:
            label = None if side in seen else f"{side} (training loss, from the log)"
            seen.add(side)
            ax.plot(*zip(*points, strict=True), color=SIDE_COLOURS.get(side, "black"), alpha=0.6, lw=1.2,
                    label=label)  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")


def _draw_curves(ax, curves, finals, target, metric_name: str, better: str) -> None:  # noqa: ANN001
    seen: set[tuple[str, str]] = set()
    for side, mode, points in curves:
        label = None if (side, mode) in seen else f"{side} ({'to target' if mode != 'budget' else 'budget'})"
        seen.add((side, mode))
        style = "-" if mode == "budget" else "--"
        ax.plot(*zip(*points, strict=True), style, color=SIDE_COLOURS.get(side, "black"), alpha=0.7, lw=1.4,
                label=label)  # fmt: skip
    for side in ("A", "B"):
        mine = [(t, v) for s, t, v in finals if s == side]
        if mine:
            ax.scatter(*zip(*mine, strict=True), color=SIDE_COLOURS[side], edgecolors="black", s=40, zorder=4,
                       label=f"{side} final ({metric_name}, frozen evaluation)")  # fmt: skip
    if target is not None:
        ax.axhline(float(target), color="#c0392b", ls=":", lw=1.2, label=f"target {float(target):.4g}")
    ax.set_xlabel("training seconds")
    ax.set_ylabel(f"{metric_name} ({better} is better)")
    if not curves:
        ax.text(0.5, 0.95, "no progress points: run with --eval-interval to record learning curves",
                transform=ax.transAxes, ha="center", fontsize=9, color="#555555")  # fmt: skip


def _side_rev(experiments: list[ExperimentRow], side: str) -> str:
    for e in experiments:
        if e.meta.get("side") == side:
            rev = e.meta.get(f"rev_{side.lower()}") or (e.commit or "")[:12]
            return str(rev)[:40]
    return "?"


def ablation_figure(scale: str | None) -> str:
    """``ablation.png`` at the research scale, ``ablation-NAME.png`` at a named one."""
    return f"ablation-{scale}.png" if scale else "ablation.png"


def plot_ablation(rows: list[dict], path: Path, metric_name: str, confidence: float = 0.95) -> Path:
    """Bar chart of each change's contribution with its confidence interval, largest first.

    ``rows`` are :meth:`nightlab.studies.ablate.Contribution.to_dict` dicts (also stored in the ledger).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    measured = [r for r in rows if r.get("contribution") is not None]
    unmeasured = [r for r in rows if r.get("contribution") is None]
    fig, ax = plt.subplots(figsize=(11, 0.6 * max(3, len(rows)) + 1.5))
    try:
        labels, values, lows, highs, colours = [], [], [], [], []
        for r in measured:
            labels.append(_bar_label(r))
            values.append(r["contribution"])
            ci = r.get("ci") or [r["contribution"], r["contribution"]]
            lows.append(r["contribution"] - ci[0])
            highs.append(ci[1] - r["contribution"])
            colours.append(HELPS_GREEN if r.get("status") == "earns its place" else DROP_GREY)
        ys = list(range(len(measured)))
        if measured:
            ax.barh(ys, values, xerr=[lows, highs], color=colours, edgecolor="black", linewidth=0.5,
                    capsize=4, error_kw={"elinewidth": 1})  # fmt: skip
            ax.scatter(values, ys, color="black", s=14, zorder=3)  # visible even where a bar is ~0 wide
        for j, r in enumerate(unmeasured, start=len(measured)):
            labels.append(_bar_label(r))
            ys.append(j)
            ax.text(0, j, f"  {r.get('status')}", va="center", fontsize=9, color=FAIL_RED)
        ax.set_yticks(range(len(labels)), labels, fontsize=9)
        ax.invert_yaxis()  # largest contribution on top
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"contribution to {metric_name} (how much worse the best is without it; "
                      f"{confidence:.0%} CI)")  # fmt: skip
        ax.set_title("nightlab ablate: green earns its place, grey is a candidate to drop")
        ax.grid(True, axis="x", alpha=0.2)
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path


def _bar_label(row: dict) -> str:
    text = " ".join(str(row.get("description") or "").split())
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"#{row.get('id')} {text}"


def write_study_plots(ledger: Ledger, state: Path, config: Config) -> dict[str, Path]:
    """Redraw the latest validation and ablation figures in ``state`` (for ``nightlab report``)."""
    metric = config.metric
    out: dict[str, Path] = {}
    validation = study_experiments(ledger, "validate")
    if validation:
        study = validation[0].meta["study"]
        out["validation"] = plot_validation(
            ledger, study, state / "validation.png", metric.name, metric.direction
        )
    latest: dict[str | None, list[dict]] = {}  # per scale: the newest ablation's rows
    for e in ledger.experiments(kind="ablate"):  # oldest first: the newest of each scale wins
        if e.meta.get("contributions") is not None:
            latest[e.meta.get("scale")] = e.meta["contributions"]
    for scale, rows in latest.items():
        name = ablation_figure(scale)
        out[name.removesuffix(".png")] = plot_ablation(
            rows, state / name, metric.name, config.policy.confidence
        )
    return out
