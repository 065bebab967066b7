"""What train.py calls while it runs: budget, seed, train loader, checks, export and evaluation.

FROZEN: nightlab hashes this file; an experiment that changes it is invalid. train.py imports it
(and data.py, for the settings). It decides how long a run trains, which batches it sees, when a
run has failed (NaN, out of memory) and how the model is handed over: as a torch.export program
that evaluation.py scores in its own process, so a change to train.py can make the model better
but can never change how it is measured.

The run environment nightlab sets: NIGHTLAB_SEED, NIGHTLAB_RUN_DIR, NIGHTLAB_BUDGET_SECONDS /
_TOKENS / _STEPS, NIGHTLAB_EVAL_SEPARATE (nightlab runs the evaluation itself), and for
`nightlab validate --time-to-target` NIGHTLAB_EVAL_INTERVAL_SECONDS, NIGHTLAB_TARGET_METRIC and
NIGHTLAB_TARGET_DIRECTION. Without them (`python train.py` by hand) the defaults of data.py apply.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import evaluation
import numpy as np
import prepare
import torch
from data import (
    DATASET,
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_SEED,
    EVAL_BATCH_SIZE,
    EVAL_TOKENS,
    EXIT_INVALID,
    EXIT_NAN,
    EXIT_OOM,
    EXPORT_FILE,
    EXPORT_META,
    LOSS_EXPLODE_FACTOR,
    METRICS_FILE,
    SEQ_LEN,
    TOKENIZER,
    VOCAB_SIZE,
    fail,
    get_run_dir,
    get_tokenizer,
    load_split,
)

HERE = "harness.py"  # the name this file's errors start with

# ---------------------------------------------------------------------------------------------
# The train loader


def make_train_loader(
    batch_size: int, seq_len: int = SEQ_LEN, device: str | torch.device = "cpu", seed: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, y) batches of the TRAIN split, y = x shifted by one token.

    Each epoch cuts the split into non-overlapping rows at a random offset and visits them in a
    random order, so no row repeats before the whole split has been seen. The default synthetic
    data is built on first use; any other DATASET must have been prepared by `python prepare.py`.
    """
    prepare.ensure_data()
    tokens = load_split("train")  # here, not in the generator: missing data fails at the call
    rows = (len(tokens) - seq_len - 1) // seq_len
    if rows < batch_size:
        raise fail(
            f"the train split ({len(tokens):,} tokens) has fewer than {batch_size} rows of {seq_len}", 1, HERE
        )
    rng = np.random.default_rng(get_seed() if seed is None else seed)
    return _batches(tokens, rows, batch_size, seq_len, torch.device(device), rng)


def _batches(
    tokens: np.ndarray, rows: int, batch_size: int, seq_len: int, device: torch.device, rng
) -> Iterator:
    pin = device.type == "cuda"
    window = np.arange(seq_len + 1)
    while True:
        starts = rng.integers(seq_len) + np.arange(rows) * seq_len
        rng.shuffle(starts)
        for i in range(0, rows - batch_size + 1, batch_size):
            chunk = torch.from_numpy(tokens[starts[i : i + batch_size, None] + window].astype(np.int64))
            if pin:
                chunk = chunk.pin_memory()
            chunk = chunk.to(device, non_blocking=pin)
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


# ---------------------------------------------------------------------------------------------
# Budget and seed


def _env_number(name: str, kind: type) -> float | int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        raise fail(f"{name}={raw!r} is not a number", where=HERE) from None
    if value <= 0:
        raise fail(f"{name}={raw!r} must be positive", where=HERE)
    return value


@dataclass(frozen=True)
class Budget:
    """How long to train: whichever of seconds / tokens / steps is set (all that are set apply)."""

    seconds: float | None = None
    tokens: int | None = None
    steps: int | None = None

    def progress(self, training_seconds: float, tokens: int, steps: int) -> float:
        """Fraction of the budget used, in [0, 1]: the furthest-along of the set budgets."""
        used = [
            done / limit
            for done, limit in ((training_seconds, self.seconds), (tokens, self.tokens), (steps, self.steps))
            if limit
        ]
        return min(1.0, max(used, default=0.0))

    def exhausted(self, training_seconds: float, tokens: int, steps: int) -> bool:
        """Whether training must stop now: some set budget is used up."""
        return self.progress(training_seconds, tokens, steps) >= 1.0


