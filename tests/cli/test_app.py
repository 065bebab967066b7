"""The ``nightlab`` command as a whole: its commands, how it fails, and how its modules depend."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_workspace, nightlab

SRC = Path(__file__).parents[2] / "src" / "nightlab"
COMMANDS = [
    "init", "run", "status", "report", "demo", "try", "brief", "mcp", "validate", "ablate", "recover", "agent",
]  # fmt: skip


def test_help_lists_every_command_in_order() -> None:
    res = nightlab("--help", env={"COLUMNS": "120"})
    assert res.returncode == 0, res.stderr
    listed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("│ ") and line[2] != " "]
    assert [name for name in listed if name in COMMANDS] == COMMANDS
    sub = nightlab("agent", "--help", env={"COLUMNS": "120"})
    assert sub.returncode == 0 and "show-space" in sub.stdout


def test_agent_show_space_prints_the_search_space(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "lab")
    res = nightlab("agent", "show-space", str(root))
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    assert {"LR", "WIDTH", "NOISE"} <= set(rows) and "train.py" in rows["LR"]
    assert "dimension(s) searched" in res.stdout


@pytest.mark.parametrize(
    ("train", "problem"),
    [
        (
            'import os\nprint("val_loss", 1.0)\n',
            "the search agent found no knobs in the editable files (train.py)",
        ),
        ("LR = 0.1\n", "the search agent has nothing to search: every knob is pinned or has no domain (LR"),
    ],
)
def test_agent_show_space_with_nothing_to_search_says_so_and_exits_2_as_run_does(
    tmp_path: Path, train: str, problem: str
) -> None:
    root = make_workspace(tmp_path / "lab", train=train)
    if train.startswith("LR"):
        toml = root / "nightlab.toml"
        toml.write_text(toml.read_text() + '[agent.search]\npin = ["LR"]\n')
    res = nightlab("agent", "show-space", str(root))
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {problem}"), line


def test_agent_show_space_names_an_editable_glob_that_matches_nothing_as_check_does(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "lab")
    toml = root / "nightlab.toml"
    toml.write_text(toml.read_text().replace('editable = ["train.py"]', 'editable = ["trainer.py"]'))
    expected = "error: nightlab.toml: [target] editable glob 'trainer.py' matches no file in "
    for args in (["agent", "show-space"], ["check"]):
        res = nightlab(*args, str(root))
        assert res.returncode == 2, (args, res.stdout + res.stderr)
        assert res.stderr.startswith(expected) and "Traceback" not in res.stderr, (args, res.stderr)
    assert "found no knobs" not in nightlab("agent", "show-space", str(root)).stdout


def test_an_editable_file_deleted_from_the_checkout_is_named_as_deleted(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "lab")
    (root / "train.py").unlink()
    for args in (["try", "-m", "x"], ["run", "--plain"], ["check"]):
        res = nightlab(args[0], str(root), *args[1:])
        line = res.stderr.strip()
        assert res.returncode == 2 and "\n" not in line, (args, res.stdout + res.stderr)
        assert "train.py is missing from the checkout" in line and "git -C" in line, (args, line)


def test_a_file_given_as_the_workspace_names_its_folder(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "lab")
    script = root / "train.py"
    expected = f"error: {script}: is a file, not a workspace directory; "
    plain = ["check", "run", "status", "report", "brief", "recover", "serve", "validate", "ablate"]
    # (the command, its options after the directory)
    commands = [([name], []) for name in plain]
    commands += [(["agent", "show-space"], []), (["try"], ["-m", "x"]), (["export"], ["--to", "mlflow"])]
    for command, options in commands:
        res = nightlab(*command, str(script), *options)
        assert res.returncode == 2, (command, res.stdout + res.stderr)
        assert res.stderr.startswith(expected) and f"(its parent: {root})" in res.stderr, (
            command,
            res.stderr,
        )
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, (
            command,
            res.stderr,
        )


def test_an_unknown_agent_on_the_command_line_blames_the_option_not_the_config(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "lab")
    res = nightlab("run", str(root), "--agent", "serach", "--plain")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert line.startswith("error: --agent 'serach': unknown agent (choose from ") and "search" in line, line
    assert "nightlab.toml" not in line and "\n" not in line
    assert not (root / ".nightlab" / "ledger.db").exists()  # nothing started


def test_usage_errors_are_one_message_and_exit_2() -> None:
    """(Every mistake, under both ends of the typer range: tests/cli/test_usage.py.)"""
    for args in (["no-such-command"], ["run", "--max-experiments", "-1"], ["init"]):
        res = nightlab(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr + res.stdout, args


def test_the_app_imports_only_what_help_needs() -> None:
    """`nightlab --help` stays fast: the commands import the harness when they run, not before."""
    code = "import sys, nightlab.cli.app; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = out.split()
    allowed = {"nightlab", "nightlab.errors", "nightlab.formatting"}
    harness = [
        m
        for m in loaded
        if m.startswith("nightlab.") and m not in allowed and not m.startswith("nightlab.cli")
    ]
    assert harness == []
    assert not {"numpy", "scipy", "matplotlib", "sqlite3"} & set(loaded)


def _imports(path: Path) -> set[str]:
    """Every ``nightlab.*`` module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nightlab"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nightlab"))
    return found


