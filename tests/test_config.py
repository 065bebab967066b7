"""``nightlab.toml`` mistakes as a user meets them: one ``error:`` line naming what to fix, exit 2.

Run through the real CLI (``nightlab check``), since the order of the messages and the line the
user reads are what these tests pin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TOY_TOML, make_workspace, nightlab
from nightlab.config import load_config
from nightlab.errors import UserError

REGEX_TOML = TOY_TOML.format(evaluate="", source="regex", pattern="{pattern}", policy="greedy")


def _error_line(root: Path, *args: str) -> str:
    res = nightlab(*args, str(root))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_a_typo_in_a_required_key_leads_with_the_unknown_key(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    root = make_workspace(tmp_path / "ws", toml=toml.replace("editable =", "editabel ="))
    line = _error_line(root, "check")
    assert "unknown key 'editabel' in [target] (did you mean 'editable'?) (and 1 more)" in line
    assert "Field required" not in line


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("timeout = 30", "timout = 30", "unknown key 'timout' in [budget] (did you mean 'timeout'?)"),
        ("[metric]", "[metrics]", "unknown key 'metrics' in top level (did you mean 'metric'?)"),
        (
            "[metric]",
            "[audit]\nmod = 'mark'\n[metric]",
            "unknown key 'mod' in [audit] (did you mean 'mode'?)",
        ),
    ],
)
def test_a_typo_in_an_optional_key_suggests_the_known_one(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    root = make_workspace(tmp_path / "ws", toml=toml.replace(old, new, 1))
    assert expected in _error_line(root, "check")


def test_an_unknown_key_unlike_any_known_one_gets_no_suggestion(tmp_path: Path) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    root = make_workspace(tmp_path / "ws", toml=toml.replace("[budget]", "[budget]\nzzzq = 1"))
    line = _error_line(root, "check")
    assert line.endswith("unknown key 'zzzq' in [budget]")


def test_a_metric_pattern_with_two_groups_is_refused_at_config_time(tmp_path: Path) -> None:
    root = make_workspace(
        tmp_path / "ws",
        source="regex",
        toml=REGEX_TOML.format(pattern="pattern = '^(val_loss):\\s*([0-9.]+)'"),
    )
    line = _error_line(root, "check")
    assert "pattern has 2 capture groups" in line and "(?:...)" in line


def test_a_metric_pattern_with_one_named_group_is_accepted(tmp_path: Path) -> None:
    toml = REGEX_TOML.format(pattern="pattern = '^(?:val_loss):\\s*(?P<v>[0-9.]+)'")
    (tmp_path / "nightlab.toml").write_text(toml)
    assert load_config(tmp_path).metric.pattern == "^(?:val_loss):\\s*(?P<v>[0-9.]+)"


@pytest.mark.parametrize(
    "progress, ok",
    [
        ("'step (\\d+): .*val loss ([0-9.]+)'", False),
        ("'step (?P<step>\\d+): .*val loss ([0-9.]+)'", True),  # the documented form
        ("'step (\\d+): .*val loss (?P<value>[0-9.]+)'", True),
    ],
)
def test_a_progress_pattern_needs_one_unnamed_group_or_a_named_value(
    tmp_path: Path, progress: str, ok: bool
) -> None:
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
    toml = toml.replace('name = "val_loss"', f'name = "val_loss"\nprogress_pattern = {progress}')
    if ok:
        (tmp_path / "nightlab.toml").write_text(toml)
        assert load_config(tmp_path).metric.progress_pattern
    else:
        line = _error_line(make_workspace(tmp_path / "ws", toml=toml), "status")
        assert "progress_pattern has 2 unnamed capture groups" in line and "(?P<value>...)" in line


@pytest.mark.parametrize(
    "name", ["val_acc", "valAccuracy", "eval/f1", "mAP@0.5", "bleu4", "pass@1", "reward_mean"]
)
def test_a_metric_named_as_a_score_must_say_its_direction(tmp_path: Path, name: str) -> None:
    """Minimising an accuracy by default made a night keep four changes that took a classifier
    from 76% to 17% (found from outside); such a name must set direction."""
    base = f'[target]\nrun = "python train.py"\neditable = ["train.py"]\n[metric]\nname = "{name}"\n'
    (tmp_path / "nightlab.toml").write_text(base)
    with pytest.raises(
        UserError, match=r'reads as a score where higher is better.*set direction = "maximize"'
    ):
        load_config(tmp_path)
    for direction in ("maximize", "minimize"):  # said either way, it is the user's word
        (tmp_path / "nightlab.toml").write_text(base + f'direction = "{direction}"\n')
        assert load_config(tmp_path).metric.direction.value == direction


@pytest.mark.parametrize("name", ["val_bpb", "top1_error", "test_loss", "acc_err", "score", "val_ppl"])
def test_a_metric_named_as_a_loss_keeps_the_default_direction(tmp_path: Path, name: str) -> None:
    (tmp_path / "nightlab.toml").write_text(
        f'[target]\nrun = "python train.py"\neditable = ["train.py"]\n[metric]\nname = "{name}"\n'
    )
    assert load_config(tmp_path).metric.direction.value == "minimize"


def _problem(toml: str, root: Path) -> str:
    """The one line nightlab.toml's checks give for ``toml`` (the tables, then the kinds' and
    trackers' settings, as `nightlab run` checks them before anything runs); '' when none."""
    from nightlab.research.session import check_kinds
    from nightlab.store.trackers.registry import check_trackers

    (root / "nightlab.toml").write_text(toml)
    try:
        config = load_config(root)
        check_kinds(config)
        check_trackers(config.trackers)
    except UserError as exc:
        return str(exc)
    return ""


