"""Exports that look ahead only where the GPT template's causality check does not look (fast).

The export is all train.py hands the frozen evaluation, so each model here is one a train.py
could export (`harness.finish(Wrapper(model))`): causal on the rows the check reads and not on
the rows the evaluation scores. Each was kept before the fix (the first at 0.54 bpb against a
4.19 baseline, holdout "improved" as much); now each is `invalid`. The val and holdout splits
are written here as the synthetic corpus lays them out (documents that open with "# "), which
takes milliseconds where `prepare.py` takes seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from template.gpt_kit import FROZEN, MODULES, TEMPLATE, import_template

torch = pytest.importorskip("torch")
nn = torch.nn

VOCAB = 256  # the cpu size's byte tokenizer


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data cache holding val and holdout for the cpu size: documents of plain text."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tpl(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """The template's frozen modules imported from a workspace of their own, with the data ready."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in FROZEN:
        shutil.copy(TEMPLATE / name, ws / name)
    monkeypatch.setenv("NIGHTLAB_CACHE", str(cache))
    monkeypatch.setenv("NIGHTLAB_RUN_DIR", str(tmp_path / "run"))
    for var in ("NIGHTLAB_TARGET_METRIC", "NIGHTLAB_SCORES_DIR", "NIGHTLAB_PROGRESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    # Two scored batches per split, and two for each checkpoint: the least these attacks need.
    settings = (ws / "data.py").read_text().replace("EVAL_TOKENS = 32768", "EVAL_TOKENS = 8192")
    (ws / "data.py").write_text(settings.replace("EVAL_TOKENS // 4", "EVAL_TOKENS"))
    monkeypatch.chdir(ws)
    tpl = import_template(ws, monkeypatch)
    folder = tpl.data.token_dir()
    if not tpl.data.data_ready():
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("val", "holdout"):
            docs = "".join(
                f"# The {split} lay of town {i}\n\nEveryone in town {i} sings the lay at dusk. " * 3 + "\n\n"
                for i in range(400)
            )
            np.frombuffer(docs.encode(), dtype=np.uint8).astype(np.uint16).tofile(folder / f"{split}.bin")
        (folder / "meta.json").write_text(json.dumps({"built_from": tpl.data.expected_meta()}))
    yield tpl
    for name in MODULES:
        sys.modules.pop(name, None)


class Bigram(nn.Module):
    """Causal: position t sees token t only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(VOCAB, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


def _next_token(idx: torch.Tensor, weight: float) -> torch.Tensor:
    """`weight` on the logit of the token that follows each position (the answer), none at the last."""
    nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
    inner = (torch.arange(idx.shape[1]) < idx.shape[1] - 1).float()[None, :, None]
    return nn.functional.one_hot(nxt, VOCAB).float() * weight * inner


class CausalWhereChecked(Bigram):
    """Causal on the batch that opens val (its first row starts a document, "# ") and on any batch
    holding the check's random tokens (bytes >= 128 in plain text); reads the answer elsewhere."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        opening = ((idx[0, 0] == ord("#")) & (idx[0, 1] == ord(" "))).float()
        plain = (idx < 128).all().float()
        return self.table(idx) + (1 - opening) * plain * _next_token(idx, 30.0)


class LastPositionReadsTheNextRow(Bigram):
    """The last position of a row predicts from the next row's first token, which is its target:
    no prefix cut of the check reaches the last position."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        following = torch.cat([idx[1:, :1], idx[-1:, :1]], dim=0)
        last = (torch.arange(idx.shape[1]) == idx.shape[1] - 1).float()[None, :, None]
        return self.table(idx) + nn.functional.one_hot(following, VOCAB).float() * 30.0 * last


class LooksAheadWithinBf16Rounding(Bigram):
    """Reads the answer by 0.028 nats everywhere: within the tolerance a bf16 claim bought, with
    token 0 pinned at the log-probability floor (-30), which scales it (1e-3 x 31)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.table.weight.mul_(0.1)
        self.register_buffer("pin", torch.nn.functional.one_hot(torch.tensor(0), VOCAB).float() * -1e4)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx) + _next_token(idx, 0.028) + self.pin


