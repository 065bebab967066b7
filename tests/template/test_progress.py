"""Progress while a run trains: harness.Checkpoints (frozen, in the training process) and
`python evaluation.py --follow` (frozen, beside it), the FLOPs budget, and the final export
that reuses the first checkpoint's program.

The unit tests import the frozen files from a temporary workspace (conftest.py) and hand them
tiny models of their own; the evaluator always runs as its own process, as nightlab runs it.
"""

from __future__ import annotations

import hmac
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gpt_kit import run_script
from torch import nn


class Bigram(nn.Module):
    """Causal by construction: position t sees token t only."""

    def __init__(self, vocab: int = 256) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        self.scale = 1.0  # a plain attribute: changing it changes the forward, not the weights

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx) * self.scale


def direct_bpb(tpl: SimpleNamespace, model: Bigram) -> float:
    """Bits per byte of a bigram model on the progress evaluator's val prefix, computed here."""
    n = tpl.data.PROGRESS_EVAL_TOKENS
    val = torch.from_numpy(np.asarray(tpl.data.load_split("val")[: n + 1]).astype(np.int64))
    with torch.no_grad():
        nats = nn.functional.cross_entropy(model(val[:-1]), val[1:], reduction="sum").item()
    return nats / math.log(2) / n  # byte tokens: one byte each; row boundaries do not matter


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_dir() -> Path:
    return Path(os.environ["NIGHTLAB_RUN_DIR"])


def steps_budget(tpl: SimpleNamespace, steps: int) -> object:
    return tpl.harness.Budget(steps=steps)


# ---------------------------------------------------------------------------------------------
# The FLOPs budget


def test_flops_budget_from_the_environment(
    tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("NIGHTLAB_BUDGET_FLOPS", "2e9")
    budget = tpl.harness.get_budget()
    assert budget == tpl.harness.Budget(flops=2e9)
    assert budget.progress(999.0, 10**9, 10**6, 5e8) == 0.25
    assert not budget.exhausted(999.0, 10**9, 10**6, 1.999e9) and budget.exhausted(0.0, 0, 0, 2e9)
    # A train.py that counts no FLOPs would train until the timeout: it is stopped at once.
    with pytest.raises(SystemExit) as exc:
        budget.exhausted(1.0, 100, 1)
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "harness.py: NIGHTLAB_BUDGET_FLOPS is set but train.py passes no FLOPs count to "
        "budget.progress / budget.exhausted\n"
    )
    for bad in ("nan", "inf", "-1", "lots"):
        monkeypatch.setenv("NIGHTLAB_BUDGET_FLOPS", bad)
        with pytest.raises(SystemExit) as exc:
            tpl.harness.get_budget()
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"harness.py: NIGHTLAB_BUDGET_FLOPS={bad!r} ") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Checkpoints in the training process