BASE = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")


def _with(table: str, line: str) -> str:
    """BASE with ``line`` in ``[table]``, in place of the key's own line there (the table added
    when BASE has none)."""
    header, key = f"[{table}]", line.split("=")[0].strip()
    lines, current, out = BASE.splitlines(), "", []
    for text in lines:
        current = text if text.startswith("[") else current
        if current == header and text.split("=")[0].strip() == key:
            continue
        out.append(text)
        if text == header:
            out.append(line)
    return "\n".join(out) + "\n" + ("" if header in lines else f"{header}\n{line}\n")


# Values pydantic's lax mode took (or that ended in a traceback), each refused with the key named.
LAX = [
    ("target", 'run = "   "', "[target] run: is empty"),  # was an IndexError traceback
    ("target", 'evaluate = ""', "[target] evaluate: is empty"),
    ("target", 'setup = " "', "[target] setup: is empty"),
    ("target", 'outputs = [""]', "[target] outputs: holds an empty string"),
    ("target", 'private = ["a", " "]', "[target] private: holds an empty string"),
    ("target", 'env = { NIGHTLAB_SEED = "3" }', "[target] env: NIGHTLAB_SEED is nightlab's to set"),
    ("target", 'env = { "A B" = "x" }', "[target] env: 'A B' is not an environment variable name"),
    ("budget", "steps = true", "[budget] steps: true is not a number"),
    ("budget", "flops = inf", "[budget] flops: Input should be a finite number"),
    ("budget", "evaluate_timeout = nan", "[budget] evaluate_timeout: Input should be a finite number"),
    (
        "metric",
        'file = "/etc/passwd"',
        "[metric] file: '/etc/passwd': a file the run writes in its run directory",
    ),
    ("metric", 'file = "../metrics.json"', "[metric] file: '../metrics.json': a file the run writes"),
    ("metric", 'holdout = ""', "[metric] holdout: is empty"),
    ("agent", 'pipeline = "yes"', '[agent] pipeline: "yes" is not a boolean: write true or false'),
    ("policy", "prune = 1", "[policy] prune: 1 is not a boolean"),
    ("policy", "max_runs = true", "[policy] max_runs: true is not a number"),
    ("policy", "noise_sd = inf", "[policy] noise_sd: Input should be a finite number"),
    ("run", "log_limit_mb = inf", "[run] log_limit_mb: Input should be a finite number"),  # was a traceback
    ("run", "workers = true", "[run] workers: true is not a number"),
    # Read "[run.workers] int: Input should be a valid integer ... (and 1 more)" before.
    (
        "run",
        'workers = "abc"',
        '[run] workers: "abc" is not a number of workers: write one of at least 1, or "auto"',
    ),
    ("run", "workers = 1.5", "[run] workers: 1.5 is not a number of workers"),
    ("run", "workers = 5000", "[run] workers: 5000: at most 1024"),  # one worktree each: no end of them
    ("run", "seed = -1", "[run] seed: Input should be greater than or equal to 0"),
    ("run", "seed = 99999999999999999999999", "[run] seed: Input should be less than or equal to 2147483647"),
    ("run", 'tag = "a b"', "[run] tag: 'a b': use letters, digits"),  # it named --tag, never given
    ("run", 'tag = "nightly.lock"', "[run] tag: 'nightly.lock': use letters"),
    # Refused by the research branch's git layer only after `run` had started: refused here now.
    ("run", 'tag = "nightly/dec-01"', "[run] tag: 'nightly/dec-01': use letters"),
    ("run", 'tag = "héllo"', "[run] tag: 'héllo': use letters"),
    ("run", 'allow_env = ["HF TOKEN"]', "[run] allow_env: 'HF TOKEN' is not an environment variable name"),
    ("audit", 'patterns = [""]', "[audit] patterns: holds an empty string"),  # matched every line
    ("agent.search", "seed = true", "[agent.search] seed: true is not a number"),
    (
        "agent.search",
        "seed = -1",
        "[agent.search] seed: Input should be greater than or equal to 0",
    ),  # numpy refused it later
    ("agent.search", 'pin = [""]', "[agent.search] pin: holds an empty string"),
    ("pruner.incumbent", "startup = false", "[pruner.incumbent] startup: false is not a number"),
    ("executor.ray", "num_cpus = inf", "[executor.ray] num_cpus: Input should be a finite number"),
    ("trackers.mlflow", 'tracking_uri = "  "', "[trackers.mlflow] tracking_uri: is empty"),  # a traceback
]


