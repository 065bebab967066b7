"""`nightlab init`: a research workspace from the GPT template, as a fresh git repository."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import git, nightlab
from nightlab.code.knobs import find_knobs
from nightlab.errors import UserError
from nightlab.executor import sandbox
from nightlab.workspace import init as init_module
from nightlab.workspace.init import commit_all, init_workspace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TEMPLATE = Path(__file__).parents[2] / "src/nightlab/templates/gpt"
SIZES = tomllib.loads((TEMPLATE / "sizes.toml").read_text())
NOT_FILES = ("budget", "space")  # sizes.toml tables that go into nightlab.toml, not a .py file


def constant(text: str, name: str) -> str:
    match = re.search(rf"^{name} = (.+?)(\s+#.*)?$", text, re.MULTILINE)
    assert match, name
    return match.group(1)


def size_files(size: str) -> dict[str, str]:
    """``{table: file}`` of a size's constants: ``[gpu.train]`` -> train.py, whatever the names."""
    return {table: f"{table}.py" for table in SIZES[size] if table not in NOT_FILES}


def defining(root: Path, name: str) -> list[Path]:
    """The workspace's Python files that define the constant ``name``."""
    return [
        p
        for p in sorted(root.rglob("*.py"))
        if any(k.name == name for k in find_knobs(p.read_text(), p.name))
    ]


def knob(root: Path, name: str) -> str:
    """The literal of ``name`` in the one file that defines it."""
    (path,) = defining(root, name)
    return constant(path.read_text(), name)


def test_init_cpu_writes_a_committed_workspace(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    res = nightlab("init", str(root), "--size", "cpu")
    assert res.returncode == 0, res.stderr
    for name in (
        "train.py",
        "prepare.py",
        "program.md",
        "nightlab.toml",
        ".gitignore",
        *size_files("cpu").values(),
    ):
        assert (root / name).is_file(), name
    assert not (root / "sizes.toml").exists()
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "rev-list", "--count", "HEAD") == "1"
    config = tomllib.loads((root / "nightlab.toml").read_text())
    assert config["target"]["editable"] == ["train.py"] and "prepare.py" in config["target"]["frozen"]
    for file in size_files("cpu").values():  # the size's files other than train.py are frozen
        assert file in config["target"]["editable"] + config["target"]["frozen"], file
    assert ".nightlab/" in (root / ".gitignore").read_text()


def test_init_gpu_rewrites_only_the_size_constants(tmp_path: Path) -> None:
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert nightlab("init", str(cpu), "--size", "cpu").returncode == 0
    res = nightlab("init", str(gpu), "--size", "gpu")
    assert res.returncode == 0, res.stderr
    sizes = SIZES
    for section, file in size_files("gpu").items():
        text = (gpu / file).read_text()
        for name, value in sizes["gpu"][section].items():
            assert constant(text, name) == (json.dumps(value) if isinstance(value, str) else repr(value)), (
                name
            )
        # Everything but the rewritten literals is byte-for-byte the cpu file.
        cpu_lines = (cpu / file).read_text().splitlines()
        gpu_lines = text.splitlines()
        assert len(cpu_lines) == len(gpu_lines)
        changed = [a for a, b in zip(cpu_lines, gpu_lines, strict=True) if a != b]
        assert all(line.split(" = ")[0] in sizes["gpu"][section] for line in changed)
    budget = tomllib.loads((gpu / "nightlab.toml").read_text())["budget"]
    assert budget["seconds"] == sizes["gpu"]["budget"]["seconds"]
    assert constant((gpu / "train.py").read_text(), "DEPTH") == "8"
    # [gpu.space] moves the batch-size domain with the size: multiples of one device pass
    for root, size in ((cpu, "cpu"), (gpu, "gpu")):
        space = tomllib.loads((root / "nightlab.toml").read_text())["agent"]["space"]
        assert space["TOTAL_BATCH_SIZE"] == sizes[size]["space"]["TOTAL_BATCH_SIZE"]
        per_pass = int(knob(root, "DEVICE_BATCH_SIZE")) * int(knob(root, "SEQ_LEN"))
        domain = space["TOTAL_BATCH_SIZE"]
        assert domain["low"] % per_pass == 0 and domain["step"] % per_pass == 0, size
        assert space["ACTIVATION"]["choices"]  # the other declared domains are kept


def test_init_dataset_sets_only_the_dataset_constant_after_the_size(tmp_path: Path) -> None:
    plain, named = tmp_path / "plain", tmp_path / "named"
    assert nightlab("init", str(plain), "--size", "gpu").returncode == 0
    res = nightlab("init", str(named), "--size", "gpu", "--dataset", "tinystories")
    assert res.returncode == 0, res.stderr
    (holder,) = defining(named, "DATASET")
    assert knob(plain, "DATASET") == json.dumps(SIZES["gpu"][holder.stem]["DATASET"])  # the size's value...
    assert knob(named, "DATASET") == '"tinystories"'  # ...then --dataset's
    lines = zip((plain / holder.name).read_text().splitlines(), holder.read_text().splitlines(), strict=True)
    (diff,) = [(a, b) for a, b in lines if a != b]  # one line changed, and it is DATASET's
    assert all(line.startswith("DATASET = ") for line in diff)
    others = {p.relative_to(named) for p in named.rglob("*") if ".git" not in p.parts and p != holder}
    for rel in others:
        if (named / rel).is_file():
            assert (named / rel).read_bytes() == (plain / rel).read_bytes(), rel
    assert git(named, "status", "--porcelain") == ""


