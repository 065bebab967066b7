"""Data, tokenizer, train loader, budget and the evaluation of the GPT research target.

FROZEN: the harness hashes this file; an experiment that changes it is invalid. train.py imports
what it needs from here, and the evaluation (val_bpb) runs from here in its own process, so a
change to train.py can make the model better but can never change how it is measured.

    python prepare.py                    # prepare DATASET: all splits (+ the BPE tokenizer)
    python prepare.py --data PATH        # your own .txt / .jsonl / .parquet file or folder
    python prepare.py --download NAME    # climbmix | tinystories | fineweb-edu  [--shards N]
    python prepare.py evaluate           # score the model exported to NIGHTLAB_RUN_DIR

Data lives in ~/.cache/nightlab/ (NIGHTLAB_CACHE overrides it): one folder per dataset holding
train.bin, val.bin and holdout.bin token files per tokenizer. The train loader opens train.bin
only; val and holdout are read by the evaluation alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizer import BPETokenizer, ByteTokenizer

T_IMPORT = time.perf_counter()  # the evaluation times itself from here (load included)

# ---------------------------------------------------------------------------------------------
# Constants. Size-dependent ones are plain literals: `nightlab init --size gpu` rewrites them.
DATASET = "synthetic"  # "synthetic", a --download name (climbmix, tinystories, fineweb-edu) or a path
TOKENIZER = "byte"  # "byte" (one token per UTF-8 byte) or "bpe" (trained on the train split)
VOCAB_SIZE = 256  # 256 for byte; the BPE vocabulary size (special tokens included) otherwise
SEQ_LEN = 256  # context length of training rows and of every evaluation row
EVAL_TOKENS = 32768  # val tokens scored by the evaluation (the same number of holdout tokens)
EVAL_BATCH_SIZE = 16  # rows per evaluation forward pass (the export's fixed batch dimension)
DEFAULT_BUDGET_SECONDS = 60  # training seconds when the harness sets no NIGHTLAB_BUDGET_*
SYNTHETIC_TRAIN_BYTES = 8000000  # size of the synthetic train split (60 s of cpu training: no repeats)
DOWNLOAD_SHARDS = 8  # train shards fetched by --download (the val shard comes on top)
TOKENIZER_TRAIN_CHARS = 300000000  # characters of train text the BPE tokenizer learns from
# Fixed for every size.
DEFAULT_SEED = 42  # NIGHTLAB_SEED when unset
LOSS_EXPLODE_FACTOR = 3.0  # a loss above this many times ln(VOCAB_SIZE) has exploded
CAUSAL_TRIALS = 2  # perturbations tried by the causality check
EXPORT_FILE = "model.pt2"  # torch.export program, in the run dir
EXPORT_META = "model.json"  # what the evaluator needs besides the program
METRICS_FILE = "metrics.json"  # written by `python prepare.py evaluate` only
EXIT_BAD_INPUT, EXIT_NAN, EXIT_OOM, EXIT_INVALID = 2, 3, 4, 5
# ---------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "holdout")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> SystemExit:
    """A one-line error for the user; `raise fail(...)` exits with `code` and no traceback."""
    print(f"prepare.py: {message}", file=sys.stderr)
    return SystemExit(code)


def cache_dir() -> Path:
    return Path(os.environ.get("NIGHTLAB_CACHE") or Path.home() / ".cache" / "nightlab")


def dataset_dir(dataset: str | None = None) -> Path:
    """One folder per dataset; a path gets a name from its absolute location."""
    dataset = dataset or DATASET
    if dataset == "synthetic" or re.fullmatch(r"[a-z][a-z0-9-]*", dataset):
        return cache_dir() / dataset
    resolved = str(Path(dataset).expanduser().resolve())
    return cache_dir() / f"data-{hashlib.sha1(resolved.encode()).hexdigest()[:12]}"


def token_dir(dataset: str | None = None) -> Path:
    return dataset_dir(dataset) / (f"{TOKENIZER}{VOCAB_SIZE}" if TOKENIZER == "bpe" else TOKENIZER)


# ---------------------------------------------------------------------------------------------
# Tokenizer

_TOKENIZER: ByteTokenizer | BPETokenizer | None = None


def get_tokenizer() -> ByteTokenizer | BPETokenizer:
    """The tokenizer of DATASET (the BPE one is trained by `python prepare.py` on first use)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        if TOKENIZER == "byte":
            _TOKENIZER = ByteTokenizer()
        elif TOKENIZER == "bpe":
            path = token_dir() / "tokenizer.json"
            if not path.exists():
                ensure_data()
            _TOKENIZER = BPETokenizer(path, VOCAB_SIZE)
        else:
            raise fail(f'TOKENIZER = "{TOKENIZER}" is not "byte" or "bpe"')
    return _TOKENIZER


