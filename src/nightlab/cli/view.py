"""The live terminal view of a run, and the plain-text log used when output is not a terminal.

Both subscribe to the loop's events; neither knows anything about git, SQLite or agents.
"""

from __future__ import annotations

import time
from collections import Counter

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from nightlab.events import Event
from nightlab.formatting import terminal_safe


class RunView:
    """Tracks the state worth showing: current run against its budget, best, outcome counts."""

    def __init__(self, budget_seconds: float | None, timeout: float, metric_name: str) -> None:
        self.budget_seconds = budget_seconds
        self.timeout = timeout
        self.metric_name = metric_name
        # The replicates in flight, (experiment, replicate) -> (line, started): one per slot.
        self.running: dict[tuple, tuple[str, float]] = {}
        self.best: str = "-"
        self.counts: Counter[str] = Counter()
        self.last_decision: str = "-"
        self.recent: list[str] = []

    def on_event(self, event: Event) -> None:
        # Messages carry run- and agent-written text (descriptions, reasons): shown, never obeyed.
        message = terminal_safe(event.message, allow="\n")
        if event.kind == "run":
            self.running[(event.experiment_id, event.replicate)] = (message, time.monotonic())
        elif event.kind == "run_done":
            self.running.pop((event.experiment_id, event.replicate), None)
            self._remember(message)
        elif event.kind in ("decision", "confirm", "resume", "notice"):
            self.last_decision = message
            self._remember(message)
            outcome = event.data.get("outcome")
            if outcome:
                self.counts[outcome] += 1
            best = event.data.get("best")
            if best is not None:
                self.best = f"{best:.6g}"

    def _remember(self, line: str) -> None:
        self.recent = (self.recent + [line])[-6:]

    def __rich__(self) -> Panel:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        limit = self.budget_seconds or self.timeout
        label = "budget" if self.budget_seconds else "timeout"
        for line, started in self.running.values():
            elapsed = time.monotonic() - started
            filled = min(20, int(20 * elapsed / max(limit, 1e-9)))
            bar = "█" * filled + "░" * (20 - filled)
            # Text, not str: a str cell is parsed for [markup], and these lines hold descriptions.
            grid.add_row("running", Text(f"{line}\n{bar} {elapsed:5.0f}s / {limit:g}s {label}"))
        if not self.running:
            grid.add_row("running", "-")
        grid.add_row(f"best {self.metric_name}", self.best)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "-"
        grid.add_row("outcomes", counts)
        grid.add_row("last decision", Text(self.last_decision))
        recent = Text("\n".join(self.recent), style="dim")
        return Panel(Group(grid, recent), title="nightlab", border_style="cyan")


class LiveView:
    """A rich Live display refreshed in the background while the loop blocks on a run."""

    def __init__(self, view: RunView, console: Console) -> None:
        self.view = view
        self.live = Live(view, console=console, refresh_per_second=2, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)


def plain_printer(console: Console):
    """For logs and CI: one timestamped line per event (escape sequences and control characters
    of the run- and agent-written text taken out: :func:`~nightlab.formatting.terminal_safe`)."""

    def emit(event: Event) -> None:
        if event.kind in ("run", "run_done", "decision", "confirm", "resume", "notice"):
            message = terminal_safe(event.message, allow="\n")
            console.print(f"[{time.strftime('%H:%M:%S')}] {message}", markup=False, highlight=False)

    return emit