def test_checkpoints_every_share_of_the_budget(tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTLAB_PROGRESS_EVERY", "0.25")
    tpl.prepare.ensure_data()
    model = Bigram()
    checkpoints = tpl.harness.Checkpoints(steps_budget(tpl, 8))
    at_step = {}
    for step in range(1, 9):
        at_step[step] = model.table.weight.detach().clone()
        assert checkpoints.after_step(model, 0.5 * step, 100 * step, step, 1e6 * step) is False
        with torch.no_grad():
            model.table.weight.add_(0.1)
    written = lines(run_dir() / "progress.jsonl")
    # At 2, 4 and 6 of 8 steps; none at the end of the budget (the final evaluation scores it).
    assert written == [
        {"step": s, "seconds": 0.5 * s, "tokens": 100 * s, "flops": 1e6 * s, "fraction": s / 8, "export": e}
        for s, e in ((2, "progress/0001"), (4, "progress/0002"), (6, "progress/0003"))
    ]
    first = run_dir() / "progress" / "0001"
    assert sorted(p.name for p in first.iterdir()) == ["model.json", "model.pt2"]
    assert json.loads((first / "model.json").read_text())["format"] == "torch.export"
    later = run_dir() / "progress" / "0003"
    assert sorted(p.name for p in later.iterdir()) == ["model.json", "weights.pt"]
    meta = json.loads((later / "model.json").read_text())
    assert meta["format"] == "weights" and meta["program"] == "progress/0001" and meta["file"] == "weights.pt"
    saved = torch.load(later / "weights.pt", weights_only=True)
    assert torch.equal(saved["table.weight"], at_step[6])
    assert checkpoints.count == 3 and checkpoints.seconds > 0


def test_checkpoints_every_interval_of_training_seconds(
    tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTLAB_EVAL_INTERVAL_SECONDS", "1.0")
    checkpoints = tpl.harness.Checkpoints(tpl.harness.Budget(seconds=3.0))
    for seconds in (0.4, 0.9, 1.3, 1.8, 2.6, 3.1):  # one step may cross several intervals
        checkpoints.after_step(Bigram(), seconds, 0, 0)
    # After the first step past each interval, the end of the budget included (time to target).
    assert [p["seconds"] for p in lines(run_dir() / "progress.jsonl")] == [1.3, 2.6, 3.1]


def test_no_checkpoint_without_the_variables_and_stale_files_are_removed(tpl: SimpleNamespace) -> None:
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("stop", "progress.jsonl", "progress.eval.jsonl", "progress.done"):
        (folder / name).write_text("left by an earlier run\n")
    (folder / "progress" / "0001").mkdir(parents=True)
    checkpoints = tpl.harness.Checkpoints(steps_budget(tpl, 4))
    assert sorted(p.name for p in folder.iterdir()) == []
    assert not any(checkpoints.after_step(Bigram(), 1.0 * s, s, s) for s in range(1, 5))
    assert list(folder.iterdir()) == [] and checkpoints.count == 0


def test_the_stop_file_stops_training(tpl: SimpleNamespace) -> None:
    checkpoints = tpl.harness.Checkpoints(steps_budget(tpl, 10))
    assert checkpoints.after_step(Bigram(), 1.0, 1, 1) is False
    (run_dir() / "stop").touch()  # what the progress evaluator does at the target
    assert checkpoints.after_step(Bigram(), 2.0, 2, 2) is True


def test_a_model_whose_weights_change_shape_is_traced_again(
    tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTLAB_PROGRESS_EVERY", "0.25")
    tpl.prepare.ensure_data()
    model = Bigram()
    checkpoints = tpl.harness.Checkpoints(steps_budget(tpl, 4))
    checkpoints.after_step(model, 1.0, 1, 1)
    model.table = nn.Embedding(256, 256)  # same shape: weights only
    checkpoints.after_step(model, 1.0, 1, 2)
    model.extra = nn.Linear(2, 2)  # new weights: the program no longer fits them
    checkpoints.after_step(model, 1.0, 1, 3)
    formats = [
        json.loads((run_dir() / f"progress/000{i}/model.json").read_text())["format"] for i in (1, 2, 3)
    ]
    assert formats == ["torch.export", "weights", "torch.export"]


def test_final_export_reuses_the_checkpoint_program_only_when_it_still_fits(
    tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("NIGHTLAB_PROGRESS_EVERY", "0.5")
    tpl.prepare.ensure_data()
    torch.manual_seed(0)
    model = Bigram()
    checkpoints = tpl.harness.Checkpoints(steps_budget(tpl, 2))
    checkpoints.after_step(model, 1.0, 1, 1)
    with torch.no_grad():
        model.table.weight.mul_(3.0)  # trained further: new values, same tensors
    idx = torch.randint(0, 256, (16, tpl.data.SEQ_LEN))

    def exported_logits() -> torch.Tensor:
        return torch.export.load(str(run_dir() / "model.pt2")).module()(idx)

    tpl.harness.export_model(model, reuse=checkpoints.program)
    assert "(the first checkpoint's program with the final weights)" in capsys.readouterr().out
    assert torch.equal(exported_logits(), model(idx))
    model.scale = 0.5  # the forward changed after the checkpoint: its program would be wrong
    tpl.harness.export_model(model, reuse=checkpoints.program)
    assert "(traced)" in capsys.readouterr().out
    assert torch.allclose(exported_logits(), model(idx))


# ---------------------------------------------------------------------------------------------
# The progress evaluator: python evaluation.py --follow


def test_the_evaluator_scores_checkpoints_skips_broken_ones_and_cleans_up(
    workspace: Path, tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTLAB_PROGRESS_EVERY", "0.2")
    tpl.prepare.ensure_data()
    torch.manual_seed(0)
    model = Bigram()
    checkpoints = tpl.harness.Checkpoints(steps_budget(tpl, 5))
    expected = []
    for step in range(1, 5):
        checkpoints.after_step(model, float(step), 10 * step, step, 1e3 * step)
        expected.append(direct_bpb(tpl, model))
        with torch.no_grad():
            model.table.weight.mul_(0.5)
    folder = run_dir()
    # A checkpoint a killed training process left half-written, and lines that are no checkpoint.
    weights = folder / "progress" / "0003" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    outside = folder / "elsewhere"
    outside.mkdir()
    with (folder / "progress.jsonl").open("a") as fh:
        fh.write('{"step": 9, "export": "elsewhere"}\nnot json\n{"step": 10, "export": "progress/0009"}\n')
    (folder / "progress.done").touch()  # training has ended: score what is there, then exit

    proc = run_script(workspace, "evaluation.py", "--follow", env={"NIGHTLAB_PROGRESS_EVERY": "0.2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scored = lines(folder / "progress.eval.jsonl")
    assert [p["export"] for p in scored] == ["progress/0001", "progress/0002", "progress/0004"]
    for point, want in zip(scored, [expected[0], expected[1], expected[3]], strict=True):
        assert point["val_bpb"] == pytest.approx(want, rel=1e-5)
        assert set(point) == {"step", "seconds", "tokens", "flops", "fraction", "export", "val_bpb"}
    fourth = json.loads((folder / "progress.jsonl").read_text().splitlines()[3])
    assert scored[2] == {**fourth, "val_bpb": scored[2]["val_bpb"]}  # its line, plus the metric
    log = proc.stdout.splitlines()
    assert sum("progress/0003 skipped" in line for line in log) == 1, proc.stdout
    assert sum("progress/0009 skipped" in line for line in log) == 1
    assert sum(line.startswith("progress: skipped a line") for line in log) == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (folder / "progress").exists() and outside.is_dir()  # its own files only
    assert (folder / "progress.jsonl").exists() and not (folder / "stop").exists()


class Peeking(nn.Module):
    """A bigram that also reads the next token when its gate buffer is on: causal while it is 0.

    The gate is a weight of the checkpoint (a persistent buffer), so the program traced at the
    first checkpoint is the same for every later one: only their weights switch the look-ahead on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(256, 256)
        self.register_buffer("gate", torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        ahead = nn.functional.one_hot(torch.roll(idx, -1, dims=1), 256).float()
        return self.table(idx) + self.gate * 30.0 * ahead


def test_a_checkpoint_whose_weights_look_ahead_is_refused_and_nothing_after_it_is_scored(
    workspace: Path, tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NIGHTLAB_PROGRESS_EVERY", "0.25")
    tpl.prepare.ensure_data()
    torch.manual_seed(0)
    model = Peeking()
    checkpoints = tpl.harness.Checkpoints(steps_budget(tpl, 8))
    for step, gate in ((2, 0.0), (4, 1.0), (6, 0.0)):  # the second checkpoint looks ahead
        model.gate.fill_(gate)
        checkpoints.after_step(model, 1.0 * step, 10 * step, step)
    formats = [
        json.loads((run_dir() / f"progress/000{i}/model.json").read_text())["format"] for i in (1, 2, 3)
    ]
    assert formats == ["torch.export", "weights", "weights"]  # one program: only the weights differ
    (run_dir() / "progress.done").touch()
    scores = tmp_path / "scores"  # where nightlab has it write: out of the training process's sight
    scores.mkdir()
    env = {
        "NIGHTLAB_PROGRESS_EVERY": "0.25",
        "NIGHTLAB_SCORES_DIR": str(scores),
        "NIGHTLAB_PROGRESS_KEY": "k",
    }
    proc = run_script(workspace, "evaluation.py", "--follow", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (run_dir() / "progress.eval.jsonl").exists()
    first, refused = lines(scores / "progress.eval.jsonl")  # nothing for the third
    assert first["export"] == "progress/0001" and first["val_bpb"] > 1.0
    assert refused["export"] == "progress/0002" and "val_bpb" not in refused
    assert refused["invalid"].startswith(
        "checkpoint progress/0002 (step 4): model is not causal: predictions"
    )
    for point in (first, refused):  # signed: the harness takes the refusal as the evaluator's
        body = json.dumps({k: v for k, v in point.items() if k != "sig"}, sort_keys=True).encode()
        assert point["sig"] == hmac.new(b"k", body, "sha256").hexdigest()
    assert "progress: progress/0003 not scored (an earlier checkpoint was refused)" in proc.stdout
    assert not (run_dir() / "progress").exists() and "Traceback" not in proc.stdout + proc.stderr


class Counting(Peeking):
    """Causal, but keeps a count of its calls in a buffer it writes as it runs (state between calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.table(idx)


@pytest.mark.parametrize(
    ("make", "reason"),
    [(Peeking, "model is not causal: predictions"), (Counting, "the exported program changes its own state")],
    ids=["looks-ahead", "keeps-state"],
)
def test_a_checkpoint_program_that_fails_the_final_exports_checks_is_refused(
    workspace: Path, tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, make: type, reason: str
) -> None:
    monkeypatch.setenv("NIGHTLAB_PROGRESS_EVERY", "0.5")
    tpl.prepare.ensure_data()
    model = make()
    model.gate.fill_(1.0)  # traced looking ahead (Peeking): the first checkpoint's program itself
    tpl.harness.Checkpoints(steps_budget(tpl, 4)).after_step(model, 2.0, 20, 2)
    (run_dir() / "progress.done").touch()
    proc = run_script(workspace, "evaluation.py", "--follow", env={"NIGHTLAB_PROGRESS_EVERY": "0.5"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (refused,) = lines(run_dir() / "progress.eval.jsonl")  # by hand: in the run directory
    assert refused["invalid"].startswith(f"checkpoint progress/0001 (step 2): {reason}"), refused


def test_the_evaluator_creates_the_stop_file_at_the_target(
    workspace: Path, tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTLAB_EVAL_INTERVAL_SECONDS", "1")
    tpl.prepare.ensure_data()
    torch.manual_seed(0)
    model = Bigram()
    checkpoints = tpl.harness.Checkpoints(tpl.harness.Budget(seconds=4.0))
    for seconds in (1.0, 2.0):
        checkpoints.after_step(model, seconds, 0, 0)
        with torch.no_grad():
            model.table.weight.zero_()  # the second checkpoint scores exactly 8 bits per byte
    (run_dir() / "progress.done").touch()
    env = {"NIGHTLAB_EVAL_INTERVAL_SECONDS": "1", "NIGHTLAB_TARGET_METRIC": "8.001"}
    proc = run_script(workspace, "evaluation.py", "--follow", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    values = [p["val_bpb"] for p in lines(run_dir() / "progress.eval.jsonl")]
    assert values[0] > 8.0 and values[1] == pytest.approx(8.0, abs=1e-6)
    assert (run_dir() / "stop").exists()
    assert "progress: target 8.001 reached at progress/0002: stop created" in proc.stdout
    assert checkpoints.after_step(model, 3.0, 0, 0) is True


def test_the_evaluator_refuses_a_bad_target_in_one_line(workspace: Path, tpl: SimpleNamespace) -> None:
    env = {"NIGHTLAB_PROGRESS_EVERY": "0.25", "NIGHTLAB_TARGET_METRIC": "low"}
    proc = run_script(workspace, "evaluation.py", "--follow", env=env)
    assert proc.returncode == 2
    assert proc.stderr == "evaluation.py: NIGHTLAB_TARGET_METRIC='low' is not a number\n"
    usage = run_script(workspace, "evaluation.py", "--folow")
    assert usage.returncode == 2 and usage.stderr.splitlines() == [
        "evaluation.py: unknown arguments --folow",
        "usage: python evaluation.py [--follow]",
    ]


def test_the_evaluator_ends_at_once_when_no_checkpoint_is_asked_for(
    workspace: Path, tpl: SimpleNamespace
) -> None:
    proc = run_script(workspace, "evaluation.py", "--follow", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("progress: no checkpoints asked for")