def get_budget() -> Budget:
    """From NIGHTLAB_BUDGET_SECONDS / _TOKENS / _STEPS; DEFAULT_BUDGET_SECONDS when none is set."""
    budget = Budget(
        _env_number("NIGHTLAB_BUDGET_SECONDS", float),
        _env_number("NIGHTLAB_BUDGET_TOKENS", int),
        _env_number("NIGHTLAB_BUDGET_STEPS", int),
    )
    if budget.seconds is None and budget.tokens is None and budget.steps is None:
        return Budget(seconds=float(DEFAULT_BUDGET_SECONDS))
    return budget


def get_seed() -> int:
    """NIGHTLAB_SEED (each replicate of an experiment gets its own), else DEFAULT_SEED."""
    raw = os.environ.get("NIGHTLAB_SEED", "").strip()
    try:
        return int(raw) if raw else DEFAULT_SEED
    except ValueError:
        raise fail(f"NIGHTLAB_SEED={raw!r} is not an integer", where=HERE) from None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Failed runs: a status line and an exit code nightlab reads


def check_loss(loss_value: float, step: int) -> None:
    """Stop at once (status nan, exit 3) when the loss is NaN/inf or has exploded."""
    limit = LOSS_EXPLODE_FACTOR * math.log(VOCAB_SIZE)
    if not math.isfinite(loss_value):
        print(f"status: nan (loss is {loss_value} at step {step})", flush=True)
        raise SystemExit(EXIT_NAN)
    if loss_value > limit:
        print(f"status: nan (loss exploded: {loss_value:.2f} > {limit:.2f} at step {step})", flush=True)
        raise SystemExit(EXIT_NAN)


def is_oom(exc: BaseException) -> bool:
    """CUDA (or CPU allocator) out-of-memory, whatever exception type the backend raised."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t)
    text = str(exc).lower()
    return isinstance(exc, oom_types) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text)
    )


@contextmanager
def oom_guard() -> Iterator[None]:
    """`with harness.oom_guard(): ...` turns out-of-memory into `status: oom (...)` and exit 4."""
    try:
        yield
    except Exception as exc:
        if not is_oom(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"status: oom ({first[:200]})", flush=True)
        raise SystemExit(EXIT_OOM) from None


# ---------------------------------------------------------------------------------------------
# Export and the final evaluation


def export_model(model: torch.nn.Module) -> Path:
    """Save `model` as a torch.export program (loading it runs none of train.py's code).

    The program has the evaluation's fixed shape [EVAL_BATCH_SIZE, SEQ_LEN]. Stale files of a
    previous run in the same run dir (export, metrics.json) are removed first.
    """
    run_dir = get_run_dir()
    for name in (EXPORT_FILE, EXPORT_META, METRICS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    param = next(model.parameters())
    example = torch.zeros(EVAL_BATCH_SIZE, SEQ_LEN, dtype=torch.long, device=param.device)
    # Trace under the autocast training uses (bf16 on CUDA sm80+); the evaluation runs the
    # program under the same autocast (meta "autocast"), so it computes as training did.
    autocast = _uses_bf16(param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            program = torch.export.export(model, (example,), strict=False)
    finally:
        model.train(was_training)
    path = run_dir / EXPORT_FILE
    torch.export.save(program, str(path))
    meta = {
        "format": "torch.export",
        "file": EXPORT_FILE,
        "vocab_size": VOCAB_SIZE,
        "seq_len": SEQ_LEN,
        "batch_size": EVAL_BATCH_SIZE,
        "tokenizer": TOKENIZER,
        "dataset": DATASET,
        "device": param.device.type,
        "dtype": str(param.dtype).removeprefix("torch."),
        "autocast": "bfloat16" if autocast else None,
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    (run_dir / EXPORT_META).write_text(json.dumps(meta, indent=1))
    return path


def _uses_bf16(device: torch.device) -> bool:
    """Whether training on `device` uses bf16 autocast (CUDA sm80+), as train.py does."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def finish(model: torch.nn.Module) -> float | None:
    """What train.py calls after training: export the model, then evaluate it in a child process.

    Returns val_bpb from `python evaluation.py` (the very evaluation nightlab runs), for the
    summary block train.py prints. Under nightlab (NIGHTLAB_EVAL_SEPARATE=1) nightlab runs the
    evaluation itself, so this only exports and returns None. A failed evaluation ends the run
    with its exit code (5 and a status line for an invalid model).
    """
    export_model(model)
    if os.environ.get("NIGHTLAB_EVAL_SEPARATE", "0") not in ("", "0"):
        return None
    run_dir = get_run_dir()
    env = dict(os.environ, NIGHTLAB_RUN_DIR=str(run_dir.resolve()))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().with_name("evaluation.py"))],
        env=env,
        text=True,
        capture_output=True,
    )
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        if proc.returncode == EXIT_INVALID:
            reason = json.loads((run_dir / METRICS_FILE).read_text()).get("invalid", "see above")
            print(f"status: invalid ({reason})", flush=True)
        raise SystemExit(proc.returncode)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    print(
        f"evaluation: {metrics['eval_seconds']:.1f}s in a separate process, {metrics['eval_tokens']:,} val tokens"
    )
    return metrics["val_bpb"]


