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
# Training tokens per run (48 optimizer steps of the cpu size). A token budget rather than
# seconds keeps results independent of how busy the machine is, so the noise floor the policy
# measures is the seed's, not the load's; about 20 s of training on 2 idle cores.
DEMO_BUDGET_TOKENS = 393216
DEMO_TIMEOUT = 300


def prepare_demo_workspace(directory: Path, console: Console) -> None:
    """Create the workspace once; an existing demo workspace is reused as it is."""
    from nightlab.workspace.init import commit_all, init_workspace, set_toml_value

    if (directory / "nightlab.toml").exists():
        console.print(f"reusing {directory} (delete it to start the demo afresh)")
        return
    if directory.exists() and any(directory.iterdir()):
        raise UserError(
            f"{directory} exists and is not a nightlab workspace; remove it or pass --dir elsewhere"
        )
    init_workspace(directory, template="gpt", size="cpu")
    toml = directory / "nightlab.toml"
    text = toml.read_text().replace("\nseconds = 60\n", "\n")  # the token budget replaces it
    text = set_toml_value(text, "budget", "tokens", DEMO_BUDGET_TOKENS)
    text = set_toml_value(text, "budget", "timeout", DEMO_TIMEOUT)
    toml.write_text(text)
    commit_all(directory, f"demo: {DEMO_BUDGET_TOKENS} training tokens per run", paths=["nightlab.toml"])
    console.print(
        f"created {directory} (gpt template, cpu size, {DEMO_BUDGET_TOKENS:,} training tokens per run)"
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
