"""val_bpb of train.py against the straightforward GPT after the same training seconds.

tokens_per_second.py says how fast each model chews tokens; this says what that buys. Both run
in one temporary workspace of the template (size from sizes.toml, plus `--set` overrides), on
the same train loader and budget (NIGHTLAB_BUDGET_SECONDS, training time only) and through the
same export and separate evaluation. The naive GPT (naive_gpt.py, trained by naive_train.py with
nanoGPT's recipe) gets train.py's depth, width, heads, MLP ratio and tokens per step, and is
tried at several peak learning rates so that it is not judged by one untuned guess. Runs
interleave (train.py, then each naive lr, per seed) so that a machine's drifting load hits both.

    python benchmarks/equal_time.py --seconds 60 --seeds 2 --naive-lrs 1e-3,3e-3,1e-2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from eval_overhead import make_workspace

HERE = Path(__file__).resolve().parent


def run_training(script: str, ws: Path, env: dict, label: str) -> dict:
    """One training run to its summary block's val_bpb and num_steps."""
    proc = subprocess.run([sys.executable, script], cwd=ws, env=env, capture_output=True, text=True)
    found = dict(re.findall(r"^(val_bpb|num_steps):\s+([0-9.]+)$", proc.stdout, re.M))
    if proc.returncode != 0 or "val_bpb" not in found:
        sys.exit(
            f"{label}: {script} failed ({proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return {k: float(v) for k, v in found.items()}


def template_shape(ws: Path) -> dict[str, str]:
    """train.py's shape, read by building its model: what the naive GPT must match."""
    sys.path.insert(0, str(ws))
    spec = importlib.util.spec_from_file_location("workspace_train", ws / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    import data  # the workspace's, imported by train.py just now

    width = train.model_width(train.DEPTH, train.ASPECT_RATIO, train.HEAD_DIM)
    return {
        "NAIVE_DEPTH": str(train.DEPTH),
        "NAIVE_WIDTH": str(width),
        "NAIVE_HEADS": str(width // train.HEAD_DIM),
        "NAIVE_MLP_RATIO": str(train.MLP_RATIO),
        "NAIVE_BATCH": str(train.TOTAL_BATCH_SIZE // data.SEQ_LEN),  # same tokens per step
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=LITERAL")
    parser.add_argument("--seconds", type=float, default=60, help="training seconds per run")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 1..N for every model")
    parser.add_argument("--naive-lrs", default="1e-3,3e-3,1e-2", help="comma-separated AdamW peak lrs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None, help="NIGHTLAB_CACHE (default: a temporary folder)")
    args = parser.parse_args()
    try:
        lrs = [float(v) for v in args.naive_lrs.split(",")]
    except ValueError:
        sys.exit(f"--naive-lrs {args.naive_lrs!r}: expected numbers separated by commas")

    ws = make_workspace(args.size, args.set)
    for name in ("naive_gpt.py", "naive_train.py"):
        shutil.copy(HERE / name, ws / name)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), NIGHTLAB_CACHE=args.cache or str(ws / "cache"))
    for name in ("NIGHTLAB_EVAL_SEPARATE", "NIGHTLAB_BUDGET_TOKENS", "NIGHTLAB_BUDGET_STEPS"):
        env.pop(name, None)
    subprocess.run([sys.executable, "prepare.py"], cwd=ws, env=env, check=True, capture_output=True)
    os.environ["NIGHTLAB_CACHE"] = env["NIGHTLAB_CACHE"]
    shape = template_shape(ws)
    print(f"shape {shape}, {args.seconds:g} s per run, {args.threads} threads", flush=True)

    results: dict[str, list[dict]] = {"train.py": [], **{f"naive lr {lr:g}": [] for lr in lrs}}
    for seed in range(1, args.seeds + 1):
        base = dict(env, NIGHTLAB_SEED=str(seed), NIGHTLAB_BUDGET_SECONDS=str(args.seconds))
        runs = [("train.py", "train.py", {})] + [
            (f"naive lr {lr:g}", "naive_train.py", dict(shape, NAIVE_LR=str(lr))) for lr in lrs
        ]
        for i, (label, script, extra) in enumerate(runs):
            run_env = dict(base, **extra, NIGHTLAB_RUN_DIR=str(ws / f"run-{seed}-{i}"))
            results[label].append(run_training(script, ws, run_env, f"{label}, seed {seed}"))
            r = results[label][-1]
            print(
                f"seed {seed} {label:16s} val_bpb {r['val_bpb']:.4f}  {r['num_steps']:.0f} steps",
                flush=True,
            )

    means = {label: statistics.mean(r["val_bpb"] for r in runs) for label, runs in results.items()}
    # Both take the same tokens per step, so steps compare tokens.
    steps = {label: statistics.mean(r["num_steps"] for r in runs) for label, runs in results.items()}
    print(f"\nmean over {args.seeds} seed(s), {args.seconds:g} training seconds each:")
    for label in results:
        print(f"  {label:16s} val_bpb {means[label]:.4f}  {steps[label]:.0f} steps")
    best = min((label for label in results if label != "train.py"), key=means.__getitem__)
    ours = means["train.py"]
    print(
        f"train.py {ours:.4f} against the best naive ({best}) {means[best]:.4f}: "
        f"{100 * (ours - means[best]) / means[best]:+.1f} % val_bpb with "
        f"{steps['train.py'] / steps[best]:.2f}x its tokens"
    )
    # The same gap as a time: when does train.py reach the naive GPT's final val_bpb? Its curve
    # evaluation (every second of training, on a quarter of the val tokens) stops it there.
    run_env = dict(
        env,
        NIGHTLAB_SEED="1",
        NIGHTLAB_BUDGET_SECONDS=str(args.seconds),
        NIGHTLAB_EVAL_INTERVAL_SECONDS="1",
        NIGHTLAB_TARGET_METRIC=str(means[best]),
        NIGHTLAB_RUN_DIR=str(ws / "run-target"),
    )
    reached = run_training("train.py", ws, run_env, "train.py to the naive target")
    last = json.loads((ws / "run-target" / "curve.jsonl").read_text().splitlines()[-1])
    if last["val_bpb"] > means[best]:
        print(
            f"train.py (seed 1) did not reach the naive GPT's val_bpb {means[best]:.4f} in {args.seconds:g} s"
        )
    else:
        print(
            f"train.py (seed 1) reached the naive GPT's {args.seconds:g} s val_bpb {means[best]:.4f} after "
            f"{last['training_seconds']:.1f} training seconds ({reached['num_steps']:.0f} steps): "
            f"{args.seconds / last['training_seconds']:.1f}x sooner"
        )
    shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
