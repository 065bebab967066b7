"""The command line as a new user meets it, under the typer pip resolves today and the lowest
typer pyproject.toml allows: every mistake is one ``error:`` line plus the usage hint and exit
code 2, never a traceback; ``--version``; bare ``nightlab`` is its help and exit code 0;
Ctrl-C and SIGTERM end a run with one ``interrupted:`` line and 130 / 143.

The lowest typer is installed by pip, with the dependencies pip resolves for it, into a
throwaway ``--target`` folder put first on PYTHONPATH for the subprocesses (nothing else of the
environment changes); it needs the package index, as ``make test`` does.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_kit import gone, slow_workspace, start, training_pid

from helpers import edit, make_workspace, nightlab

ROOT = Path(__file__).parents[2]
PROJECT_VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
LOWEST_TYPER = re.search(r'"typer>=([0-9.]+),', (ROOT / "pyproject.toml").read_text()).group(1)
SCRIPT = Path(sys.executable).parent / "nightlab"  # the console script of `pip install -e .`
COMMANDS = ["init", "run", "status", "report", "try", "brief", "mcp", "validate", "ablate", "recover"]

# (arguments, what the error line names): the mistakes of issue 17, and their neighbours.
MISTAKES = [
    (["nosuchcmd"], "nosuchcmd"),
    (["run", "--bogus"], "--bogus"),
    (["run", "-n", "abc"], "--max-experiments"),
    (["run", "-n", "-1"], "--max-experiments"),
    (["init"], "directory"),
    (["try"], "-m"),
    (["try", "-m"], "-m"),
    (["try", "-m", "two\nlines"], "-m"),  # the ledger kept the first line, without a word
    (["agent", "nosuch"], "nosuch"),
    (["status", "--tag"], "--tag"),
    (["validate", "--seeds", "1"], "--seeds"),
    # Found by the bad-input pass: taken as a default, as no limit, or run for ever before.
    (["run", "--tag", ""], "--tag"),
    (["status", "--tag", ""], "--tag"),
    (["run", "--tag", "a/b"], "--tag"),  # these two failed after `run` had printed its header
    (["run", "--tag", "héllo"], "--tag"),
    (["run", "--hours", "inf"], "--hours"),
    (["run", "--hours", "nan"], "'--hours': nan is not a finite number"),  # "should be >= 0" before
    (["validate", "--eval-interval", "-1"], "'--eval-interval': -1: give 0 or more"),
    (["validate", "--margin", "-1"], "--margin"),
    (["validate", "--cap", "nan"], "--cap"),
    (["validate", "--cap", "1"], "--cap"),  # after the study's header before
    (["demo", "--minutes", "-1"], "--minutes"),
    (["check", "--seconds", "inf"], "--seconds"),
    (["report", "--out", "."], "--out"),  # a folder: a traceback before
    # Empty values were taken as no option (`--flag "$UNSET"`): the configured agent, the default
    # revision, every interface for the dashboard, every template copied; `..` a template too.
    (["run", "--agent", ""], "--agent"),
    (["run", "--workers", "99999999999"], "--workers"),  # made worktrees until the disk was full
    (["validate", "--a", " "], "--a"),
    (["serve", "--host", ""], "--host"),
    (["export", "--to", ""], "--to"),
    (["init", "ws", "--template", ""], "--template"),
    (["init", "ws", "--template", ".."], "--template"),
]


def installed(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The ``nightlab`` command pip installed (its console script), as a user types it."""
    return subprocess.run(
        [str(SCRIPT), *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def check_command_line(env: dict[str, str], cwd: Path) -> None:
    """Every mistake, --version, bare and --help, with ``env`` (which typer) in ``cwd``."""
    for args, named in MISTAKES:
        res = installed(*args, env=env, cwd=cwd)
        out = res.stdout + res.stderr
        assert res.returncode == 2, (args, out)
        assert "Traceback" not in out and res.stdout == "", (args, out)
        lines = res.stderr.strip().splitlines()
        assert lines[0].startswith("error: ") and named.lower() in lines[0].lower(), (args, lines)
        assert len(lines) <= 2, (args, lines)  # the error, then at most the usage hint
        if len(lines) == 2:
            assert lines[1].startswith("usage: nightlab") and "--help" in lines[1], (args, lines)

    version = installed("--version", env=env, cwd=cwd)
    assert (version.returncode, version.stdout.strip(), version.stderr) == (
        0,
        f"nightlab {PROJECT_VERSION}",
        "",
    )
    for bare, listed in (([], "recover"), (["agent"], "show-space")):
        res = installed(*bare, env={**env, "COLUMNS": "120"}, cwd=cwd)
        assert res.returncode == 0 and res.stderr == "", (bare, res.stderr)
        assert f"Usage: nightlab {' '.join(bare)}".strip() in res.stdout and listed in res.stdout, res.stdout


def check_help_keeps_its_words(env: dict[str, str], cwd: Path) -> None:
    """Every option's help text of every command reaches the screen whole: rich markup must not
    eat a bracketed word (`--scale` once read "A  of nightlab.toml")."""
    from nightlab.cli.app import app

    for name in COMMANDS:
        res = nightlab(name, "--help", env={**env, "COLUMNS": "250"}, cwd=cwd)
        assert res.returncode == 0, (name, res.stderr)
        shown = " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.stdout).split())
        for param in _params(app, name):
            words = " ".join((param.help or "").split())
            assert words in shown, (name, param.name, words)


def _params(app, name: str) -> list:  # noqa: ANN001 - typer's app
    import typer.main

    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    # Options: typer before 0.19 does not print an argument's help at all, with or without markup.
    return [p for p in command.params if getattr(p, "help", None) and p.param_type_name == "option"]


def check_signals(tmp: Path, env: dict[str, str]) -> None:
    """SIGINT and SIGTERM while a run trains: one line, 130 / 143, the training gone with it."""
    root = slow_workspace(tmp / "ws")
    seen: set[int] = set()
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = start("run", str(root), "--plain", "--tag", "t", slow=60, env=env)
        trainer = training_pid(root, seen)
        seen.add(trainer)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == code, (sig, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"interrupted ({sig.name})"), err
        assert "Traceback" not in out + err
        assert gone(trainer, within=5), "the training process outlived the harness"


def test_every_mistake_is_one_line_and_exit_2_with_this_typer(tmp_path: Path) -> None:
    check_command_line({}, tmp_path)


def test_help_texts_are_shown_whole(tmp_path: Path) -> None:
    check_help_keeps_its_words({}, tmp_path)


def test_ctrl_c_and_sigterm_end_a_run_with_130_and_143(tmp_path: Path) -> None:
    check_signals(tmp_path, {})


@pytest.fixture(scope="module")
def lowest_typer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PYTHONPATH with the lowest supported typer (and what pip resolves for it) in front."""
    target = tmp_path_factory.mktemp("typer-lowest")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-warn-conflicts", "--target", str(target), f"typer=={LOWEST_TYPER}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, f"pip could not install typer=={LOWEST_TYPER}: {pip.stderr[-2000:]}"
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    seen = subprocess.run(
        [sys.executable, "-c", "import typer, click; print(typer.__version__, click.__version__)"],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert seen[0] == LOWEST_TYPER, seen
    return env


@pytest.mark.slow
def test_every_mistake_is_one_line_and_exit_2_with_the_lowest_typer(
    tmp_path: Path, lowest_typer: dict[str, str]
) -> None:
    check_command_line(lowest_typer, tmp_path)
    check_help_keeps_its_words(lowest_typer, tmp_path)
    check_signals(tmp_path, lowest_typer)


def test_a_file_where_a_new_folder_goes_and_an_unwritable_report_are_one_line(tmp_path: Path) -> None:
    """`init` and `demo --dir` on a file, `report --out` where nothing can be written: one line
    naming the path, exit 2 (each was a traceback), and the workspace's own reports stand."""
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    train = root / "train.py"
    blocked = tmp_path / "blocker"
    blocked.write_text("a file where the report's folder would go")
    for args, named in (
        (["init", str(train)], f"{train} is a file, not a folder"),
        (["demo", "--dir", str(train), "--minutes", "1"], f"{train} exists and is not a nightlab workspace"),
        (
            ["report", str(root), "--out", str(blocked / "r.html")],
            f"--out {blocked / 'r.html'}: cannot write",
        ),
    ):
        res = nightlab(*args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (args, res.stdout + res.stderr)
        assert lines[0].startswith(f"error: {named}") and "Traceback" not in res.stderr, (args, lines)
    assert (root / ".nightlab" / "report.html").is_file()


# A signal that lands while the command still imports typer: sent from inside the import, so it
# arrives there every time (a timer would race the machine's speed).
INTERRUPTED_IMPORT = """
import builtins, os, signal, sys
sys.argv = ["nightlab", *sys.argv[1:]]
real_import = builtins.__import__
def importing(name, *args, **kwargs):
    if name == "typer":
        builtins.__import__ = real_import
        os.kill(os.getpid(), signal.{sig})
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
from nightlab.cli.entry import main
main()
"""


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_the_command_starts_is_one_line_not_a_traceback(
    tmp_path: Path, sig: str, code: int
) -> None:
    """Ctrl-C in the first half second of `nightlab status` printed a KeyboardInterrupt
    traceback from inside typer's import."""
    res = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT.format(sig=sig), "status", str(tmp_path)],
        capture_output=True, text=True, timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert res.returncode == code, res.stderr
    assert res.stderr == f"interrupted ({sig}): stopped while starting; nothing was done\n"


def test_an_unknown_scale_is_the_only_line_validate_and_ablate_print(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3")])
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    for command in ("validate", "ablate"):
        res = nightlab(command, str(root), "--scale", "big")
        assert res.returncode == 2, (command, res.stdout + res.stderr)
        assert res.stderr.splitlines() == [
            "error: nightlab.toml: no [scales.big] table (scales: none defined); add one, e.g. [scales.big] "
            "constants = { DEPTH = 12 }"
        ], (command, res.stderr)  # the "nightlab validate: ..." header came first


def test_a_workspace_path_with_brackets_is_printed_as_it_is(tmp_path: Path) -> None:
    """Paths went through rich markup: a workspace in `w[red]` was printed as `w`, and one under
    `a[/b]` ended `run`, `check`, `validate` and `ablate` with a MarkupError traceback."""
    root = make_workspace(tmp_path / "a[" / "b] [red]")
    new = tmp_path / "a[" / "c] [red]"
    for args, shown in (
        (["init", str(new), "--size", "cpu"], f"created {new} (gpt"),  # stdout
        (["validate", str(root), "--a", "nosuch"], f"nightlab validate: {root}, scale"),  # stderr
    ):
        res = nightlab(*args, env={"COLUMNS": "300"})
        out = res.stdout + res.stderr
        assert "Traceback" not in out and shown in out, (args, out)


# `nightlab init` interrupted after writing the template's files, before its first commit: the
# signal is sent from inside the commit, so it lands there every time.
INTERRUPTED_INIT = """
import os, signal, sys
sys.argv = ["nightlab", *sys.argv[1:]]
import nightlab.workspace.init as init
def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
init.commit_all = interrupted
from nightlab.cli.entry import main
main()
"""


def test_an_interrupted_or_impossible_init_leaves_nothing_half_made(tmp_path: Path) -> None:
    """Ctrl-C during `init` left the template's files without a commit (the next `init` refused
    the folder as not empty; `run` researched it as it was); a folder `init` or `demo --dir`
    cannot create (under a file, under /proc) was a FileNotFoundError traceback."""
    directory = tmp_path / "new" / "nested"
    res = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_INIT, "init", str(directory), "--size", "cpu"],
        capture_output=True, text=True, timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert res.returncode == 130 and res.stderr.startswith("interrupted (SIGINT)"), res.stderr
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # `new` too: init made it

    (tmp_path / "file").write_text("a file where a folder would go")
    below = tmp_path / "file" / "ws"
    for args in (["init", str(below), "--size", "cpu"], ["demo", "--dir", str(below), "--minutes", "1"]):
        res = nightlab(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (args, res.stderr)
        assert res.stderr.startswith(f"error: {below}: cannot create the workspace there"), (args, res.stderr)


@pytest.mark.parametrize("command", [["run", "--plain"], ["check", "--seconds", "1"]])
def test_a_budget_variable_left_in_the_shell_is_refused_before_anything_runs(
    tmp_path: Path, command: list[str]
) -> None:
    """`NIGHTLAB_BUDGET_TOKENS=-1` (or `FLOPS=abc`) exported in the shell reached every run beside
    the budget of nightlab.toml: the GPT template's harness honours each one it finds, so runs
    trained under a budget the ledger does not record, or crashed on a bad value."""
    root = make_workspace(tmp_path / "ws")
    res = nightlab(command[0], str(root), *command[1:], env={"NIGHTLAB_BUDGET_TOKENS": "-1"})
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.splitlines() == [
        "error: NIGHTLAB_BUDGET_TOKENS='-1' is set in the environment nightlab was started in, and every "
        "run would inherit it beside the budget nightlab.toml gives ([budget]): unset it "
        "(`unset NIGHTLAB_BUDGET_TOKENS`), and set the budget in [budget]"
    ]
    assert not (root / ".nightlab" / "runs").exists()


def test_an_unknown_live_tracker_is_the_only_line_run_prints(tmp_path: Path) -> None:
    """`[trackers] live = ["nosuch"]` was refused after `run` had printed its header."""
    root = make_workspace(tmp_path / "ws")
    (root / "nightlab.toml").write_text(
        (root / "nightlab.toml").read_text() + '[trackers]\nlive = ["nosuch"]\n'
    )
    res = nightlab("run", str(root), "--plain", "-n", "0")
    assert (res.returncode, res.stdout) == (2, ""), res.stdout + res.stderr
    assert res.stderr.splitlines() == [
        "error: nightlab.toml: [trackers] live: 'nosuch' is not one of mlflow, wandb"
    ]


def test_a_suggested_command_can_be_pasted_for_a_path_with_spaces(tmp_path: Path) -> None:
    """`start with nightlab run /tmp/my ws` and the brief's `nightlab status /tmp/my ws` were
    two arguments in a shell: the path is quoted where it needs it."""
    root = make_workspace(tmp_path / "my ws")
    quoted = shlex.quote(str(root))
    assert quoted != str(root)
    status = nightlab("status", str(root))
    assert status.returncode == 2 and f"start with `nightlab run {quoted}`" in status.stderr, status.stderr
    brief = nightlab("brief", str(root))
    assert brief.returncode == 0 and f"`nightlab status {quoted}`" in brief.stdout, brief.stdout
    assert shlex.split(f"nightlab status {quoted}")[2] == str(root)
