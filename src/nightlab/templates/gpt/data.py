"""The frozen settings of the GPT research target, and where its prepared data is read from.

FROZEN: nightlab hashes this file; an experiment that changes it is invalid. Every other file of
the template takes its settings from here, and this file imports none of them (tokenizer.py
aside: it only defines the tokenizer classes), so there is one place that says which data, which
tokenizer and which sequence length every run and every evaluation share.

The constants are plain literals that tools rewrite textually: `nightlab init --size NAME` the
size-dependent ones ([NAME.data] in sizes.toml), `nightlab init --dataset NAME|PATH` DATASET.
Nothing rewrites this file while a session runs.

This is the read side: `python prepare.py` writes the files read here. They live in
~/.cache/nightlab/ (NIGHTLAB_CACHE overrides it): one folder per dataset holding train.bin,
val.bin and holdout.bin token files per tokenizer. The train loader (harness.py) opens train.bin
only; val and holdout are read by the evaluation alone.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import io
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import NoReturn

import numpy as np
from tokenizer import BPETokenizer, ByteTokenizer

# ---------------------------------------------------------------------------------------------
# Constants. Size-dependent ones are plain literals: `nightlab init --size gpu` rewrites them.
DATASET = "synthetic"  # "synthetic", a --download name (climbmix, tinystories, fineweb-edu) or a path
# What DATASET may name besides a path (`nightlab init --dataset` refuses other names).
DATASET_NAMES = ("synthetic", "climbmix", "fineweb-edu", "tinystories")
TOKENIZER = "byte"  # "byte" (one token per UTF-8 byte) or "bpe" (trained on the train split)
VOCAB_SIZE = 256  # 256 for byte; the BPE vocabulary size (special tokens included) otherwise
SEQ_LEN = 256  # context length of training rows and of every evaluation row
EVAL_TOKENS = 32768  # val tokens scored by the evaluation (the same number of holdout tokens)
EVAL_BATCH_SIZE = 16  # rows per evaluation forward pass (the export's fixed batch dimension)
DEFAULT_BUDGET_SECONDS = 60  # training seconds when nightlab sets no NIGHTLAB_BUDGET_*
SYNTHETIC_TRAIN_BYTES = 8000000  # size of the synthetic train split (60 s of cpu training: no repeats)
DOWNLOAD_SHARDS = 8  # train shards fetched by --download (the val shard comes on top)
TOKENIZER_TRAIN_CHARS = 300000000  # characters of train text the BPE tokenizer learns from
# Fixed for every size.
DEFAULT_SEED = 42  # NIGHTLAB_SEED when unset
LOSS_EXPLODE_FACTOR = 3.0  # a loss above this many times ln(VOCAB_SIZE) has exploded
CAUSAL_TRIALS = 4  # row-wise perturbations tried by the causality check (each checks every row)
EXPORT_FILE = "model.pt2"  # torch.export program, in the run dir
EXPORT_META = "model.json"  # what the evaluator needs besides the program
METRICS_FILE = "metrics.json"  # written by `python evaluation.py` only
EXIT_BAD_INPUT, EXIT_NAN, EXIT_OOM, EXIT_INVALID = 2, 3, 4, 5
# ---------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "holdout")
PREPARE_COMMAND = "python prepare.py"  # prepares whatever DATASET names
EVAL_KEY_FILE = "eval.key"  # the synthetic corpus's val/holdout key (prepare.py), private like val.bin

# Progress while a run trains: checkpoints the training process leaves, scored beside it by
# `python evaluation.py --follow` on a val prefix (the training process never reads val).
PROGRESS_FILE = "progress.jsonl"  # one line per checkpoint, written by the training process
PROGRESS_EVAL_FILE = "progress.eval.jsonl"  # the same lines plus the metric, by the evaluator
PROGRESS_DIR = "progress"  # the checkpoints' files, one folder each (deleted once scored)
WEIGHTS_FILE = "weights.pt"  # a later checkpoint: weights only, for the first one's program
STOP_FILE = "stop"  # created by the evaluator at NIGHTLAB_TARGET_METRIC: training stops
DONE_FILE = "progress.done"  # created by nightlab when training has ended: the evaluator finishes
FINAL_FILE = "progress.final"  # created by nightlab before it: the evaluator then does the final evaluation
PROGRESS_EVAL_TOKENS = EVAL_TOKENS // 4  # val tokens scored per checkpoint (a prefix of val)


def fail(message: str, code: int = EXIT_BAD_INPUT, where: str = "data.py") -> SystemExit:
    """A one-line error for the user; `raise fail(...)` exits with `code` and no traceback.

    `where` is the file the message comes from, so the line says where to look.
    """
    print(f"{where}: {message}", file=sys.stderr)
    return SystemExit(code)


def exit_now(code: int = 0) -> NoReturn:
    """End the process with `code` without the interpreter's teardown: what train.py and
    evaluation.py call when they are done.

    At exit Python frees every module object by object; with torch, torch.export and sympy loaded
    that took about a second on a 2-core machine, once per training process and once per
    evaluation: time outside training on every run (docs/BENCHMARKS.md). Only that is skipped:
    atexit handlers still run (a logger's flush, wandb.finish, torch's compile workers), then
    every open file is flushed. While a thread other than daemons is alive (the normal exit
    would wait for it) it exits the normal way.
    """
    me = threading.current_thread()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not me):
        sys.exit(code)
    atexit._run_exitfuncs()
    # Text layers first: their flush writes into the binary buffers flushed after them.
    writable = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)
    opened = [f for f in gc.get_objects() if type(f) in writable]
    for f in sorted(opened, key=lambda f: type(f) is not io.TextIOWrapper):
        try:
            if not f.closed:
                f.flush()
        except (OSError, ValueError):
            pass  # a file the script broke or closed underneath: nothing more can be saved
    os._exit(code)


def not_prepared() -> SystemExit:
    """The error for data that `python prepare.py` has not written yet (exit 1)."""
    return fail(f"no prepared data for DATASET={DATASET!r}; run `{PREPARE_COMMAND}` first", 1)


def cache_dir() -> Path:
    """Where prepared data lives: NIGHTLAB_CACHE, else ~/.cache/nightlab (shared by every run)."""
    return Path(os.environ.get("NIGHTLAB_CACHE") or Path.home() / ".cache" / "nightlab")


def dataset_dir(dataset: str | None = None) -> Path:
    """One folder per dataset; a path gets a name from its absolute location."""
    dataset = dataset or DATASET
    if dataset == "synthetic":
        # Its val and holdout depend on a secret key since v2 (corpus.py): a folder of its own, so
        # workspaces made before (fixed val documents) and after never rebuild each other's files.
        return cache_dir() / "synthetic-v2"
    if re.fullmatch(r"[a-z][a-z0-9-]*", dataset):
        return cache_dir() / dataset
    resolved = str(Path(dataset).expanduser().resolve())
    return cache_dir() / f"data-{hashlib.sha1(resolved.encode()).hexdigest()[:12]}"


def token_dir(dataset: str | None = None) -> Path:
    """The token files of `dataset` (DATASET by default) under this file's tokenizer settings."""
    return dataset_dir(dataset) / (f"{TOKENIZER}{VOCAB_SIZE}" if TOKENIZER == "bpe" else TOKENIZER)


