"""What train.py calls while it runs: budget, seed, train loader, checks, export and evaluation.

FROZEN: nightlab hashes this file; an experiment that changes it is invalid. train.py imports it
(and data.py, for the settings). It decides how long a run trains, which batches it sees, when a
run has failed (NaN, out of memory) and how the model is handed over: as a torch.export program
that evaluation.py scores in its own process, so a change to train.py can make the model better
but can never change how it is measured.

While it trains, a run can leave progress checkpoints (Checkpoints) that `python evaluation.py
--follow` scores in its own process beside it, so the training process never opens the val or
holdout data, not even for the periodic evaluation of `nightlab validate --time-to-target`.

The run environment nightlab sets: NIGHTLAB_SEED, NIGHTLAB_RUN_DIR, NIGHTLAB_BUDGET_SECONDS /
_TOKENS / _STEPS / _FLOPS, NIGHTLAB_EVAL_SEPARATE (nightlab runs the evaluation itself),
NIGHTLAB_PROGRESS_EVERY (a checkpoint every that share of the budget, for early stopping), and for
`nightlab validate --time-to-target` NIGHTLAB_EVAL_INTERVAL_SECONDS (a checkpoint every that many
seconds of training) with NIGHTLAB_TARGET_METRIC (the evaluator then creates the stop file).
Without them (`python train.py` by hand) the defaults of data.py apply and no checkpoint is left.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import prepare
import torch
from data import (
    DATASET,
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_SEED,
    DONE_FILE,
    EVAL_BATCH_SIZE,
    EXIT_INVALID,
    EXIT_NAN,
    EXIT_OOM,
    EXPORT_FILE,
    EXPORT_META,
    LOSS_EXPLODE_FACTOR,
    METRICS_FILE,
    PROGRESS_DIR,
    PROGRESS_EVAL_FILE,
    PROGRESS_FILE,
    SEQ_LEN,
    STOP_FILE,
    TOKENIZER,
    VOCAB_SIZE,
    WEIGHTS_FILE,
    exit_now,  # noqa: F401  (train.py ends with harness.exit_now())
    fail,
    get_run_dir,
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
            SERVED["tokens"] += batch_size * seq_len
            SERVED["batch"] = max(SERVED["batch"], batch_size * seq_len)
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


# What the train loaders handed out in this process, and the last count train.py reported to
# the budget: finish() checks the one against the other (budget_overspent).
SERVED = {"tokens": 0, "batch": 0}
REPORTED: dict[str, float | None] = {"tokens": None, "flops": None}
# Batches a loader may hand out beyond what training counts: a warm-up step, a prefetch queue.
SERVED_SLACK_BATCHES = 4


# ---------------------------------------------------------------------------------------------
# Budget and seed


def _env_number(name: str, kind: type) -> float | int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(float(raw)) if kind is int else kind(raw)
    except (ValueError, OverflowError):
        raise fail(f"{name}={raw!r} is not a number", where=HERE) from None
    if not math.isfinite(value):
        raise fail(f"{name}={raw!r} is not a number", where=HERE)
    if value <= 0:
        raise fail(f"{name}={raw!r} must be positive", where=HERE)
    return value


@dataclass(frozen=True)
class Budget:
    """How long to train: whichever of seconds / tokens / steps / flops is set (all that are set
    apply). FLOPs are the count train.py reports (6 per matrix weight per token plus attention):
    like tokens they do not depend on the machine's load, but a bigger model gets fewer tokens."""

    seconds: float | None = None
    tokens: int | None = None
    steps: int | None = None
    flops: float | None = None

    def progress(self, training_seconds: float, tokens: int, steps: int, flops: float | None = None) -> float:
        """Fraction of the budget used, in [0, 1]: the furthest-along of the set budgets."""
        REPORTED["tokens"], REPORTED["flops"] = tokens, flops
        if self.flops and flops is None:
            raise fail(
                "NIGHTLAB_BUDGET_FLOPS is set but train.py passes no FLOPs count to "
                "budget.progress / budget.exhausted",
                where=HERE,
            )
        used = [
            done / limit
            for done, limit in (
                (training_seconds, self.seconds),
                (tokens, self.tokens),
                (steps, self.steps),
                (flops, self.flops),
            )
            if limit
        ]
        return min(1.0, max(used, default=0.0))

    def exhausted(self, training_seconds: float, tokens: int, steps: int, flops: float | None = None) -> bool:
        """Whether training must stop now: some set budget is used up."""
        return self.progress(training_seconds, tokens, steps, flops) >= 1.0