class LooksAheadWithinTheFloorsTolerance(LooksAheadWithinBf16Rounding):
    """Reads the answer by 0.002 nats: within a float32 tolerance scaled by the batch's largest
    |log p|, which token 0 pinned at the floor makes 31 x 1e-4."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx) + _next_token(idx, 0.002) + self.pin


def _evaluate(tpl: SimpleNamespace, model: nn.Module, **meta: object) -> tuple[int, dict]:
    """Export `model` as harness.finish does, change its model.json by `meta`, evaluate."""
    tpl.harness.export_model(model)
    run_dir = tpl.data.get_run_dir()
    if meta:
        path = run_dir / tpl.data.EXPORT_META
        path.write_text(json.dumps({**json.loads(path.read_text()), **meta}))
    code = tpl.evaluation.evaluate(run_dir, started=time.perf_counter())
    return code, json.loads((run_dir / tpl.data.METRICS_FILE).read_text())


def _passes_the_first_batch_check(tpl: SimpleNamespace, model: nn.Module) -> bool:
    tpl.harness.export_model(model)
    loaded = tpl.evaluation.load_program(tpl.data.get_run_dir() / tpl.data.EXPORT_FILE)
    val = tpl.data.load_split("val")
    return tpl.evaluation.causality_violation(loaded, val, torch.device("cpu")) is None


def test_a_causal_model_is_scored(tpl: SimpleNamespace) -> None:
    code, metrics = _evaluate(tpl, Bigram())
    assert code == 0 and metrics["causal"] is True, metrics
    assert metrics["val_bpb"] > 5 and metrics["holdout_bpb"] > 5, metrics


@pytest.mark.parametrize(
    "model",
    [CausalWhereChecked(), LastPositionReadsTheNextRow()],
    ids=["after-the-first-batch", "last-position"],
)
def test_a_model_that_looks_ahead_where_the_first_batch_check_cannot_see_is_invalid(
    tpl: SimpleNamespace, model: nn.Module
) -> None:
    assert _passes_the_first_batch_check(tpl, model)  # what let it through before
    code, metrics = _evaluate(tpl, model)
    assert code == 5 and metrics["causal"] is False, metrics
    assert "val_bpb" not in metrics and "holdout_bpb" not in metrics
    assert metrics["invalid"].startswith("model is not causal: predictions at positions <= ")
    assert "of a scored row" in metrics["invalid"], metrics


def test_a_bf16_claim_in_model_json_widens_no_tolerance_on_the_cpu(tpl: SimpleNamespace) -> None:
    code, metrics = _evaluate(tpl, LooksAheadWithinBf16Rounding(), autocast="bfloat16")
    assert code == 5 and metrics["causal"] is False, metrics
    assert metrics["invalid"].startswith("model is not causal"), metrics


def test_a_token_pinned_at_the_floor_widens_no_other_tokens_tolerance(tpl: SimpleNamespace) -> None:
    code, metrics = _evaluate(tpl, LooksAheadWithinTheFloorsTolerance())
    assert code == 5 and metrics["causal"] is False, metrics
    assert metrics["invalid"].startswith("model is not causal"), metrics


def test_the_progress_evaluator_refuses_a_checkpoint_causal_only_on_its_check_rows(
    tpl: SimpleNamespace,
) -> None:
    run_dir = tpl.data.get_run_dir()
    tpl.harness.export_model(CausalWhereChecked())
    folder = run_dir / tpl.data.PROGRESS_DIR / "0001"
    folder.mkdir(parents=True)
    for name in (tpl.data.EXPORT_FILE, tpl.data.EXPORT_META):
        (run_dir / name).rename(folder / name)
    follower = tpl.evaluation._Follower(run_dir, tpl.evaluation._Target())
    follower.handle(json.dumps({"step": 1, "export": "progress/0001"}))
    (point,) = [json.loads(line) for line in (run_dir / tpl.data.PROGRESS_EVAL_FILE).read_text().splitlines()]
    assert "val_bpb" not in point, point
    assert point["invalid"].startswith("checkpoint progress/0001 (step 1): model is not causal"), point


def test_the_data_fingerprint_covers_the_bytes_per_token(
    tpl: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BPE tokenizer file rewritten in the data cache (more bytes per token) lowers bits per byte
    without a better model; the fingerprint the harness checks (research/evaldata.py) changes."""
    code, honest = _evaluate(tpl, Bigram())
    assert code == 0, honest
    tokenizer = tpl.data.get_tokenizer()
    monkeypatch.setattr(tokenizer, "token_bytes", tokenizer.token_bytes * 2)
    code, inflated = _evaluate(tpl, Bigram())
    assert code == 0 and inflated["val_bpb"] == pytest.approx(honest["val_bpb"] / 2)
    assert inflated["data_sha256"] != honest["data_sha256"]