def test_nothing_outside_cli_imports_it_and_cli_has_no_cycles() -> None:
    outside = {
        path.relative_to(SRC).as_posix(): sorted(m for m in _imports(path) if m.startswith("nightlab.cli"))
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] not in ("cli", "templates")
    }
    assert {k: v for k, v in outside.items() if v} == {}

    modules = {f"nightlab.cli.{p.stem}": p for p in (SRC / "cli").glob("*.py") if p.stem != "__init__"}
    graph = {
        name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()
    }

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == target or reaches(nxt, target, seen | {nxt}):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert cycles == [], graph


def test_a_permission_refused_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A workspace of another user (or a .nightlab made read-only): `recover` met a
    PermissionError on harness.lock and printed its traceback."""
    import errno
    import signal

    from nightlab.cli import app as cli_app

    root = make_workspace(tmp_path / "lab")
    lock = root / ".nightlab" / "harness.lock"

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(lock))

    monkeypatch.setattr("nightlab.workspace.lock.acquire", refused)
    monkeypatch.setattr(sys, "argv", ["nightlab", "recover", str(root)])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as ended:
            cli_app.main()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: {lock}: Permission denied; fix its permissions, or run nightlab as the user who owns the "
        "workspace"
    ), err


def test_a_repository_of_another_user_is_named_as_such_not_as_no_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What git answers in a repository another user owns: it is a repository, and the fix is
    not `git init` (which would make a second one)."""
    from nightlab.errors import UserError
    from nightlab.workspace import git as workspace_git

    root = make_workspace(tmp_path / "lab")
    refusal = (
        f"fatal: detected dubious ownership in repository at '{root}'\n"
        "To add an exception for this directory, call:\n\n"
        f"\tgit config --global --add safe.directory {root}\n"
    )
    answer = subprocess.CompletedProcess(["git"], 128, stdout=b"", stderr=refusal.encode())
    monkeypatch.setattr(workspace_git, "run_git", lambda *args, **kwargs: answer)
    with pytest.raises(UserError) as caught:
        workspace_git.Workspace(root)
    assert str(caught.value) == (
        f"{root} belongs to another user, and git refuses to work in it (dubious ownership): run nightlab "
        f"as its owner, or trust it with `git config --global --add safe.directory {root}`"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "ws"], "`nightlab run` repeats an interrupted experiment"),
        (["try", "-m", "x"], "`nightlab run` repeats an interrupted experiment"),
        # These said that `nightlab run` would repeat what they ran; it repeats none of it.
        (["check", "ws"], "nothing was recorded; `nightlab check` again starts it afresh"),
        (
            ["validate", "--seeds", "2"],
            "recorded as interrupted; the same `nightlab validate` again goes on where it stopped",
        ),
        (["ablate"], "recorded as interrupted; the same `nightlab ablate` again goes on where it stopped"),
        (["status"], "stopped"),
        (["mcp", "ws"], "the MCP server stopped; a try it was running"),  # idle, it spoke of training
    ],
)
def test_the_interrupted_line_says_what_the_command_leaves(args: list[str], says: str) -> None:
    from nightlab.cli.app import _interrupted_note

    assert says in _interrupted_note(args)


def test_the_brief_names_a_flops_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under `[budget] flops` the brief said "trains (None steps per run)"."""
    from nightlab.cli.agents import brief_command

    root = make_workspace(tmp_path / "ws")
    toml = root / "nightlab.toml"
    toml.write_text(toml.read_text().replace("seconds = 5", "flops = 2e12"))
    brief_command(root)
    assert "trains (2e+12 training FLOPs per run)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "then"),
    [
        (["run", "ws"], "then rerun `nightlab run` to continue"),
        (["recover", "--force"], "then run `nightlab recover` again"),
    ],
)
def test_a_read_only_or_full_disk_names_the_command_to_run_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], then: str
) -> None:
    """`recover` on a read-only workspace said "then rerun `nightlab run` to continue"."""
    import errno

    from nightlab.cli import app as app_module

    def read_only(**kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", "/ws/.nightlab/harness.lock")

    monkeypatch.setattr(app_module, "app", read_only)
    monkeypatch.setattr(app_module, "_install_signal_handlers", lambda: None)
    monkeypatch.setattr(sys, "argv", ["nightlab", *argv])
    with pytest.raises(SystemExit) as ended:
        app_module.main()
    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        "error: cannot write /ws/.nightlab/harness.lock (Read-only file system); free disk space or fix "
        f"permissions, {then}\n"
    )
