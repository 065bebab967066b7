"""What train.py calls at run time (harness.py): train loader, budget, seed, checks and finish.

Each test copies the template's frozen files into a temporary workspace and imports them from
there (conftest.py). The models handed to finish() are tiny modules of the tests' own, so nothing
here depends on train.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gpt_kit import run_script

# ---------------------------------------------------------------------------------------------
# Train loader, budget, seed, run dir, loss/OOM checks


def test_train_loader_serves_shifted_train_rows_only(
    tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    tpl.prepare.ensure_data()
    opened: list[str] = []
    real = np.memmap

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tpl.data.np, "memmap", spy)
    loader = tpl.harness.make_train_loader(4, 32, seed=1)
    x, y = next(loader)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    train = np.asarray(real(tpl.data.token_dir() / "train.bin", dtype=np.uint16, mode="r"))
    row = x[0].numpy()
    starts = np.flatnonzero(train[: len(train) - 33] == row[0])
    assert any(
        (train[s : s + 32] == row).all() and (train[s + 1 : s + 33] == y[0].numpy()).all() for s in starts
    )
    assert opened == ["train.bin"]
    x2, _ = next(tpl.harness.make_train_loader(4, 32, seed=1))
    assert torch.equal(x, x2)
    assert not torch.equal(x, next(tpl.harness.make_train_loader(4, 32, seed=2))[0])


def test_the_loader_builds_the_synthetic_data_which_data_py_only_reads(
    tpl: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`python train.py` works in a fresh folder; the evaluation's side never writes data."""
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "fresh"))
    assert not tpl.data.data_ready()
    with pytest.raises(SystemExit) as exc:
        tpl.data.load_split("val")
    assert exc.value.code == 1
    assert capsys.readouterr().err == (
        "data.py: no prepared data for DATASET='synthetic'; run `python prepare.py` first\n"
    )
    x, y = next(tpl.harness.make_train_loader(2, 16))
    assert tpl.data.data_ready() and x.shape == y.shape == (2, 16)


