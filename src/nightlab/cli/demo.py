"""``nightlab demo`` (what ``make run`` runs): a whole research session in about ten minutes.

It creates a cpu-size GPT workspace, shortens the training budget so that ten minutes hold
enough experiments for the noise-aware policy to confirm something, lets the offline search
agent work, and writes the report. Running it again continues the same session.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from nightlab.errors import UserError

DEMO_TAG = "demo"
# Training FLOPs per run, counted as train.py counts them (6 per matrix weight per token plus
# attention): about 198k tokens of the cpu-size baseline, 10-25 s of training on 2 idle cores
# (`python train.py` with 393216 tokens printed total_flops 2.185e12). Short enough that ten
# minutes hold 8-16 experiments (docs/BENCHMARKS.md, "The demo").
# A FLOPs budget keeps results independent of how busy the machine is (so the noise floor the
# policy measures is the seed's, not the load's), and unlike a token budget it does not reward a
# bigger model: one with 3.7x the parameters gets about a third of the tokens, as under a time
# budget.
DEMO_BUDGET_FLOPS = 1_100_000_000_000
DEMO_TIMEOUT = 300
# One run each to compare with and to report, for a kept change (and one to report for the
# baseline): its value stays unbiased, at 2 runs per keep instead of 4 in a ten-minute night.
DEMO_REMEASURE = 1
# Two replicates side by side, each with half the cores (one thread each on 2 cores): the demo's
# small model uses a second thread poorly (2 slots of 1 thread make 1.34x the replicates per hour
# of 1 slot of 2 threads on a quiet machine), and with other work on the machine a run whose
# two threads wait on each other goes at the pace of its slower core (measured with other
# processes loading the 2 cores: 1.77x the runs per minute; docs/BENCHMARKS.md).
DEMO_WORKERS = 2


def prepare_demo_workspace(directory: Path, console: Console) -> None:
    """Create the workspace once; an existing demo workspace is reused as it is."""
    from nightlab.cli.output import undone_unless_finished
    from nightlab.executor.slots import usable_cores
    from nightlab.workspace.init import commit_all, init_workspace, set_toml_value

    if (directory / "nightlab.toml").exists():
        console.print(f"reusing {directory} (delete it to start the demo afresh)")
        return
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(
            f"{directory} exists and is not a nightlab workspace; remove it or pass --dir elsewhere"
        )
    with undone_unless_finished(directory):  # a folder it cannot make: one line, nothing half made
        init_workspace(directory, template="gpt", size="cpu")
        toml = directory / "nightlab.toml"
        text = toml.read_text().replace("\nseconds = 60\n", "\n")  # the FLOPs budget replaces it
        text = set_toml_value(text, "budget", "flops", DEMO_BUDGET_FLOPS)
        text = set_toml_value(text, "budget", "timeout", DEMO_TIMEOUT)
        text = set_toml_value(text, "policy", "remeasure", DEMO_REMEASURE)
        workers = DEMO_WORKERS if len(usable_cores()) >= DEMO_WORKERS else 1  # one core: no second slot
        if workers > 1:
            text = set_toml_value(text, "run", "workers", workers)
        toml.write_text(text)
        commit_all(
            directory, f"demo: {DEMO_BUDGET_FLOPS:.3g} training FLOPs per run", paths=["nightlab.toml"]
        )
    console.print(
        f"created {directory} (gpt template, cpu size, {DEMO_BUDGET_FLOPS:.3g} training FLOPs per run, "
        f"{workers} run{'s' * (workers > 1)} at a time)"
    )


def run_demo(directory: Path, minutes: float, console: Console) -> None:
    """Init (once), research for ``minutes``, report, and say where everything is."""
    from nightlab.cli.output import print_summary, run_research, write_reports
    from nightlab.research.loop import LoopLimits
    from nightlab.research.session import open_session

    directory = Path(directory).resolve()
    prepare_demo_workspace(directory, console)
    session = open_session(directory, tag=DEMO_TAG, agent_kind="search")
    console.print(
        f"researching for about {minutes:g} minutes with the offline search agent (Ctrl-C stops safely)"
    )
    outcome = run_research(session, LoopLimits(hours=minutes / 60), live=console.is_terminal, console=console)
    paths = write_reports(session, quiet=True)
    console.print(f"stopped: {outcome.stopped_because}")
    print_summary(session, console)
    for label, path in paths.items():
        console.print(f"{label}: {path}")
    console.print(
        f"best code: branch nightlab/{DEMO_TAG} in {directory} (git -C {directory} log nightlab/{DEMO_TAG})"
    )