@pytest.mark.parametrize(("table", "line", "expected"), LAX, ids=[f"{t}.{line}" for t, line, _ in LAX])
def test_what_pydantic_would_let_through_is_refused_naming_the_key(
    tmp_path: Path, table: str, line: str, expected: str
) -> None:
    toml = _with(table, line)
    if table == "executor.ray":
        toml = _with("executor", 'kind = "ray"').replace("[executor.ray]", "") + f"[executor.ray]\n{line}\n"
    if table == "pruner.incumbent":
        toml = toml.replace("[pruner.incumbent]", '[pruner]\nkind = "incumbent"\n[pruner.incumbent]')
    if table == "agent.search":
        toml = toml.replace('kind = "replay"\nfile = "proposals.jsonl"', 'kind = "search"')
    problem = _problem(toml, tmp_path)
    assert expected in problem and "nightlab.toml" in problem, problem
    assert "\n" not in problem


@pytest.mark.parametrize(
    "line",
    ['tag = "nightly.dec-01"', "seed = 7", 'workers = "auto"', "futility = 0", 'allow_env = ["HF_TOKEN"]'],
)
def test_values_a_user_means_are_still_taken(tmp_path: Path, line: str) -> None:
    table = "policy" if line.startswith("futility") else "run"
    assert _problem(_with(table, line), tmp_path) == ""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'frozen = ["evaluate.py"]',
            'frozen = ["evaluate.py", "train.py"]',
            "[target] train.py is both editable and frozen",
        ),
        (
            'editable = ["train.py"]',
            'editable = ["train.py", "nightlab.toml"]',
            "[target] editable names nightlab.toml",
        ),
        (
            'editable = ["train.py"]',
            'editable = ["*.py"]\nfrozen = ["*.py"]',
            "every file the editable globs match is frozen",
        ),
    ],
)
def test_an_editable_file_that_could_never_be_edited_is_named(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    toml = BASE.replace('frozen = ["evaluate.py"]\n', "") if "frozen" in new and "editable" in new else BASE
    root = make_workspace(tmp_path / "ws", toml=toml.replace(old, new, 1))
    assert expected in _error_line(root, "check")


def test_editable_everything_with_frozen_files_is_still_a_target(tmp_path: Path) -> None:
    """Frozen wins over a glob, and nightlab.toml is never editable: `*` is fine."""
    root = make_workspace(tmp_path / "ws", toml=BASE.replace('editable = ["train.py"]', 'editable = ["*"]'))
    from nightlab.config import check_workspace_files

    check_workspace_files(load_config(root), root)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("", "[target]: missing, and required (docs/CONFIG.md lists every key)"),  # "Field required"
        (
            '[target]\neditable = ["train.py"]\n',
            "[target] run: missing, and required (docs/CONFIG.md lists every key)",
        ),
    ],
)
def test_a_missing_table_or_key_is_named_as_missing(tmp_path: Path, toml: str, expected: str) -> None:
    problem = _problem(toml, tmp_path)
    assert problem.endswith(expected) and "Field required" not in problem, problem


def test_a_nightlab_toml_that_is_a_folder_is_named_as_one(tmp_path: Path) -> None:
    (tmp_path / "nightlab.toml").mkdir()
    with pytest.raises(UserError, match=r"nightlab.toml: is a folder; nightlab.toml must be a file"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        # A byte-order mark, as Notepad saves UTF-8: "not valid TOML (Invalid statement ...)" before.
        (b"\xef\xbb\xbf" + BASE.encode(), ""),
        # UTF-16, or garbage: "not valid TOML ('utf-8' codec can't decode byte 0xff in position 0: ...)".
        (BASE.encode("utf-16"), "nightlab.toml: not UTF-8 text (byte 0xff at offset 0); save it as UTF-8"),
        (
            b'[target]\nrun = "\x80"\n',
            "nightlab.toml: not UTF-8 text (byte 0x80 at offset 16); save it as UTF-8",
        ),
    ],
)
def test_nightlab_toml_is_read_as_utf8_whatever_the_editor_saved(
    tmp_path: Path, encoded: bytes, expected: str
) -> None:
    (tmp_path / "nightlab.toml").write_bytes(encoded)
    try:
        assert load_config(tmp_path).metric.name == "val_loss" and expected == ""
    except UserError as exc:
        assert str(exc).endswith(expected) and expected, str(exc)