# ---------------------------------------------------------------------------------------------
# Preparing the splits: documents -> tokens -> {train,val,holdout}.bin (uint16)


def _expected_meta() -> dict:
    """What the prepared files depend on: a change to any of these rebuilds them."""
    meta = {"dataset": DATASET, "tokenizer": TOKENIZER, "vocab_size": VOCAB_SIZE, "eval_tokens": EVAL_TOKENS}
    if DATASET == "synthetic":
        meta["train_bytes"] = SYNTHETIC_TRAIN_BYTES
    return meta


def data_ready(dataset: str | None = None) -> bool:
    meta = token_dir(dataset) / "meta.json"
    return meta.exists() and json.loads(meta.read_text()).get("built_from") == _expected_meta()


def prepare_command(dataset: str | None = None) -> str:
    """The command that prepares `dataset`, for messages."""
    import sources

    dataset = dataset or DATASET
    if dataset == "synthetic":
        return "python prepare.py"
    if dataset in sources.DOWNLOADS:
        return f"python prepare.py --download {dataset}"
    return f"python prepare.py --data {dataset}"


def ensure_data() -> None:
    """Make sure the splits of DATASET exist: the synthetic corpus is built here, real data not."""
    if data_ready():
        return
    if DATASET != "synthetic":
        raise fail(f"no prepared data for DATASET={DATASET!r}; run `{prepare_command()}` first", 1)
    build_splits(synthetic_documents())


def synthetic_documents() -> Iterator[tuple[str, str]]:
    """(split, text) pairs: the train split by size, val and holdout until EVAL_TOKENS are covered."""
    import corpus

    train_bytes = 0
    index = 0
    while train_bytes < SYNTHETIC_TRAIN_BYTES:
        text = corpus.document("train", index)
        train_bytes += len(text.encode("utf-8"))
        index += 1
        yield "train", text
    # A byte is at most one token; a BPE token of this corpus is well under 8 bytes.
    needed = (EVAL_TOKENS + SEQ_LEN + 1) * (1 if TOKENIZER == "byte" else 8)
    for split in ("val", "holdout"):
        size, index = 0, 0
        while size < needed:
            text = corpus.document(split, index)
            size += len(text.encode("utf-8"))
            index += 1
            yield split, text


