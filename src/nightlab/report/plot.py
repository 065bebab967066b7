"""``progress.png``: the night at a glance, in the style of autoresearch's analysis notebook.

Discarded experiments are faint grey dots, kept ones green and labelled with their
description, the running best a green step line. Two additions: a band of ± one noise sd
around the running best (a dot inside it is indistinguishable from the best by a single run),
and failures as markers along the top edge (red x for crash/timeout/oom/nan, purple for
invalid), so a night of crashes is visible rather than silently missing.

The y-axis spans the interesting region (from just beyond the best to just beyond the
baseline); worse points are pinned to the edge as small triangles instead of stretching the
axis, which keeps a 300-experiment night readable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from nightlab.report.files import save_figure  # noqa: E402
from nightlab.stats import noise_floor  # noqa: E402
from nightlab.types import Direction  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nightlab.store.ledger import Ledger

GREY, GREEN, DARK_GREEN, LABEL_GREEN = "#bbbbbb", "#2ecc71", "#27ae60", "#1a7a3a"
RED, PURPLE, BAND, ORANGE = "#e74c3c", "#8e44ad", "#27ae60", "#e67e22"
LABEL_CHARS = 45
MAX_LABELS = 25  # beyond this many keeps, label only the biggest steps


def _label(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3] + "..."


def plot_progress(
    ledger: Ledger, tag: str, path: Path, metric_name: str, direction: Direction | str = Direction.MINIMIZE
) -> Path:
    """Draw the progress of research tag ``tag`` to ``path`` (PNG) and return the path."""
    fig = progress_figure(ledger, tag, metric_name, direction)
    try:
        return save_figure(fig, Path(path), dpi=150)
    finally:
        plt.close(fig)


def progress_figure(
    ledger: Ledger, tag: str, metric_name: str, direction: Direction | str = Direction.MINIMIZE
) -> Figure:
    """The figure :func:`plot_progress` saves (the caller closes it: ``plt.close(fig)``)."""
    direction = Direction(direction)
    points = []  # (x, metric, decision, description)
    fails = []  # (x, kind)
    shown = (e for e in ledger.research(tag) if e.finished and e.status != "skipped")  # skipped never ran
    for x, e in enumerate(shown, start=1):
        if e.decision in ("keep", "baseline", "discard") and e.metric_mean is not None:
            points.append((x, e.metric_mean, e.decision, e.description))
        else:
            fails.append(
                (x, e.status if e.status == "pruned" else "invalid" if e.decision == "invalid" else "crash")
            )
    n_total = len(points) + len(fails)
    fig, ax = plt.subplots(figsize=(16, 8))
    try:
        kept = [(x, m, d) for x, m, d, _ in points if d in ("keep", "baseline")]
        n_kept = sum(1 for _, _, d in kept if d == "keep")
        if points:
            _draw(ax, points, kept, direction, noise_floor(ledger.replicate_groups(tag)), n_total)
        _draw_failures(ax, fails)
        better = "lower" if direction is Direction.MINIMIZE else "higher"
        ax.set_xlabel("Experiment #", fontsize=12, labelpad=2)
        ax.set_ylabel(f"{metric_name} ({better} is better)", fontsize=12)
        ax.set_title(f"nightlab {tag}: {n_total} experiments, {n_kept} kept improvements", fontsize=14)
        ax.set_xlim(0, max(n_total, 1) + 1)
        ax.grid(True, alpha=0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:  # below the axes: no corner is free in every night
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=7, fontsize=9, frameon=False)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _draw(ax, points, kept, direction: Direction, noise, n_total: int) -> None:  # noqa: ANN001 - matplotlib types
    baseline = kept[0][1] if kept else points[0][1]
    best = max((direction.of(m) for _, m, _ in kept), default=direction.of(baseline)).number
    sign = direction.sign  # for the axis limits: which way "better" points
    spread = abs(best - baseline) or (noise.sd * 4 if noise and noise.sd > 0 else abs(baseline) * 0.01 or 1.0)
    margin = spread * 0.15 + (noise.sd if noise else 0.0)
    # Limits in "worse" and "better" directions; for a minimised metric worse is up.
    worse_edge = baseline - sign * margin
    better_edge = best + sign * margin
    low, high = sorted((worse_edge, better_edge))
    ax.set_ylim(low, high)

    disc = [(x, m) for x, m, d, _ in points if d == "discard"]
    inside = [(x, m) for x, m in disc if low <= m <= high]
    # Off the scale on either side: worse than the baseline region, or better than the best
    # (a lucky run the policy did not trust); each pinned to its own edge, never mislabelled.
    worse = [(x, m) for x, m in disc if not low <= m <= high and not direction.better(m, best)]
    better = [(x, m) for x, m in disc if not low <= m <= high and direction.better(m, best)]
    size = 14 if n_total <= 100 else 8
    if inside:
        ax.scatter(*zip(*inside, strict=True), c=GREY, s=size, alpha=0.6, zorder=2, label="Discarded")
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    up, down = ("^", 0.955), ("v", 0.015)  # just inside the edges, below the failure markers
    for group, (marker, y), label in (
        (worse, up if sign < 0 else down, "Discarded (worse, off scale)"),
        (better, down if sign < 0 else up, "Discarded (better than the best, not confirmed; off scale)"),
    ):
        if group:
            ax.scatter([x for x, _ in group], [y] * len(group), transform=edge, c=GREY, s=size, marker=marker,
                       alpha=0.6, zorder=2, label=label)  # fmt: skip

    xs = [x for x, _, _ in kept]
    running: list[float] = []
    for _, m, _ in kept:
        running.append(m if not running or direction.better(m, running[-1]) else running[-1])
    step_x, step_y = xs + [n_total + 1], running + [running[-1]]
    ax.step(
        step_x, step_y, where="post", color=DARK_GREEN, linewidth=2, alpha=0.7, zorder=3, label="Running best"
    )
    if noise is not None and noise.sd > 0:
        lo = [y - noise.sd for y in step_y]
        hi = [y + noise.sd for y in step_y]
        ax.fill_between(step_x, lo, hi, step="post", color=BAND, alpha=0.12, zorder=1,
                        label=f"Best ± noise sd ({noise.sd:.2g}, {noise.df} df)")  # fmt: skip
    ax.scatter(
        xs, [m for _, m, _ in kept], c=GREEN, s=50, zorder=4, edgecolors="black", linewidths=0.5, label="Kept"
    )
    _labels(ax, points, kept, running, direction)


def _labels(ax, points, kept, running, direction: Direction) -> None:  # noqa: ANN001
    """Label kept points; with very many keeps, only the largest improvements."""
    descriptions = {x: desc for x, _, _, desc in points}
    steps = []
    previous = None
    for (x, m, _), best in zip(kept, running, strict=True):
        gain = math.inf if previous is None else direction.improvement(best, previous)
        steps.append((gain, x, m))
        previous = best
    chosen = {x for _, x, _ in sorted(steps, key=lambda s: -s[0])[:MAX_LABELS]}
    # Labels lean away from the trend: up-right while the best falls, down-right while it rises.
    up = direction is Direction.MINIMIZE
    offset, rotation, va = ((6, 6), 30, "bottom") if up else ((6, -6), -30, "top")
    for _, x, m in steps:
        if x in chosen:
            ax.annotate(_label(descriptions[x]), (x, m), textcoords="offset points", xytext=offset, fontsize=8,
                        color=LABEL_GREEN, alpha=0.9, rotation=rotation, ha="left", va=va)  # fmt: skip


def _draw_failures(ax, fails) -> None:  # noqa: ANN001
    top = blended_transform_factory(ax.transData, ax.transAxes)
    kinds = (
        ("crash", RED, "x", "Crashed"),
        ("pruned", ORANGE, "v", "Stopped early"),
        ("invalid", PURPLE, "|", "Invalid"),
    )
    for kind, colour, marker, label in kinds:
        xs = [x for x, k in fails if k == kind]
        if xs:
            ax.scatter(xs, [0.985] * len(xs), transform=top, c=colour, marker=marker, s=30, linewidths=1.2,
                       zorder=5, clip_on=False, label=f"{label} ({len(xs)})")  # fmt: skip
