"""Data preparation for the GPT research target: the workspace's `setup` command.

FROZEN: nightlab hashes this file; an experiment that changes it is invalid. It turns documents
into the token files that data.py reads, once, before any run:

    python prepare.py                    # prepare DATASET (set in data.py): all splits (+ the BPE tokenizer)
    python prepare.py --data PATH        # your own .txt / .jsonl / .parquet file or folder
    python prepare.py --download NAME    # climbmix | tinystories | fineweb-edu  [--shards N]

--data and --download prepare other data without changing which data the runs use: no file of
the workspace is rewritten (a session would see a frozen file change). They end by saying how to
point DATASET at what they prepared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from data import (
    DATASET,
    DOWNLOAD_SHARDS,
    EVAL_KEY_FILE,
    EVAL_TOKENS,
    SEQ_LEN,
    SPLITS,
    SYNTHETIC_TRAIN_BYTES,
    TOKENIZER,
    TOKENIZER_TRAIN_CHARS,
    VOCAB_SIZE,
    data_ready,
    dataset_dir,
    expected_meta,
    fail,
    get_tokenizer,
    not_prepared,
    token_dir,
)
from tokenizer import BPETokenizer, ByteTokenizer

HERE = "prepare.py"  # the name this file's errors start with


def ensure_data() -> None:
    """Make sure the splits of DATASET exist: the synthetic corpus is built here, real data not.

    The train loader calls this, so `python train.py` works in a fresh folder with the default
    synthetic data; downloads and the user's files are left to `python prepare.py`.
    """
    if data_ready():
        return
    if DATASET != "synthetic":
        raise not_prepared()
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
    key = eval_key()
    for split in ("val", "holdout"):
        size, index = 0, 0
        while size < needed:
            text = corpus.document(split, index, key)
            size += len(text.encode("utf-8"))
            index += 1
            yield split, text


def eval_key() -> int:
    """The synthetic corpus's secret key for val and holdout (corpus.py): drawn at random the first
    time, then read back, so every rebuild (another EVAL_TOKENS, tokenizer) writes the same val
    documents and runs of one night stay comparable. Training cannot read it under the sandbox:
    the template lists it in `[target] private`."""
    path = dataset_dir("synthetic") / EVAL_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(f"{int.from_bytes(os.urandom(16), 'big')}\n")
        try:
            os.link(tmp, path)  # two first preparations at once: the first key wins, both use it
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        return int(path.read_text())
    except ValueError:
        raise fail(
            f"{path} is not a key written by prepare.py; delete its folder and prepare again", 1, HERE
        ) from None


def build_splits(
    documents: Iterator[tuple[str, str]], train_texts: Iterator[str] | None = None, dataset: str = DATASET
) -> None:
    """Tokenize (split, text) pairs of `dataset` into the three .bin files; trains BPE first when needed.

    `documents` may be a one-shot iterator; `train_texts` feeds BPE training (defaults to a second
    pass over a fresh copy of the synthetic corpus).
    """
    out = token_dir(dataset)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if TOKENIZER == "bpe":
        texts = (
            train_texts if train_texts is not None else (t for s, t in synthetic_documents() if s == "train")
        )
        tok: ByteTokenizer | BPETokenizer = BPETokenizer.train(
            _capped(texts, TOKENIZER_TRAIN_CHARS), out / "tokenizer.json", VOCAB_SIZE
        )
        print(f"tokenizer: trained BPE ({VOCAB_SIZE} ids) in {time.time() - t0:.1f}s")
    else:
        tok = get_tokenizer()  # the byte tokenizer, or the error that names a bad TOKENIZER
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
    meta = {"built_from": expected_meta(dataset), "tokens": counts, "seconds": round(time.time() - t0, 2)}
    (out / f"meta.json{tmp}").write_text(json.dumps(meta, indent=1))
    os.replace(out / f"meta.json{tmp}", out / "meta.json")
    print(f"data: {dataset} ready in {out} ({', '.join(f'{s} {n:,}' for s, n in counts.items())} tokens)")
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
    tok: ByteTokenizer | BPETokenizer, documents: Iterator[tuple[str, str]], batch: int = 256
) -> Iterator[tuple[str, list[int]]]:
    """Token ids per document, encoded in batches (the BPE library encodes a batch in parallel)."""
    pending: list[tuple[str, str]] = []
    for item in documents:
        pending.append(item)
        if len(pending) == batch:
            yield from _encode_batch(tok, pending)
            pending = []
    yield from _encode_batch(tok, pending)


def _encode_batch(
    tok: ByteTokenizer | BPETokenizer, items: list[tuple[str, str]]
) -> Iterator[tuple[str, list[int]]]:
    yield from zip(
        [split for split, _ in items], tok.encode_documents([text for _, text in items]), strict=True
    )


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    """`python prepare.py [--data PATH | --download NAME [--shards N]]`; returns the exit code."""
    import sources

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data", metavar="PATH", help=".txt, .jsonl or .parquet (a text column): a file or a folder"
    )
    source.add_argument(
        "--download", metavar="NAME", help="a public parquet shard set: climbmix, tinystories, fineweb-edu"
    )
    parser.add_argument("--shards", type=int, default=DOWNLOAD_SHARDS, help="train shards to download")
    args = parser.parse_args(argv)
    try:
        return _prepare(args)
    except sources.SourceError as exc:
        raise fail(str(exc), exc.code, HERE) from None


def _prepare(args: argparse.Namespace) -> int:
    import sources

    if args.data:
        _prepare_files(args.data, str(Path(args.data).expanduser().resolve()))
    elif args.download:
        _prepare_download(args.download, args.shards)
    elif data_ready():
        print(f"data: {DATASET} already prepared in {token_dir()}")
    elif DATASET == "synthetic":
        t0 = time.time()
        build_splits(synthetic_documents())
        print(f"data: synthetic corpus generated and tokenized in {time.time() - t0:.1f}s")
    elif DATASET in sources.DOWNLOADS:
        _prepare_download(DATASET, args.shards)
    else:
        # Prepared under DATASET as written, so data.py finds it whatever the path looks like.
        _prepare_files(DATASET, DATASET)
    return 0


def _prepare_files(path: str, dataset: str) -> None:
    import sources

    files = sources.find_files(path)  # checks the path before anything else happens
    docs, train = sources.split_documents(files, _val_fraction(sources.total_size(files)))
    build_splits(docs, train, dataset)
    _say_how_to_use(dataset)


def _prepare_download(name: str, shards: int) -> None:
    import sources

    files, val_files = sources.download(name, shards, dataset_dir(name) / "raw")
    build_splits(*sources.split_by_shard(files, val_files), dataset=name)
    _say_how_to_use(name)


def _say_how_to_use(dataset: str) -> None:
    """One line on pointing the runs at `dataset`, unless DATASET already names it.

    This file never rewrites itself or data.py: DATASET is a literal that the user (or
    `nightlab init --dataset`) sets, and commits, before a session starts.
    """
    if dataset_dir(dataset) != dataset_dir():
        print(
            f"{HERE}: to train on it, set DATASET = {json.dumps(dataset)} in data.py and commit "
            f"(or create the workspace with `nightlab init DIR --dataset {dataset}`)"
        )


def _val_fraction(total_bytes: int) -> float:
    """Share of documents for val (and again for holdout): enough for EVAL_TOKENS, 1% to 10%."""
    bytes_per_token = 1 if TOKENIZER == "byte" else 5
    return min(0.1, max(0.01, 1.2 * EVAL_TOKENS * bytes_per_token / max(total_bytes, 1)))


if __name__ == "__main__":
    sys.exit(main())