def test_budget_from_environment(
    tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert tpl.harness.get_budget() == tpl.harness.Budget(seconds=60.0)
    monkeypatch.setenv("NIGHTLAB_BUDGET_TOKENS", "1000")
    budget = tpl.harness.get_budget()
    assert budget.seconds is None and budget.tokens == 1000
    assert budget.progress(999.0, 250, 3) == 0.25 and not budget.exhausted(999.0, 999, 3)
    assert budget.exhausted(0.0, 1000, 0) and budget.progress(0.0, 5000, 0) == 1.0
    monkeypatch.setenv("NIGHTLAB_BUDGET_SECONDS", "10")
    both = tpl.harness.get_budget()
    assert both.progress(5.0, 100, 0) == 0.5 and both.exhausted(10.0, 0, 0)
    monkeypatch.setenv("NIGHTLAB_BUDGET_STEPS", "ten")
    with pytest.raises(SystemExit) as exc:
        tpl.harness.get_budget()
    assert exc.value.code == 2
    assert capsys.readouterr().err == "harness.py: NIGHTLAB_BUDGET_STEPS='ten' is not a number\n"


def test_seed_and_run_dir(tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert tpl.harness.get_seed() == 42
    monkeypatch.setenv("NIGHTLAB_SEED", "7")
    assert tpl.harness.get_seed() == 7
    tpl.harness.seed_everything(7)
    a = (torch.rand(3), np.random.rand(), __import__("random").random())
    tpl.harness.seed_everything(7)
    b = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    monkeypatch.setenv("NIGHTLAB_RUN_DIR", str(tmp_path / "deep" / "run"))
    assert tpl.data.get_run_dir().is_dir()
    monkeypatch.delenv("NIGHTLAB_RUN_DIR")
    assert tpl.data.get_run_dir().resolve() == (Path.cwd() / "run").resolve()


def test_check_loss_stops_on_nan_and_explosion(tpl: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    tpl.harness.check_loss(5.5, 0)
    for bad in (float("nan"), float("inf"), 50.0):
        with pytest.raises(SystemExit) as exc:
            tpl.harness.check_loss(bad, 12)
        assert exc.value.code == 3
        assert re.search(r"^status: nan \(.*step 12\)$", capsys.readouterr().out, re.M)


def test_oom_guard(tpl: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc, tpl.harness.oom_guard():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert exc.value.code == 4
    assert capsys.readouterr().out.startswith("status: oom (CUDA out of memory. Tried to allocate 2.00 GiB)")
    with pytest.raises(ValueError), tpl.harness.oom_guard():
        raise ValueError("not memory")


FINISH_SCRIPT = """
import json, sys, torch, harness
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(256, 256)
    def forward(self, idx):
        logits = self.e(idx)
        if "peek" in sys.argv:  # position t also sees token t + 1: not causal
            logits = logits + self.e(torch.roll(idx, -1, dims=1))
        return logits
print(json.dumps({"returned": harness.finish(M())}))
"""


@pytest.mark.slow
def test_finish_evaluates_in_a_child_process_unless_separate(
    workspace: Path, tpl: SimpleNamespace, tmp_path: Path
) -> None:
    tpl.prepare.ensure_data()
    (workspace / "fake_train.py").write_text(FINISH_SCRIPT)
    plain = run_script(workspace, "fake_train.py")
    assert plain.returncode == 0, plain.stderr
    assert re.search(r"^evaluation: \d+\.\ds in a separate process, 32,768 val tokens$", plain.stdout, re.M)
    returned = json.loads(plain.stdout.splitlines()[-1])["returned"]
    assert 7.0 < returned < 12.0  # an untrained embedding: about log2(256) = 8 bits per byte
    run_dir = Path(os.environ["NIGHTLAB_RUN_DIR"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["causal"] is True and metrics["val_bpb"] == returned
    # Under nightlab: export only, no val_bpb, no metrics.json; then nightlab evaluates.
    separate = run_script(workspace, "fake_train.py", env={"NIGHTLAB_EVAL_SEPARATE": "1"})
    assert separate.returncode == 0, separate.stderr
    assert json.loads(separate.stdout.splitlines()[-1]) == {"returned": None}
    assert not (run_dir / "metrics.json").exists() and (run_dir / "model.pt2").exists()
    evaluated = run_script(workspace, "evaluation.py")
    assert evaluated.returncode == 0, evaluated.stderr
    assert re.search(r"^val_bpb: \d+\.\d{6}$", evaluated.stdout, re.M)


@pytest.mark.slow
def test_finish_of_an_invalid_model_exits_5_with_a_status_line(workspace: Path, tpl) -> None:
    tpl.prepare.ensure_data()
    (workspace / "fake_train.py").write_text(FINISH_SCRIPT)
    proc = run_script(workspace, "fake_train.py", "peek")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert re.search(r"^status: invalid \(model is not causal: predictions at positions", proc.stdout, re.M)
    assert "returned" not in proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_train_loader(tpl: SimpleNamespace) -> None:
    x, y = next(tpl.harness.make_train_loader(4, 32, device="cuda", seed=0))
    assert x.is_cuda and y.is_cuda and torch.equal(x[:, 1:], y[:, :-1])


def test_a_budget_count_train_py_under_reports_is_caught_by_the_harness(
    tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.py reports what it trained to the budget; dividing its FLOPs per token by 4 trained
    4x the budget and was kept (found from outside). The harness's own counts catch it."""
    harness = tpl.harness
    model = torch.nn.Sequential(
        torch.nn.Embedding(256, 16), torch.nn.Linear(16, 32), torch.nn.Linear(32, 256)
    )
    per_token = 6 * (16 * 32 + 32 * 256)  # the embedding table is a lookup: not counted
    monkeypatch.setitem(harness.SERVED, "tokens", 10_000)
    monkeypatch.setitem(harness.SERVED, "batch", 512)
    monkeypatch.setitem(harness.REPORTED, "tokens", None)
    budget = harness.Budget(flops=1e9)
    assert "never asked the budget" in harness.budget_overspent(model, budget)
    budget.progress(1.0, 10_000, 5, 1.2 * per_token * 10_000)  # honest: attention on top
    assert harness.budget_overspent(model, budget) is None
    budget.progress(1.0, 10_000, 5, per_token * 10_000 / 4)
    assert "under-counts what it trains" in harness.budget_overspent(model, budget)
    budget.progress(1.0, 4_000, 5, 1.2 * per_token * 4_000)
    assert "served 10,000 tokens but train.py counted 4,000" in harness.budget_overspent(model, budget)
    assert harness.budget_overspent(model, harness.Budget(seconds=5)) is None  # its own clock
