"""The frozen half of the GPT template: data, tokenizers, loader, budget, export and evaluation.

Each test copies the template's frozen files into a temporary workspace and imports prepare.py
from there (as train.py would), with NIGHTLAB_CACHE pointing at a temporary cache. The models are
tiny modules defined here, so nothing depends on train.py.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import set_constants  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[2] / "src" / "nightlab" / "templates" / "gpt"
FROZEN = ("prepare.py", "corpus.py", "sources.py", "tokenizer.py", "evaluation.py")
MODULES = ("prepare", "corpus", "sources", "tokenizer", "evaluation")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the default synthetic data: generating it once keeps the suite fast."""
    return tmp_path_factory.mktemp("cache")


def _load(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    for name in MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(workspace))
    module = importlib.import_module("prepare")
    return module


@pytest.fixture
def workspace(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in FROZEN:
        shutil.copy(TEMPLATE / name, ws / name)
    monkeypatch.setenv("NIGHTLAB_CACHE", str(shared_cache))
    monkeypatch.setenv("NIGHTLAB_RUN_DIR", str(tmp_path / "run"))
    for var in (
        "NIGHTLAB_BUDGET_SECONDS",
        "NIGHTLAB_BUDGET_TOKENS",
        "NIGHTLAB_BUDGET_STEPS",
        "NIGHTLAB_SEED",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("NIGHTLAB_EVAL_SEPARATE", raising=False)
    monkeypatch.chdir(ws)
    yield ws
    for name in MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def prep(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    """prepare.py imported from the workspace, default (cpu) constants."""
    return _load(workspace, monkeypatch)


def run_prepare(
    workspace: Path, *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "prepare.py", *args],
        cwd=workspace,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def evaluate(run_dir: Path) -> int:
    """`python prepare.py evaluate`, in this process (prepare is already imported from the workspace)."""
    return importlib.import_module("evaluation").evaluate(run_dir, started=time.perf_counter())


# ---------------------------------------------------------------------------------------------
# Tiny models: model(idx [B, T]) -> logits [B, T, V]


class Uniform(nn.Module):
    """Equal logits everywhere: exactly log2(256) = 8 bits per byte."""

    def __init__(self, vocab: int = 256) -> None:
        super().__init__()
        self.vocab = vocab
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(idx.shape[0], idx.shape[1], self.vocab) * 1.0


class Bigram(nn.Module):
    """Causal by construction: position t sees token t only."""

    def __init__(self, vocab: int = 256) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


class PeeksAhead(Bigram):
    """Cheats: position t also sees token t+1 (the one it should predict)."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        nxt = torch.cat([idx[:, 1:], idx[:, :1]], dim=1)
        return self.table(idx) + 5.0 * nn.functional.one_hot(nxt, self.table.num_embeddings).float()


class PeeksAcrossRows(Bigram):
    """Cheats subtly: every row sees the mean embedding of the whole batch (the rows that follow)."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        emb = self.table(idx)
        return emb + emb.mean(dim=(0, 1), keepdim=True)


class WrongVocab(Bigram):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)[..., :100]


# ---------------------------------------------------------------------------------------------
# Synthetic corpus


def test_corpus_is_deterministic_across_processes(workspace: Path) -> None:
    code = "import corpus, hashlib; print(hashlib.sha256(''.join(corpus.generate('val', 50000)).encode()).hexdigest())"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=workspace,
            env=dict(os.environ, PYTHONHASHSEED=seed),
            capture_output=True,
            text=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1 and len(outs.pop().strip()) == 64


def test_splits_share_no_document_and_have_long_range_structure(prep) -> None:
    import corpus

    docs = {split: [corpus.document(split, i) for i in range(300)] for split in ("train", "val", "holdout")}
    assert docs["train"][:3] == [corpus.document("train", i) for i in range(3)]
    sets = {split: set(d) for split, d in docs.items()}
    assert (
        not sets["train"] & sets["val"]
        and not sets["train"] & sets["holdout"]
        and not sets["val"] & sets["holdout"]
    )
    text = "\n".join(docs["val"])
    assert re.search(r"gives \d+ \w+ to \w+\. Now \w+ has \d+ and \w+ has \d+ \w+\.", text)
    assert " She " in text and " He " in text


class _Replay:
    """Reads a synthetic document sentence by sentence, tracking what a careful reader would:
    who each person is (gender from the name, home town), who "he"/"she" refers to, and how many
    items each person holds. Every stated fact must agree with what came before."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.homes: dict[str, str] = {}
        self.last: str | None = None
        self.pending: tuple | None = None
        self.checked = 0

    def who(self, word: str) -> str:
        if word in ("He", "She"):
            assert self.last is not None and self.pronoun(self.last) == word.lower()
            self.checked += 1
            return self.last
        return word

    @staticmethod
    def pronoun(name: str) -> str:
        return "she" if name[-1] in "aeiou" else "he"

    def set_count(self, name: str, expected: int, stated: int) -> None:
        assert stated == expected, (name, expected, stated)
        self.counts[name] = stated
        self.checked += 1

    def read(self, sentence: str) -> None:
        if m := re.fullmatch(
            r"(\w+) (?:is an? \w+ who lives in (\w+)|lives in (\w+) and works as an? \w+)\.", sentence
        ):
            self.homes[m[1]], self.last = m[2] or m[3], m[1]
        elif m := re.fullmatch(r"(\w+) has (\d+) \w+\.", sentence):  # introduction
            self.last = self.who(m[1])
            self.counts[self.last] = int(m[2])
        elif m := re.fullmatch(r"How many \w+ does (\w+) have\?", sentence):
            self.pending = ("ask", m[1])
        elif m := re.fullmatch(r"(\w+) has (\d+)\.", sentence):
            assert self.pending == ("ask", m[1])
            self.set_count(m[1], self.counts[m[1]], int(m[2]))
            self.last, self.pending = m[1], None
        elif m := re.fullmatch(
            r"(\w+) walks from (\w+) to \w+, then (he|she) goes back home to (\w+)\.", sentence
        ):
            p = self.who(m[1])
            assert m[2] == m[4] == self.homes[p] and m[3] == self.pronoun(p)
            self.last = p
        elif m := re.fullmatch(r"(\w+) sells (\d+) \w+, so (\w+) has (\d+) \w+ left\.", sentence):
            p = self.who(m[1])
            assert m[3] == p
            self.set_count(p, self.counts[p] - int(m[2]), int(m[4]))
            self.last = p
        elif m := re.fullmatch(r"(\w+) gives (\d+) \w+ to (\w+)\.", sentence):
            self.pending = ("give", self.who(m[1]), int(m[2]), m[3])
        elif m := re.fullmatch(r"Now (\w+) has (\d+) and (\w+) has (\d+) \w+\.", sentence):
            _, a, k, b = self.pending
            assert (m[1], m[3]) == (a, b) and a != b
            self.set_count(a, self.counts[a] - k, int(m[2]))
            self.set_count(b, self.counts[b] + k, int(m[4]))
            self.last, self.pending = b, None
        elif m := re.fullmatch(r"(\w+) buys (\d+) more \w+ in (\w+), so (he|she) has (\d+) now\.", sentence):
            p = self.who(m[1])
            assert m[3] == self.homes[p] and m[4] == self.pronoun(p)
            self.set_count(p, self.counts[p] + int(m[2]), int(m[5]))
            self.last = p
        elif m := re.fullmatch(r"The [a-z]+ ([A-Z]\w*) [a-z]+ the [a-z]+\.", sentence):
            self.last = m[1]
        elif m := re.fullmatch(r"(?!The )(\w+) [a-z]+ the [a-z]+ [a-z]+\.", sentence):
            self.last = self.who(m[1])
        else:  # descriptions and town facts: about no person
            assert re.fullmatch(
                r"The [a-z ]+\.|\w+ is known for its [a-z ]+\.|Everyone in \w+ talks about the [a-z ]+\.",
                sentence,
            ), sentence


def test_documents_keep_facts_pronouns_and_arithmetic_consistent(prep) -> None:
    import corpus

    checked = 0
    for i in range(200):
        title, body = corpus.document("val", i).split("\n\n", 1)
        assert title.startswith("# The ")
        reader = _Replay()
        for sentence in re.split(r"(?<=[.?])\s+", body.replace("\n\n", " ")):
            reader.read(sentence)
        checked += reader.checked
    assert checked > 2000


def test_prepare_default_builds_all_splits_fast_and_is_idempotent(prep, shared_cache: Path) -> None:
    prep.ensure_data()
    meta = json.loads((prep.token_dir() / "meta.json").read_text())
    assert meta["tokens"]["train"] >= prep.SYNTHETIC_TRAIN_BYTES
    assert meta["tokens"]["val"] > prep.EVAL_TOKENS and meta["tokens"]["holdout"] > prep.EVAL_TOKENS
    assert meta["seconds"] < 30
    before = (prep.token_dir() / "train.bin").stat().st_mtime_ns
    assert prep.main([]) == 0
    assert (prep.token_dir() / "train.bin").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------
# Tokenizers


def test_byte_tokenizer_round_trip(prep) -> None:
    tok = prep.get_tokenizer()
    text = "Glemlun has 8 thiasfes. Ünïcödé ✓ 你好\n"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and max(ids) < 256
    assert tok.decode(ids) == text
    assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_bpe_tokenizer_round_trip_and_token_bytes(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tokenizers")
    set_constants(
        workspace / "prepare.py",
        TOKENIZER="bpe",
        VOCAB_SIZE=512,
        SYNTHETIC_TRAIN_BYTES=300000,
        EVAL_TOKENS=2048,
    )
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "bpe-cache"))
    prep = _load(workspace, monkeypatch)
    prep.ensure_data()
    tok = prep.get_tokenizer()
    assert tok.vocab_size == 512 and tok.bos_id is not None and int(tok.token_bytes[tok.bos_id]) == 0
    for text in ["Trunddi has 5 duns. She thianchors the dudort.", "Ünïcödé ✓ 你好 1234567\n\n  x"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert len(tok.encode("Everyone in Theelgai talks about the lems.")) < 30  # merges learned
    val = prep.load_split("val")
    assert (np.asarray(val) == tok.bos_id).sum() > 1 and int(np.max(val)) < 512


# ---------------------------------------------------------------------------------------------
# Train loader, budget, seed, run dir, loss/OOM checks


def test_train_loader_serves_shifted_train_rows_only(prep, monkeypatch: pytest.MonkeyPatch) -> None:
    prep.ensure_data()
    opened: list[str] = []
    real = np.memmap

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prep.np, "memmap", spy)
    loader = prep.make_train_loader(4, 32, seed=1)
    x, y = next(loader)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    train = np.asarray(real(prep.token_dir() / "train.bin", dtype=np.uint16, mode="r"))
    row = x[0].numpy()
    starts = np.flatnonzero(train[: len(train) - 33] == row[0])
    assert any(
        (train[s : s + 32] == row).all() and (train[s + 1 : s + 33] == y[0].numpy()).all() for s in starts
    )
    assert opened == ["train.bin"]
    x2, _ = next(prep.make_train_loader(4, 32, seed=1))
    assert torch.equal(x, x2)
    assert not torch.equal(x, next(prep.make_train_loader(4, 32, seed=2))[0])


def test_budget_from_environment(prep, monkeypatch: pytest.MonkeyPatch) -> None:
    assert prep.get_budget() == prep.Budget(seconds=60.0)
    monkeypatch.setenv("NIGHTLAB_BUDGET_TOKENS", "1000")
    budget = prep.get_budget()
    assert budget.seconds is None and budget.tokens == 1000
    assert budget.progress(999.0, 250, 3) == 0.25 and not budget.exhausted(999.0, 999, 3)
    assert budget.exhausted(0.0, 1000, 0) and budget.progress(0.0, 5000, 0) == 1.0
    monkeypatch.setenv("NIGHTLAB_BUDGET_SECONDS", "10")
    both = prep.get_budget()
    assert both.progress(5.0, 100, 0) == 0.5 and both.exhausted(10.0, 0, 0)
    monkeypatch.setenv("NIGHTLAB_BUDGET_STEPS", "ten")
    with pytest.raises(SystemExit) as exc:
        prep.get_budget()
    assert exc.value.code == 2


def test_seed_and_run_dir(prep, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert prep.get_seed() == 42
    monkeypatch.setenv("NIGHTLAB_SEED", "7")
    assert prep.get_seed() == 7
    prep.seed_everything(7)
    a = (torch.rand(3), np.random.rand(), __import__("random").random())
    prep.seed_everything(7)
    b = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    monkeypatch.setenv("NIGHTLAB_RUN_DIR", str(tmp_path / "deep" / "run"))
    assert prep.get_run_dir().is_dir()
    monkeypatch.delenv("NIGHTLAB_RUN_DIR")
    assert prep.get_run_dir().resolve() == (Path.cwd() / "run").resolve()


def test_check_loss_stops_on_nan_and_explosion(prep, capsys: pytest.CaptureFixture) -> None:
    prep.check_loss(5.5, 0)
    for bad in (float("nan"), float("inf"), 50.0):
        with pytest.raises(SystemExit) as exc:
            prep.check_loss(bad, 12)
        assert exc.value.code == 3
        assert re.search(r"^status: nan \(.*step 12\)$", capsys.readouterr().out, re.M)


def test_oom_guard(prep, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc, prep.oom_guard():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert exc.value.code == 4
    assert capsys.readouterr().out.startswith("status: oom (CUDA out of memory. Tried to allocate 2.00 GiB)")
    with pytest.raises(ValueError), prep.oom_guard():
        raise ValueError("not memory")


# ---------------------------------------------------------------------------------------------
# Export and evaluation


def _export(prep, model: nn.Module) -> Path:
    prep.ensure_data()
    return prep.export_model(model)


def test_uniform_model_scores_exactly_eight_bits_per_byte(prep) -> None:
    _export(prep, Uniform())
    run_dir = prep.get_run_dir()
    assert evaluate(run_dir) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Per-token losses are float32 (ln 256 to ~1e-7), summed in float64: 8.000000 as printed.
    assert metrics["val_bpb"] == pytest.approx(8.0, abs=1e-6)
    assert metrics["holdout_bpb"] == pytest.approx(8.0, abs=1e-6)
    assert metrics["causal"] is True and metrics["eval_tokens"] == prep.EVAL_TOKENS
    assert metrics["eval_seconds"] > 0
    val_file, holdout_file = (prep.token_dir() / f"{s}.bin" for s in ("val", "holdout"))
    assert (
        metrics["data_sha256"]
        == hashlib.sha256(val_file.read_bytes() + holdout_file.read_bytes()).hexdigest()
    )


def test_evaluator_matches_a_direct_computation(prep) -> None:
    torch.manual_seed(0)
    model = Bigram()
    _export(prep, model)
    run_dir = prep.get_run_dir()
    assert evaluate(run_dir) == 0
    val = torch.from_numpy(np.asarray(prep.load_split("val")[: prep.EVAL_TOKENS + 1]).astype(np.int64))
    with torch.no_grad():
        nats = nn.functional.cross_entropy(model.table(val[:-1]), val[1:], reduction="sum").item()
    expected = nats / math.log(2) / prep.EVAL_TOKENS  # bigram: row boundaries do not matter
    assert json.loads((run_dir / "metrics.json").read_text())["val_bpb"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("model", [PeeksAhead(), PeeksAcrossRows()], ids=["future-token", "other-rows"])
def test_causality_check_rejects_a_model_that_looks_ahead(prep, model: nn.Module) -> None:
    _export(prep, model)
    run_dir = prep.get_run_dir()
    assert evaluate(run_dir) == 5
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["causal"] is False and "val_bpb" not in metrics
    assert metrics["invalid"].startswith("model is not causal: ")


def test_causality_check_passes_a_causal_model(prep) -> None:
    _export(prep, Bigram())
    assert (
        importlib.import_module("evaluation").causality_violation(
            _loaded(prep), prep.load_split("val"), torch.device("cpu")
        )
        is None
    )


def _loaded(prep) -> nn.Module:
    return torch.export.load(str(prep.get_run_dir() / "model.pt2")).module()


def test_wrong_output_shape_is_invalid(prep) -> None:
    _export(prep, WrongVocab())
    assert evaluate(prep.get_run_dir()) == 5
    assert "shape" in json.loads((prep.get_run_dir() / "metrics.json").read_text())["invalid"]


def test_preexisting_metrics_json_is_refused(prep) -> None:
    _export(prep, Uniform())
    run_dir = prep.get_run_dir()
    (run_dir / "metrics.json").write_text('{"val_bpb": 0.01}')
    assert evaluate(run_dir) == 5
    assert json.loads((run_dir / "metrics.json").read_text()) == {
        "invalid": "metrics.json existed before evaluation"
    }
    assert json.loads((run_dir / "metrics.preexisting.json").read_text()) == {"val_bpb": 0.01}


def test_missing_export_is_a_clear_error(prep, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate(prep.get_run_dir())
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "prepare.finish(model, summary)" in err


def test_summary_block_format(prep) -> None:
    block = prep.format_summary(
        {"training_seconds": 60.04, "val_bpb": 2.5, "depth": 4, "peak_memory_mb": 512.25, "num_steps": 90,
         "total_tokens_M": 0.98304, "mfu_percent": 22.217}
    )  # fmt: skip
    lines = block.splitlines()
    assert lines[0] == "---"
    parsed = dict(re.fullmatch(r"(\w+):\s+(\S+)", line).groups() for line in lines[1:])
    assert list(parsed) == [
        "val_bpb",
        "training_seconds",
        "peak_memory_mb",
        "mfu_percent",
        "total_tokens_M",
        "num_steps",
        "depth",
    ]
    assert parsed["val_bpb"] == "2.500000" and parsed["training_seconds"] == "60.0"
    assert parsed["total_tokens_M"] == "0.983" and parsed["mfu_percent"] == "22.22"


FINISH_SCRIPT = """
import torch, prepare
model = torch.nn.Embedding(256, 256)
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.e = model
    def forward(self, idx):
        return self.e(idx)
prepare.finish(M(), {"training_seconds": 1.0, "total_seconds": 2.0, "peak_memory_mb": 10.0,
                     "total_tokens_M": 0.1, "num_steps": 3, "num_params_M": 0.07, "depth": 1})
"""


@pytest.mark.slow
def test_finish_evaluates_in_a_child_process_unless_separate(workspace: Path, prep, tmp_path: Path) -> None:
    prep.ensure_data()
    (workspace / "fake_train.py").write_text(FINISH_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    plain = subprocess.run(
        [sys.executable, "fake_train.py"], cwd=workspace, env=env, capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    block = plain.stdout[plain.stdout.index("---\n") :].splitlines()
    assert [line.split(":")[0] for line in block[1:]] == [
        "val_bpb",
        "training_seconds",
        "total_seconds",
        "peak_memory_mb",
        "total_tokens_M",
        "num_steps",
        "num_params_M",
        "depth",
    ]
    assert 7.0 < float(block[1].split()[1]) < 12.0
    run_dir = Path(os.environ["NIGHTLAB_RUN_DIR"])
    assert json.loads((run_dir / "metrics.json").read_text())["causal"] is True
    # Under the harness: export only, no val_bpb, no metrics.json; then the harness evaluates.
    separate = subprocess.run(
        [sys.executable, "fake_train.py"],
        cwd=workspace,
        env=dict(env, NIGHTLAB_EVAL_SEPARATE="1"),
        capture_output=True,
        text=True,
    )
    assert separate.returncode == 0, separate.stderr
    assert "val_bpb" not in separate.stdout and "training_seconds:" in separate.stdout
    assert not (run_dir / "metrics.json").exists() and (run_dir / "model.pt2").exists()
    evaluated = run_prepare(workspace, "evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    assert re.search(r"^val_bpb: \d+\.\d{6}$", evaluated.stdout, re.M)


def test_sizes_toml_names_real_constants_and_ships_the_cpu_values(workspace: Path) -> None:
    """`nightlab init --size` rewrites these literals: every name must exist, cpu must be as shipped."""
    tomllib = pytest.importorskip("tomllib")
    sizes = tomllib.loads((TEMPLATE / "sizes.toml").read_text())
    text = (TEMPLATE / "prepare.py").read_text()
    for size in ("cpu", "gpu"):
        assert set(sizes[size]["prepare"]) == set(sizes["cpu"]["prepare"])
        for name in sizes[size]["prepare"]:
            assert re.search(rf"^{name} = [^#\n]+  # ", text, re.M), name
    for name, value in sizes["cpu"]["prepare"].items():
        literal = json.dumps(value) if isinstance(value, str) else repr(value)
        assert re.search(rf"^{name} = {re.escape(literal)}  # ", text, re.M), name
    config = tomllib.loads((TEMPLATE / "nightlab.toml").read_text())
    assert config["budget"] == sizes["cpu"]["budget"]
    assert sizes["gpu"]["prepare"]["EVAL_TOKENS"] % sizes["gpu"]["prepare"]["SEQ_LEN"] == 0


def test_template_nightlab_toml_is_valid_and_freezes_every_frozen_file() -> None:
    from nightlab.config import load_config

    config = load_config(TEMPLATE)
    assert config.target.editable == ["train.py"]
    assert set(config.target.frozen) == set(FROZEN)
    assert config.metric.holdout == "holdout_bpb" and config.budget.seconds == 60


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_export_evaluates_under_bf16_like_training(prep) -> None:
    torch.manual_seed(0)
    model = Bigram()
    _export(prep, model.cuda())
    meta = json.loads((prep.get_run_dir() / "model.json").read_text())
    assert meta["device"] == "cuda"
    assert meta["autocast"] == ("bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else None)
    assert evaluate(prep.get_run_dir()) == 0
    on_gpu = json.loads((prep.get_run_dir() / "metrics.json").read_text())["val_bpb"]
    (prep.get_run_dir() / "metrics.json").unlink()
    _export(prep, model.cpu())
    assert evaluate(prep.get_run_dir()) == 0
    on_cpu = json.loads((prep.get_run_dir() / "metrics.json").read_text())["val_bpb"]
    assert on_gpu == pytest.approx(on_cpu, rel=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_train_loader(prep) -> None:
    x, y = next(prep.make_train_loader(4, 32, device="cuda", seed=0))
    assert x.is_cuda and y.is_cuda and torch.equal(x[:, 1:], y[:, :-1])


# ---------------------------------------------------------------------------------------------
# Real data: --data


def _write_parquet(path: Path, texts: list[str], column: str = "text") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: texts}), path, row_group_size=50)


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "tree", "river", "stone", "light"]
    return [" ".join(rng.choice(words, size=int(rng.integers(20, 80)))) + f" #{seed}-{i}" for i in range(n)]


def test_data_folder_of_mixed_files(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    data = tmp_path / "mydata"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("\n\n".join(_texts(300, 1)))
    (data / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in _texts(300, 2)))
    _write_parquet(data / "sub" / "c.parquet", _texts(300, 3))
    (data / "notes.md").write_text("ignored")
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    set_constants(workspace / "prepare.py", EVAL_TOKENS=4096, SEQ_LEN=64, DATASET=str(data))
    prep = _load(workspace, monkeypatch)
    with pytest.raises(SystemExit) as exc:  # not prepared yet: the message names the command
        prep.make_train_loader(2)
    assert exc.value.code == 1
    assert prep.main(["--data", str(data)]) == 0
    assert f'DATASET = "{data.resolve()}"' in (workspace / "prepare.py").read_text()
    prep = _load(workspace, monkeypatch)  # reimport: DATASET now points at the folder
    meta = json.loads((prep.token_dir() / "meta.json").read_text())
    assert all(meta["tokens"][s] > 0 for s in ("train", "val", "holdout"))
    x, y = next(prep.make_train_loader(2))
    assert x.shape == (2, 64)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.txt", "no such file or directory"),
        (lambda d: (d / "x.csv").write_text("a,b") and d / "x.csv", "unsupported file type '.csv'"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no .txt, .jsonl or .parquet files"),
        (
            lambda d: (d / "bad.jsonl").write_text('{"body": "x"}\n') and d / "bad.jsonl",
            'with a "text" field',
        ),
    ],
    ids=["missing", "csv", "empty-folder", "jsonl-without-text"],
)
def test_bad_data_paths_give_one_line_and_exit_2(
    prep, tmp_path: Path, capsys: pytest.CaptureFixture, make, message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(SystemExit) as exc:
        prep.main(["--data", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("prepare.py: ")


def test_bad_data_path_from_the_command_line(workspace: Path) -> None:
    proc = run_prepare(workspace, "--data", "/no/such/place")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "prepare.py: --data /no/such/place: no such file or directory"


# ---------------------------------------------------------------------------------------------
# Real data: --download against a loopback server


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves files from a folder with Range support; can fail or cut a file's first response."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_once: set[str] = set()
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server: ShardServer = self.server  # type: ignore[assignment]
        name = self.path.lstrip("/")
        server.requests.append((name, self.headers.get("Range")))
        path = server.root / name
        if name in server.fail_once:
            server.fail_once.discard(name)
            self.send_error(503, "try again")
            return
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = (
            int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers.get("Range") else 0
        )
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        if name in server.cut_once:  # promise the whole body, send half, hang up
            server.cut_once.discard(name)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def shard_server(tmp_path: Path):
    pytest.importorskip("pyarrow")
    root = tmp_path / "served"
    root.mkdir()
    server = ShardServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _serve_climbmix(server: ShardServer, with_sums: bool = True) -> None:
    names = ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    for i, name in enumerate(names):
        _write_parquet(server.root / name, _texts(400, 10 + i))
    if with_sums:
        lines = [f"{hashlib.sha256((server.root / n).read_bytes()).hexdigest()}  {n}" for n in names]
        (server.root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_download_retries_resumes_and_verifies(
    workspace: Path, shard_server: ShardServer, tmp_path: Path
) -> None:
    _serve_climbmix(shard_server)
    shard_server.fail_once.add("shard_00000.parquet")
    shard_server.cut_once.add("shard_00001.parquet")
    env = {"NIGHTLAB_DATA_URL": shard_server.url, "NIGHTLAB_CACHE": str(tmp_path / "cache")}
    set_constants(workspace / "prepare.py", EVAL_TOKENS=4096, SEQ_LEN=64)
    proc = run_prepare(workspace, "--download", "climbmix", "--shards", "2", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "shard_00000.parquet attempt 1/5 failed (HTTP Error 503" in proc.stdout
    assert "shard_00001.parquet attempt 1/5 failed" in proc.stdout
    cut = [r for n, r in shard_server.requests if n == "shard_00001.parquet"]
    assert cut[0] is None and re.fullmatch(r"bytes=\d+-", cut[1])  # the second request resumed
    raw = tmp_path / "cache" / "climbmix" / "raw"
    for name in ("shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"):
        assert (raw / name).read_bytes() == (shard_server.root / name).read_bytes()
    assert 'DATASET = "climbmix"' in (workspace / "prepare.py").read_text()
    meta = json.loads((tmp_path / "cache" / "climbmix" / "byte" / "meta.json").read_text())
    assert min(meta["tokens"].values()) > 0
    again = run_prepare(workspace, env=env)  # cached: no new requests
    assert again.returncode == 0 and "already prepared" in again.stdout


def test_download_resumes_a_partial_file(prep, shard_server: ShardServer, tmp_path: Path) -> None:
    import sources

    _serve_climbmix(shard_server, with_sums=False)
    name = "shard_00000.parquet"
    full = (shard_server.root / name).read_bytes()
    dest = tmp_path / "dl" / name
    dest.parent.mkdir()
    dest.with_name(name + ".part").write_bytes(full[:1000])
    sources.download_file(f"{shard_server.url}/{name}", dest, wait=0)
    assert dest.read_bytes() == full and not dest.with_name(name + ".part").exists()
    assert shard_server.requests == [(name, "bytes=1000-")]


def test_download_rejects_a_corrupt_file(prep, shard_server: ShardServer, tmp_path: Path) -> None:
    import sources

    _serve_climbmix(shard_server, with_sums=False)
    name = "shard_00000.parquet"
    with pytest.raises(sources.SourceError, match="failed 2 times, last error: sha256 does not match"):
        sources.download_file(
            f"{shard_server.url}/{name}", tmp_path / name, sha256="0" * 64, retries=2, wait=0
        )
    (shard_server.root / "junk.parquet").write_bytes(b"PAR1 not really a parquet file")
    with pytest.raises(sources.SourceError, match="not a complete parquet file"):
        sources.download_file(
            f"{shard_server.url}/junk.parquet", tmp_path / "junk.parquet", retries=1, wait=0
        )
    with pytest.raises(sources.SourceError, match="HTTP 404") as exc:
        sources.download_file(f"{shard_server.url}/nope.parquet", tmp_path / "nope.parquet", wait=0)
    assert exc.value.code == 1
    assert not list(tmp_path.glob("*.part"))


def test_unknown_download_name(prep, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        prep.main(["--download", "imagenet"])
    assert exc.value.code == 2
    assert "unknown data set (choose from climbmix, fineweb-edu, tinystories)" in capsys.readouterr().err