def test_init_dataset_path_is_made_absolute_when_it_exists(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("some text\n")
    res = nightlab("init", "lab", "--size", "cpu", "--dataset", "corpus", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert knob(tmp_path / "lab", "DATASET") == json.dumps(str((tmp_path / "corpus").resolve()))
    elsewhere = "/data/not/on/this/machine"  # e.g. where a cluster's nodes keep it
    res = nightlab("init", "lab2", "--size", "cpu", "--dataset", elsewhere, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert knob(tmp_path / "lab2", "DATASET") == json.dumps(elsewhere)  # stored as given...
    assert f"note: --dataset {elsewhere} does not exist on this machine" in " ".join(res.stdout.split())


def test_init_dataset_refuses_a_name_the_template_does_not_know(tmp_path: Path) -> None:
    """A bare word that is no dataset of the template and no path here is a typo: one line, exit
    2, nothing written (before, the night found out at its setup, naming prepare.py's flag)."""
    res = nightlab("init", "lab", "--size", "cpu", "--dataset", "tinystoreis", cwd=tmp_path)
    line = res.stderr.strip()
    assert res.returncode == 2 and "\n" not in line, res.stdout + res.stderr
    assert "--dataset tinystoreis: neither a dataset of template gpt (synthetic, climbmix" in line, line
    assert not (tmp_path / "lab").exists()
    # The names init accepts are the ones the template's preparation knows.
    spec = importlib.util.spec_from_file_location("gpt_sources", TEMPLATE / "sources.py")
    sources = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sources)
    names = re.search(r"(?m)^DATASET_NAMES = (.*)$", (TEMPLATE / "data.py").read_text()).group(1)
    assert set(ast.literal_eval(names)) == {"synthetic", *sources.DOWNLOADS}


def test_init_dataset_needs_a_template_with_a_dataset_constant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "templates" / "tiny"
    template.mkdir(parents=True)
    (template / "train.py").write_text("LR = 0.1\n")
    (template / "nightlab.toml").write_text('[target]\neditable = ["train.py"]\n')
    monkeypatch.setattr(init_module, "template_dir", lambda name: template)
    with pytest.raises(UserError, match="template tiny has no DATASET constant") as caught:
        init_workspace(tmp_path / "lab", template="tiny", dataset="climbmix")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "lab").exists()  # refused before anything was written
    with pytest.raises(UserError, match="--dataset is empty"):
        init_workspace(tmp_path / "lab", template="tiny", dataset=" ")
    init_workspace(tmp_path / "lab", template="tiny")  # without --dataset the template is fine
    assert git(tmp_path / "lab", "log", "--format=%s") == "nightlab init (tiny)"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--size", "tpu"], "--size 'tpu' unknown"),
        (["--template", "nope"], "--template 'nope' unknown"),
    ],
)
def test_init_bad_options_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    res = nightlab("init", str(tmp_path / "lab"), *args)
    assert res.returncode == 2
    assert expected in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_init_refuses_a_non_empty_directory_unless_forced(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    (root / "notes.txt").write_text("mine\n")
    res = nightlab("init", str(root))
    assert res.returncode == 2 and "not empty" in res.stderr and "--force" in res.stderr
    assert "own training script" in res.stderr and "nightlab.toml" in res.stderr  # no init needed
    assert nightlab("init", str(root), "--size", "cpu", "--force").returncode == 0
    assert (root / "notes.txt").read_text() == "mine\n"
    assert (root / "train.py").is_file()


@pytest.mark.slow
def test_fresh_template_workspace_runs_under_the_harness(tmp_path: Path) -> None:
    """init, then a tiny-budget session of the real GPT template: baseline plus one candidate."""
    root = tmp_path / "lab"
    assert nightlab("init", str(root), "--size", "cpu").returncode == 0
    toml = root / "nightlab.toml"
    text = (
        toml.read_text()
        .replace("seconds = 60\n", "steps = 3\n")
        .replace('kind = "confirm"', 'kind = "greedy"\nbaseline_runs = 1\nremeasure = 0')
    )
    toml.write_text(text)
    git(root, "commit", "-qam", "tiny budget")  # one run each: the report runs have tests of their own
    env = {"NIGHTLAB_CACHE": str(tmp_path / "cache")}
    res = nightlab("run", str(root), "--plain", "-n", "1", env=env, timeout=600)
    assert res.returncode == 0, res.stderr + res.stdout[-2000:]
    status = json.loads(nightlab("status", str(root), "--json", env=env).stdout)
    kinds = [(e["kind"], e["status"]) for e in status["experiments"]]
    assert kinds[0] == ("baseline", "ok") and len(kinds) == 2
    baseline = status["experiments"][0]
    assert 1.0 < baseline["metric"] < 8.5  # bits per byte of a barely trained byte-level model
    metrics = json.loads((root / ".nightlab/runs/0001/0/metrics.json").read_text())
    assert metrics["causal"] is True and "holdout_bpb" in metrics
    # Under the sandbox the progress evaluator, warm since training started, scored it.
    eval_log = (root / ".nightlab/runs/0001/0/eval.log").read_text()
    warm = eval_log.startswith("# the final evaluation, by the warm progress evaluator")
    assert warm == sandbox.detect().complete, eval_log


def test_commit_all_uses_the_nightlab_identity_when_git_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine where git was never configured still gets its first commit."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "lab"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "a.txt").write_text("a\n")
    (root / "b.txt").write_text("b\n")
    commit_all(root, "only a", paths=["a.txt"])
    log = subprocess.run(
        ["git", "log", "--format=%an <%ae> %s", "--name-only"], cwd=root, capture_output=True, text=True
    ).stdout.split()
    assert log[:4] == ["nightlab", "<nightlab@localhost>", "only", "a"] and "b.txt" not in log
    commit_all(root, "the rest")
    assert (
        subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
        == ""
    )
    with pytest.raises(UserError, match="git commit failed in .*lab: nothing to commit"):
        commit_all(root, "nothing left to commit")