# ---------------------------------------------------------------------------------------------
# Periodic evaluation and stopping at a target (`nightlab validate --time-to-target`)

CURVE_FILE = "curve.jsonl"  # one line per periodic evaluation, in the run dir
CURVE_EVAL_TOKENS = EVAL_TOKENS // 4  # val tokens each periodic evaluation scores (a prefix of val)


class _Curve:
    """What nightlab asked for: NIGHTLAB_EVAL_INTERVAL_SECONDS, NIGHTLAB_TARGET_METRIC (and
    NIGHTLAB_TARGET_DIRECTION), read once, plus when the next evaluation is due."""

    def __init__(self) -> None:
        self.interval = _env_number("NIGHTLAB_EVAL_INTERVAL_SECONDS", float)
        raw = os.environ.get("NIGHTLAB_TARGET_METRIC", "").strip()
        try:
            self.target = float(raw) if raw else None
        except ValueError:
            raise fail(f"NIGHTLAB_TARGET_METRIC={raw!r} is not a number", where=HERE) from None
        self.maximize = os.environ.get("NIGHTLAB_TARGET_DIRECTION", "minimize") == "maximize"
        self.next_at = self.interval or 0.0
        self.val: np.ndarray | None = None


_curve: _Curve | None = None


def evaluate_periodically(model: torch.nn.Module, training_seconds: float, tokens: int, step: int) -> bool:
    """train.py calls this after every step; True means "stop training now".

    Without NIGHTLAB_EVAL_INTERVAL_SECONDS it returns False at once. With it, every that many
    seconds of training it scores the current model (in eval mode, no gradients) on the first
    CURVE_EVAL_TOKENS val tokens, appends {training_seconds, tokens, step, val_bpb} to curve.jsonl
    in the run dir, and returns True once NIGHTLAB_TARGET_METRIC is reached. Call it outside the
    timed part of the step: its time is not training time. The frozen evaluation still scores the
    final model, and nightlab checks it against the curve.
    """
    global _curve
    if _curve is None:
        _curve = _Curve()
    curve = _curve
    if curve.interval is None or training_seconds < curve.next_at:
        return False
    while curve.next_at <= training_seconds:
        curve.next_at += curve.interval
    if curve.val is None:
        curve.val = load_split("val")[: CURVE_EVAL_TOKENS + 1]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=_uses_bf16(device)):
            value, _ = evaluation.bits_per_byte(model, curve.val, get_tokenizer().token_bytes, device)
    except evaluation.InvalidModel as exc:  # the final, frozen evaluation will say so
        print(f"eval: step {step} skipped ({exc})", flush=True)
        return False
    finally:
        model.train(was_training)
    record = {
        "training_seconds": round(training_seconds, 3),
        "tokens": tokens,
        "step": step,
        "val_bpb": value,
    }
    with (get_run_dir() / CURVE_FILE).open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"eval: step {step:05d} | {training_seconds:.1f} s | val_bpb {value:.6f} (curve)", flush=True)
    if curve.target is None:
        return False
    return value >= curve.target if curve.maximize else value <= curve.target