def get_budget() -> Budget:
    """From NIGHTLAB_BUDGET_SECONDS / _TOKENS / _STEPS / _FLOPS; DEFAULT_BUDGET_SECONDS when none is set."""
    budget = Budget(
        _env_number("NIGHTLAB_BUDGET_SECONDS", float),
        _env_number("NIGHTLAB_BUDGET_TOKENS", int),
        _env_number("NIGHTLAB_BUDGET_STEPS", int),
        _env_number("NIGHTLAB_BUDGET_FLOPS", float),
    )
    if budget == Budget():
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


def export_model(model: torch.nn.Module, reuse: torch.export.ExportedProgram | None = None) -> Path:
    """Save `model` as a torch.export program (loading it runs none of train.py's code).

    The program has the evaluation's fixed shape [EVAL_BATCH_SIZE, SEQ_LEN]. Stale files of a
    previous run in the same run dir (export, metrics.json) are removed first. `reuse` is the
    program of this run's first progress checkpoint: saved with the current weights instead of
    tracing the model again, when the weights fit it and it computes what the model computes on
    a random batch (a model whose code paths changed since then is exported afresh).
    """
    started = time.perf_counter()
    run_dir = get_run_dir()
    for name in (EXPORT_FILE, EXPORT_META, METRICS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    reused = reuse is not None and _still_fits(reuse, model)
    program = reuse if reused and reuse is not None else _trace(model)
    _save_program(program, model, run_dir)
    how = "the first checkpoint's program with the final weights" if reused else "traced"
    print(f"export: {time.perf_counter() - started:.2f} s ({how})", flush=True)
    return run_dir / EXPORT_FILE


def _trace(model: torch.nn.Module) -> torch.export.ExportedProgram:
    """torch.export of `model` in eval mode, on an example of the evaluation's shape."""
    param = next(model.parameters())
    example = torch.zeros(EVAL_BATCH_SIZE, SEQ_LEN, dtype=torch.long, device=param.device)
    # Trace under the autocast training uses (bf16 on CUDA sm80+); the evaluation runs the
    # program under the same autocast (meta "autocast"), so it computes as training did.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=_uses_bf16(param.device)):
            return torch.export.export(model, (example,), strict=False)
    finally:
        model.train(was_training)


def _save_program(program: torch.export.ExportedProgram, model: torch.nn.Module, folder: Path) -> None:
    """The program and its meta (what the evaluator needs besides it) in `folder`."""
    torch.export.save(program, str(folder / EXPORT_FILE))
    _write_meta(folder, model, format="torch.export", file=EXPORT_FILE)


def _write_meta(folder: Path, model: torch.nn.Module, **fields: object) -> None:
    param = next(model.parameters())
    meta = {
        **fields,
        "vocab_size": VOCAB_SIZE,
        "seq_len": SEQ_LEN,
        "batch_size": EVAL_BATCH_SIZE,
        "tokenizer": TOKENIZER,
        "dataset": DATASET,
        "device": param.device.type,
        "dtype": str(param.dtype).removeprefix("torch."),
        "autocast": "bfloat16" if _uses_bf16(param.device) else None,
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    (folder / EXPORT_META).write_text(json.dumps(meta, indent=1))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What changes while a model trains: its parameters and persistent buffers."""
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def _fits(program: torch.export.ExportedProgram, weights: dict[str, torch.Tensor]) -> bool:
    """Whether `weights` are exactly the tensors `program` was traced with (names, shapes, dtypes)."""
    held = program.state_dict
    return held.keys() == weights.keys() and all(
        held[k].shape == w.shape and held[k].dtype == w.dtype and held[k].device == w.device
        for k, w in weights.items()
    )


def _still_fits(program: torch.export.ExportedProgram, model: torch.nn.Module) -> bool:
    """Give `program` the model's current weights; True when it then computes what the model does.

    The check runs both on one random batch of the evaluation's shape: a model whose forward
    changed after the program was traced (a window that grew, a layer switched off) disagrees.
    """
    weights = model.state_dict(keep_vars=True)  # the parameters themselves, as the program holds them
    if not _fits(program, weights):
        return False
    program.state_dict.update(weights)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, VOCAB_SIZE, (EVAL_BATCH_SIZE, SEQ_LEN), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=_uses_bf16(device)):
            want = model(probe).float()
            got = program.module()(probe).float()
    finally:
        model.train(was_training)
    if got.shape != want.shape:
        return False
    return bool((got - want).abs().max() <= 1e-4 * (1.0 + want.abs().max()))


def _uses_bf16(device: torch.device) -> bool:
    """Whether training on `device` uses bf16 autocast (CUDA sm80+), as train.py does."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def finish(model: torch.nn.Module, checkpoints: Checkpoints | None = None) -> float | None:
    """What train.py calls after training: export the model, then evaluate it in a child process.

    `checkpoints` (the run's Checkpoints) lends the program of its first checkpoint, so a run
    with checkpoints traces its model once. Returns val_bpb from `python evaluation.py` (the very
    evaluation nightlab runs), for the summary block train.py prints. Under nightlab
    (NIGHTLAB_EVAL_SEPARATE=1) nightlab runs the evaluation itself, so this only exports and
    returns None. A failed evaluation ends the run with its exit code (5 and a status line for an
    invalid model).
    """
    if checkpoints is not None and checkpoints.count:
        print(
            f"progress: {checkpoints.count} checkpoints in {checkpoints.seconds:.2f} s (not training time)",
            flush=True,
        )
    overspent = budget_overspent(model, get_budget())
    if overspent:
        print(f"status: invalid ({overspent})", flush=True)
        raise SystemExit(EXIT_INVALID)
    export_model(model, reuse=checkpoints.program if checkpoints is not None else None)
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


def budget_overspent(model: torch.nn.Module, budget: Budget) -> str | None:
    """Why the count train.py reports to a tokens or FLOPs budget cannot be right, or None.

    The budget stops training on what train.py says it trained. One that under-reports (its
    FLOPs per token divided by 4: found from outside, kept after training 4x the budget) is
    caught here against the harness's own counts: the tokens the train loaders served (data
    train.py reads some other way is not seen), and a lower bound of the model's FLOPs per
    token, 6 per weight of every matrix it trains (embedding tables aside, attention not
    counted). Per token, so a step's size or a warm-up step does not matter.
    """
    served, batch = SERVED["tokens"], SERVED["batch"]
    if not (budget.tokens or budget.flops) or not served:
        return None
    tokens, flops = REPORTED["tokens"], REPORTED["flops"]
    if tokens is None:
        return f"train.py never asked the budget whether to stop, and its loaders served {served:,} tokens"
    if served - SERVED_SLACK_BATCHES * batch > tokens:
        return f"the train loaders served {served:,} tokens but train.py counted {tokens:,}"
    if budget.flops and flops is not None and tokens > 0:
        weights = sum(
            p.numel()
            for module in model.modules()
            if not isinstance(module, torch.nn.Embedding)
            for p in module.parameters(recurse=False)
            if p.dim() >= 2
        )
        if flops < 0.99 * 6 * weights * tokens:
            return (
                f"train.py counted {flops / tokens:.4g} FLOPs per token, but its {weights:,} matrix "
                f"weights alone take {6 * weights:.4g}: it under-counts what it trains"
            )
    return None


# ---------------------------------------------------------------------------------------------
# Progress checkpoints (early stopping, `nightlab validate --time-to-target`)


def _env_share(name: str) -> float | None:
    share = _env_number(name, float)
    if share is not None and share > 1:
        raise fail(f"{name}={share:g} must be a share of the budget, at most 1", where=HERE)
    return share


class Checkpoints:
    """The checkpoints a run leaves for `python evaluation.py --follow`, and its stop file.

    train.py calls `after_step` after every step, outside the timed part. A checkpoint is due
    every NIGHTLAB_PROGRESS_EVERY of the budget (before its end: the final evaluation scores
    that) and every NIGHTLAB_EVAL_INTERVAL_SECONDS of training; with neither set there are none.
    The first checkpoint is a torch.export program (as the final export); later ones are the
    weights only, which the evaluator loads into that program (the graph does not change during
    a run; if the weights no longer fit it, the model is traced again). Each checkpoint's files
    are written before its line in progress.jsonl, so the evaluator sees only whole ones.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.every = _env_share("NIGHTLAB_PROGRESS_EVERY")
        self.interval = _env_number("NIGHTLAB_EVAL_INTERVAL_SECONDS", float)
        self.run_dir = get_run_dir()
        self.count = 0  # checkpoints written
        self.seconds = 0.0  # spent writing them: not training time
        self.program: torch.export.ExportedProgram | None = None  # the latest traced checkpoint's
        self._program_dir = ""
        self._shares_done = 0  # whole NIGHTLAB_PROGRESS_EVERY shares of the budget passed
        self._intervals_done = 0  # whole NIGHTLAB_EVAL_INTERVAL_SECONDS of training passed
        # Leftovers of an earlier run in the same run dir (by hand, ./run) would stop this one.
        for name in (PROGRESS_FILE, PROGRESS_EVAL_FILE, STOP_FILE, DONE_FILE):
            (self.run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / PROGRESS_DIR, ignore_errors=True)

    def after_step(
        self,
        model: torch.nn.Module,
        training_seconds: float,
        tokens: int,
        step: int,
        flops: float | None = None,
    ) -> bool:
        """Leave a checkpoint when one is due; True means "stop training now" (the stop file)."""
        share = self.budget.progress(training_seconds, tokens, step, flops)
        due = False
        if self.every and share < 1.0 and share / self.every >= self._shares_done + 1 - 1e-9:
            due = True
            self._shares_done = math.floor(share / self.every + 1e-9)  # a long step may pass several
        if self.interval and training_seconds / self.interval >= self._intervals_done + 1 - 1e-9:
            due = True
            self._intervals_done = math.floor(training_seconds / self.interval + 1e-9)
        if due:
            started = time.perf_counter()
            record = {"step": step, "seconds": round(training_seconds, 3), "tokens": tokens}
            record |= {"flops": float(flops or 0.0), "fraction": round(share, 6)}
            self._write(model, record)
            self.seconds += time.perf_counter() - started
        return (self.run_dir / STOP_FILE).exists()

    def _write(self, model: torch.nn.Module, record: dict) -> None:
        self.count += 1
        name = f"{PROGRESS_DIR}/{self.count:04d}"
        folder = self.run_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        weights = _weights(model)
        if self.program is not None and _fits(self.program, weights):
            torch.save(weights, folder / WEIGHTS_FILE)
            _write_meta(folder, model, format="weights", file=WEIGHTS_FILE, program=self._program_dir)
        else:
            self.program, self._program_dir = _trace(model), name
            _save_program(self.program, model, folder)
        with (self.run_dir / PROGRESS_FILE).open("a") as fh:
            fh.write(json.dumps({**record, "export": name}) + "\n")