def build_splits(documents: Iterator[tuple[str, str]], train_texts: Iterator[str] | None = None) -> None:
    """Tokenize (split, text) pairs into the three .bin files; trains BPE first when needed.

    `documents` may be a one-shot iterator; `train_texts` feeds BPE training (defaults to a second
    pass over a fresh copy of the synthetic corpus).
    """
    global _TOKENIZER
    out = token_dir()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if TOKENIZER == "bpe":
        texts = (
            train_texts if train_texts is not None else (t for s, t in synthetic_documents() if s == "train")
        )
        _TOKENIZER = BPETokenizer.train(
            _capped(texts, TOKENIZER_TRAIN_CHARS), out / "tokenizer.json", VOCAB_SIZE
        )
        print(f"tokenizer: trained BPE ({VOCAB_SIZE} ids) in {time.time() - t0:.1f}s")
    tok = get_tokenizer()
    tmp = f".tmp{os.getpid()}"  # concurrent first runs must not write into each other's files
    files = {s: open(out / f"{s}.bin{tmp}", "wb") for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    try:
        for split, ids in _encode_stream(tok, documents):
            np.asarray(ids, dtype=np.uint16).tofile(files[split])
            counts[split] += len(ids)
    finally:
        for f in files.values():
            f.close()
    for s in SPLITS:
        os.replace(out / f"{s}.bin{tmp}", out / f"{s}.bin")
    meta = {"built_from": _expected_meta(), "tokens": counts, "seconds": round(time.time() - t0, 2)}
    (out / f"meta.json{tmp}").write_text(json.dumps(meta, indent=1))
    os.replace(out / f"meta.json{tmp}", out / "meta.json")
    print(f"data: {DATASET} ready in {out} ({', '.join(f'{s} {n:,}' for s, n in counts.items())} tokens)")
    if counts["val"] < EVAL_TOKENS + 1:
        print(f"data: warning: val has {counts['val']:,} tokens, fewer than EVAL_TOKENS={EVAL_TOKENS:,}")


def _capped(texts: Iterator[str], max_chars: int) -> Iterator[str]:
    total = 0
    for text in texts:
        yield text[:10000]
        total += min(len(text), 10000)
        if total >= max_chars:
            return


def _encode_stream(
    tok, documents: Iterator[tuple[str, str]], batch: int = 256
) -> Iterator[tuple[str, list[int]]]:
    """Token ids per document, encoded in batches (the BPE library encodes a batch in parallel)."""
    pending: list[tuple[str, str]] = []
    for item in documents:
        pending.append(item)
        if len(pending) == batch:
            yield from _encode_batch(tok, pending)
            pending = []
    yield from _encode_batch(tok, pending)


def _encode_batch(tok, items: list[tuple[str, str]]) -> Iterator[tuple[str, list[int]]]:
    yield from zip(
        [split for split, _ in items], tok.encode_documents([text for _, text in items]), strict=True
    )


def load_split(split: str) -> np.ndarray:
    """The tokens of one split, memory-mapped (the whole split is never read into memory)."""
    ensure_data()
    return np.memmap(token_dir() / f"{split}.bin", dtype=np.uint16, mode="r")


# ---------------------------------------------------------------------------------------------
# What train.py uses: loader, budget, seed, run dir, loss and OOM checks


def make_train_loader(
    batch_size: int, seq_len: int = SEQ_LEN, device: str | torch.device = "cpu", seed: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, y) batches of the TRAIN split, y = x shifted by one token.

    Each epoch cuts the split into non-overlapping rows at a random offset and visits them in a
    random order, so no row repeats before the whole split has been seen.
    """
    tokens = load_split("train")  # here, not in the generator: missing data fails at the call
    rows = (len(tokens) - seq_len - 1) // seq_len
    if rows < batch_size:
        raise fail(
            f"the train split ({len(tokens):,} tokens) has fewer than {batch_size} rows of {seq_len}", 1
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


def _env_number(name: str, kind: type) -> float | int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        raise fail(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise fail(f"{name}={raw!r} must be positive")
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
    raw = os.environ.get("NIGHTLAB_SEED", "").strip()
    try:
        return int(raw) if raw else DEFAULT_SEED
    except ValueError:
        raise fail(f"NIGHTLAB_SEED={raw!r} is not an integer") from None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_run_dir() -> Path:
    """NIGHTLAB_RUN_DIR (set by the harness), else ./run for plain runs; created."""
    path = Path(os.environ.get("NIGHTLAB_RUN_DIR") or "run")
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    """`with prepare.oom_guard(): ...` turns out-of-memory into `status: oom (...)` and exit 4."""
    try:
        yield
    except Exception as exc:
        if not is_oom(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"status: oom ({first[:200]})", flush=True)
        raise SystemExit(EXIT_OOM) from None


# ---------------------------------------------------------------------------------------------
# Export and evaluation


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


SUMMARY_ORDER = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "peak_memory_mb"]
SUMMARY_ORDER += ["mfu_percent", "total_tokens_M", "num_steps", "num_params_M", "depth"]


def format_summary(values: dict) -> str:
    """The block autoresearch users know: `---`, then `key:  value` lines in a fixed order."""
    keys = [k for k in SUMMARY_ORDER if k in values] + [k for k in values if k not in SUMMARY_ORDER]
    lines = ["---"]
    for key in keys:
        value = values[key]
        if isinstance(value, float):
            # Millions get three decimals: a 60 s cpu run trains about 1M tokens of a 0.9M model.
            decimals = (
                6 if key == "val_bpb" else 2 if key == "mfu_percent" else 3 if key.endswith("_M") else 1
            )
            value = f"{value:.{decimals}f}"
        lines.append(f"{key + ':':<18}{value}")
    return "\n".join(lines)


def finish(model: torch.nn.Module, summary: dict) -> None:
    """What train.py calls last: export the model, evaluate it in a child process, print the block.

    Under the harness (NIGHTLAB_EVAL_SEPARATE=1) the harness runs the evaluation itself, so the
    block is printed without val_bpb.
    """
    export_model(model)
    values = dict(summary)
    if os.environ.get("NIGHTLAB_EVAL_SEPARATE", "0") in ("", "0"):
        run_dir = get_run_dir()
        env = dict(os.environ, NIGHTLAB_RUN_DIR=str(run_dir.resolve()))
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "evaluate"],
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
        values = {"val_bpb": metrics["val_bpb"], **values}
        print(
            f"evaluation: {metrics['eval_seconds']:.1f}s in a separate process, {metrics['eval_tokens']:,} val tokens"
        )
    print(format_summary(values), flush=True)


# ---------------------------------------------------------------------------------------------
# Periodic evaluation and stopping at a target (`nightlab validate --time-to-target`)

CURVE_FILE = "curve.jsonl"  # one line per periodic evaluation, in the run dir
CURVE_EVAL_TOKENS = EVAL_TOKENS // 4  # val tokens each periodic evaluation scores (a prefix of val)


class _Curve:
    """What the harness asked for: NIGHTLAB_EVAL_INTERVAL_SECONDS, NIGHTLAB_TARGET_METRIC (and
    NIGHTLAB_TARGET_DIRECTION), read once, plus when the next evaluation is due."""

    def __init__(self) -> None:
        self.interval = _env_number("NIGHTLAB_EVAL_INTERVAL_SECONDS", float)
        raw = os.environ.get("NIGHTLAB_TARGET_METRIC", "").strip()
        try:
            self.target = float(raw) if raw else None
        except ValueError:
            raise fail(f"NIGHTLAB_TARGET_METRIC={raw!r} is not a number") from None
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
    final model, and the harness checks it against the curve.
    """
    global _curve
    if _curve is None:
        _curve = _Curve()
    curve = _curve
    if curve.interval is None or training_seconds < curve.next_at:
        return False
    while curve.next_at <= training_seconds:
        curve.next_at += curve.interval
    import evaluation  # imports this module as `prepare`: the same constants and data

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


# ---------------------------------------------------------------------------------------------
# Command line


def set_dataset(value: str) -> None:
    """Point DATASET (the literal at the top of this file) at freshly prepared data."""
    path = Path(__file__).resolve()
    text = path.read_text()
    new = re.sub(
        r'^DATASET = "[^"\n]*"', lambda _: f"DATASET = {json.dumps(value)}", text, count=1, flags=re.M
    )
    if new != text:
        path.write_text(new)
        print(f"prepare.py: DATASET set to {value!r}; commit prepare.py before starting a session")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command", nargs="?", choices=["evaluate"], help="evaluate the model in NIGHTLAB_RUN_DIR"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data", metavar="PATH", help=".txt, .jsonl or .parquet (a text column): a file or a folder"
    )
    source.add_argument(
        "--download", metavar="NAME", help="a public parquet shard set: climbmix, tinystories, fineweb-edu"
    )
    parser.add_argument("--shards", type=int, default=DOWNLOAD_SHARDS, help="train shards to download")
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        import evaluation  # imports this file as `prepare`: same constants, same functions

        return evaluation.evaluate(get_run_dir(), started=T_IMPORT)
    import sources

    try:
        return _prepare(args)
    except sources.SourceError as exc:
        raise fail(str(exc), exc.code) from None


