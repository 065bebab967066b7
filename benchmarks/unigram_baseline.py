"""val_bpb of a real training run against a byte-unigram model of the val split.

The unigram figure is what a model that ignores all context can reach: the entropy (bits) of the
byte distribution of the scored val bytes themselves (a lower bound for any unigram model), and
the cross-entropy of a unigram fitted on the train split. Then `--runs` plain runs of train.py
(one seed each, 1..N) report val_bpb, its spread over seeds, and how far below the unigram it is.

    python benchmarks/unigram_baseline.py                          # unigram figures only
    python benchmarks/unigram_baseline.py --runs 3 --seconds 60    # + three 60 s training runs
    python benchmarks/unigram_baseline.py --runs 3 --set MATRIX_LR=0.16   # a knob changed
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys

import numpy as np

from eval_overhead import make_workspace


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def cross_entropy_bits(fit: np.ndarray, data: np.ndarray) -> float:
    q = (fit + 1) / (fit + 1).sum()  # add-one: every byte value stays possible
    return float(-(data * np.log2(q)).sum() / data.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="cpu")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=LITERAL", help="override a constant"
    )
    parser.add_argument("--runs", type=int, default=0, help="training runs (seeds 1..N)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None, help="NIGHTLAB_CACHE (default: a temporary folder)")
    args = parser.parse_args()

    ws = make_workspace(args.size, args.set)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), NIGHTLAB_CACHE=args.cache or str(ws / "cache"))
    env.pop("NIGHTLAB_EVAL_SEPARATE", None)
    subprocess.run([sys.executable, "prepare.py"], cwd=ws, env=env, check=True, capture_output=True)
    sys.path.insert(0, str(ws))
    os.environ["NIGHTLAB_CACHE"] = env["NIGHTLAB_CACHE"]
    import data

    if data.TOKENIZER != "byte":
        sys.exit("the unigram baseline is a byte model: use a size with TOKENIZER = 'byte'")
    n = data.EVAL_TOKENS // data.SEQ_LEN * data.SEQ_LEN
    val = np.asarray(data.load_split("val")[1 : n + 1])  # exactly the bytes the evaluation scores
    train = np.asarray(data.load_split("train"))
    val_counts = np.bincount(val, minlength=256).astype(np.float64)
    oracle = entropy_bits(val_counts)
    fitted = cross_entropy_bits(np.bincount(train, minlength=256).astype(np.float64), val_counts)
    print(f"val split: {n:,} scored bytes, {int((val_counts > 0).sum())} distinct byte values")
    print(f"byte-unigram entropy of the val bytes (oracle): {oracle:.4f} bits/byte")
    print(f"byte-unigram fitted on train, scored on val:    {fitted:.4f} bits/byte")
    print(f"uniform over 256 bytes:                         {math.log2(256):.4f} bits/byte")

    results = []
    for seed in range(1, args.runs + 1):
        proc = subprocess.run(
            [sys.executable, "train.py"],
            cwd=ws,
            env=dict(
                env,
                NIGHTLAB_SEED=str(seed),
                NIGHTLAB_BUDGET_SECONDS=str(args.seconds),
                NIGHTLAB_RUN_DIR=str(ws / f"run{seed}"),
            ),
            capture_output=True,
            text=True,
        )
        found = re.search(r"^val_bpb:\s+([0-9.]+)$", proc.stdout, re.M)
        if proc.returncode != 0 or not found:
            sys.exit(
                f"seed {seed}: train.py failed ({proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        steps = re.search(r"^num_steps:\s+(\d+)$", proc.stdout, re.M)
        tokens = re.search(r"^total_tokens_M:\s+([0-9.]+)$", proc.stdout, re.M)
        results.append(float(found.group(1)))
        print(
            f"seed {seed}: val_bpb {results[-1]:.4f} ({100 * (1 - results[-1] / oracle):.1f}% below the unigram entropy; "
            f"{steps.group(1) if steps else '?'} steps, {tokens.group(1) if tokens else '?'}M tokens)"
        )
    if results:
        mean = statistics.mean(results)
        spread = statistics.stdev(results) if len(results) > 1 else 0.0
        print(
            f"val_bpb over {len(results)} seeds: mean {mean:.4f}, std {spread:.4f}, range {max(results) - min(results):.4f}; "
            f"{100 * (1 - mean / oracle):.1f}% below the unigram entropy {oracle:.4f}"
        )
    shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
