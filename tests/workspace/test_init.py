"""`nightlab init`: a research workspace from the GPT template, as a fresh git repository."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from helpers import git, nightlab

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def constant(text: str, name: str) -> str:
    match = re.search(rf"^{name} = (.+?)(\s+#.*)?$", text, re.MULTILINE)
    assert match, name
    return match.group(1)


def test_init_cpu_writes_a_committed_workspace(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    res = nightlab("init", str(root), "--size", "cpu")
    assert res.returncode == 0, res.stderr
    for name in ("train.py", "prepare.py", "program.md", "nightlab.toml", ".gitignore"):
        assert (root / name).is_file(), name
    assert not (root / "sizes.toml").exists()
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "rev-list", "--count", "HEAD") == "1"
    config = tomllib.loads((root / "nightlab.toml").read_text())
    assert config["target"]["editable"] == ["train.py"] and "prepare.py" in config["target"]["frozen"]
    assert ".nightlab/" in (root / ".gitignore").read_text()


def test_init_gpu_rewrites_only_the_size_constants(tmp_path: Path) -> None:
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert nightlab("init", str(cpu), "--size", "cpu").returncode == 0
    res = nightlab("init", str(gpu), "--size", "gpu")
    assert res.returncode == 0, res.stderr
    sizes = tomllib.loads((Path(__file__).parents[2] / "src/nightlab/templates/gpt/sizes.toml").read_text())
    for section, file in (("train", "train.py"), ("prepare", "prepare.py")):
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
        train = (root / "train.py").read_text()
        prepare = (root / "prepare.py").read_text()
        per_pass = int(constant(train, "DEVICE_BATCH_SIZE")) * int(constant(prepare, "SEQ_LEN"))
        domain = space["TOTAL_BATCH_SIZE"]
        assert domain["low"] % per_pass == 0 and domain["step"] % per_pass == 0, size
        assert space["ACTIVATION"]["choices"]  # the other declared domains are kept


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
        .replace('kind = "confirm"', 'kind = "greedy"')
    )
    toml.write_text(text)
    git(root, "commit", "-qam", "tiny budget")
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