def _prepare(args: argparse.Namespace) -> int:
    global DATASET
    import sources

    if args.data:
        files = sources.find_files(args.data)  # checks the path before anything else happens
        DATASET = str(Path(args.data).expanduser().resolve())
        docs, train = sources.split_documents(files, _val_fraction(sources.total_size(files)))
        build_splits(docs, train)
        set_dataset(DATASET)
    elif args.download:
        files, val_files = sources.download(args.download, args.shards, dataset_dir(args.download) / "raw")
        DATASET = args.download
        build_splits(*sources.split_by_shard(files, val_files))
        set_dataset(DATASET)
    elif data_ready():
        print(f"data: {DATASET} already prepared in {token_dir()}")
    elif DATASET == "synthetic":
        t0 = time.time()
        build_splits(synthetic_documents())
        print(f"data: synthetic corpus generated and tokenized in {time.time() - t0:.1f}s")
    elif DATASET in sources.DOWNLOADS:
        return main(["--download", DATASET])
    else:
        return main(["--data", DATASET])
    return 0


def _val_fraction(total_bytes: int) -> float:
    """Share of documents for val (and again for holdout): enough for EVAL_TOKENS, 1% to 10%."""
    bytes_per_token = 1 if TOKENIZER == "byte" else 5
    return min(0.1, max(0.01, 1.2 * EVAL_TOKENS * bytes_per_token / max(total_bytes, 1)))


if __name__ == "__main__":
    sys.exit(main())