def get_run_dir() -> Path:
    """NIGHTLAB_RUN_DIR (set by nightlab), else ./run for plain runs; created."""
    path = Path(os.environ.get("NIGHTLAB_RUN_DIR") or "run")
    path.mkdir(parents=True, exist_ok=True)
    return path


def expected_meta(dataset: str | None = None) -> dict:
    """What the prepared files depend on: a change to any of these rebuilds them."""
    dataset = dataset or DATASET
    meta = {"dataset": dataset, "tokenizer": TOKENIZER, "vocab_size": VOCAB_SIZE, "eval_tokens": EVAL_TOKENS}
    if dataset == "synthetic":
        meta["train_bytes"] = SYNTHETIC_TRAIN_BYTES
    return meta


def data_ready(dataset: str | None = None) -> bool:
    """Whether `python prepare.py` has written `dataset` (DATASET by default) for these settings."""
    meta = token_dir(dataset) / "meta.json"
    return meta.exists() and json.loads(meta.read_text()).get("built_from") == expected_meta(dataset)


_TOKENIZER: ByteTokenizer | BPETokenizer | None = None


def get_tokenizer() -> ByteTokenizer | BPETokenizer:
    """The tokenizer of DATASET (the BPE one is trained by `python prepare.py`)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        if TOKENIZER == "byte":
            _TOKENIZER = ByteTokenizer()
        elif TOKENIZER == "bpe":
            path = token_dir() / "tokenizer.json"
            if not path.exists():
                raise not_prepared()
            _TOKENIZER = BPETokenizer(path, VOCAB_SIZE)
        else:
            raise fail(f'TOKENIZER = "{TOKENIZER}" is not "byte" or "bpe"')
    return _TOKENIZER


def load_split(split: str) -> np.ndarray:
    """The tokens of one split, memory-mapped (the whole split is never read into memory)."""
    if not data_ready():
        raise not_prepared()
    return np.memmap(token_dir() / f"{split}.bin", dtype=np.uint16, mode="r")
