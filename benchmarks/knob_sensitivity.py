"""Does turning one knob of train.py move val_bpb by more than seed noise?

An agent can only find improvements if sensible one-knob changes move the metric by clearly
more than the seed-to-seed spread. This script runs the template's train.py (cpu size, as
shipped) in a fresh temporary workspace: the baseline over several seeds, then each variant,
and prints every val_bpb with the variant's shift from the baseline mean in units of the seed
spread (max - min of the baseline seeds).

    python benchmarks/knob_sensitivity.py                      # 60 s runs: 3 seeds, LR x4, depth -2/+2
    python benchmarks/knob_sensitivity.py --tokens 400000      # token budget: independent of machine load
    python benchmarks/knob_sensitivity.py --variant "bs4k: TOTAL_BATCH_SIZE=4096 DEVICE_BATCH_SIZE=16"

Runs are sequential (one training process at a time, --threads torch threads each).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "nightlab" / "templates" / "gpt"


def set_constants(source: str, values: dict[str, str]) -> str:
    """Rewrite `NAME = literal  # comment` lines of a template file, keeping the comment."""
    for name, literal in values.items():
        ast.literal_eval(literal)  # only plain literals, as the size rewriting allows
        pattern = re.compile(rf"^({name} = )(.+?)(\s+#.*)?$", re.M)
        source, count = pattern.subn(
            lambda m, lit=literal: m.group(1) + lit + (m.group(3) or ""), source, count=1
        )
        if count != 1:
            raise SystemExit(f"knob_sensitivity: no constant {name} in train.py")
    return source


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """'label: NAME=VALUE NAME=VALUE' -> (label, {NAME: VALUE})."""
    label, _, assignments = text.partition(":")
    pairs = dict(item.split("=", 1) for item in assignments.split())
    return label.strip(), pairs


def shipped(name: str) -> int | float:
    """The value of constant NAME in the template's train.py as shipped."""
    match = re.search(rf"^{name} = ([^#\n]+)", (TEMPLATE / "train.py").read_text(), re.M)
    if match is None:
        raise SystemExit(f"knob_sensitivity: no constant {name} in train.py")
    return ast.literal_eval(match.group(1).strip())


def run_once(ws: Path, values: dict[str, str], seed: int, env: dict[str, str]) -> tuple[float, str]:
    """One training run of train.py with `values` applied; returns (val_bpb, summary line)."""
    script = ws / "train_variant.py"
    script.write_text(set_constants((ws / "train.py").read_text(), values))
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=ws))
    run_env = dict(env, NIGHTLAB_SEED=str(seed), NIGHTLAB_RUN_DIR=str(run_dir))
    proc = subprocess.run([sys.executable, script.name], cwd=ws, env=run_env, capture_output=True, text=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    found = dict(re.findall(r"^(\w+):\s+(\S+)$", proc.stdout, re.M))
    if proc.returncode != 0 or "val_bpb" not in found:
        tail = (proc.stdout + proc.stderr)[-800:]
        raise SystemExit(f"knob_sensitivity: run failed (exit {proc.returncode}) with {values}:\n{tail}")
    info = f"steps {found.get('num_steps')} tokens {found.get('total_tokens_M')}M train {found.get('training_seconds')}s"
    return float(found["val_bpb"]), info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="baseline seeds (1..N)")
    parser.add_argument("--variant-seeds", type=int, default=1, help="seeds per variant (1..N)")
    parser.add_argument("--seconds", type=float, default=60, help="training seconds per run")
    parser.add_argument("--tokens", type=int, default=None, help="token budget instead of seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], help="'label: NAME=VALUE ...' (repeatable)")
    parser.add_argument("--base", default="", help="'NAME=VALUE ...' applied to every run, baseline included")
    parser.add_argument("--cache", default=None, help="NIGHTLAB_CACHE (default: a temporary folder)")
    args = parser.parse_args()

    variants = [parse_variant(v) for v in args.variant] or [
        ("MATRIX_LR x4", {"MATRIX_LR": repr(shipped("MATRIX_LR") * 4)}),
        ("DEPTH -2", {"DEPTH": repr(shipped("DEPTH") - 2)}),
        ("DEPTH +2", {"DEPTH": repr(shipped("DEPTH") + 2)}),
    ]
    base = parse_variant("base: " + args.base)[1]
    ws = Path(tempfile.mkdtemp(prefix="nightlab-knobs-"))
    for path in TEMPLATE.iterdir():
        if path.is_file():
            shutil.copy(path, ws / path.name)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), NIGHTLAB_CACHE=args.cache or str(ws / "cache"))
    for key in (
        "NIGHTLAB_EVAL_SEPARATE",
        "NIGHTLAB_BUDGET_SECONDS",
        "NIGHTLAB_BUDGET_TOKENS",
        "NIGHTLAB_BUDGET_STEPS",
    ):
        env.pop(key, None)
    if args.tokens:
        env["NIGHTLAB_BUDGET_TOKENS"] = str(args.tokens)
    else:
        env["NIGHTLAB_BUDGET_SECONDS"] = str(args.seconds)
    subprocess.run([sys.executable, "prepare.py"], cwd=ws, env=env, check=True, capture_output=True)
    budget = f"{args.tokens} tokens" if args.tokens else f"{args.seconds:g} s"
    print(f"budget {budget} per run, {args.threads} threads, load average {os.getloadavg()[0]:.1f} at start")

    started = time.time()
    baseline = []
    for seed in range(1, args.seeds + 1):
        bpb, info = run_once(ws, base, seed, env)
        baseline.append(bpb)
        print(f"baseline       seed {seed}: val_bpb {bpb:.4f}  ({info})", flush=True)
    mean = statistics.mean(baseline)
    spread = max(baseline) - min(baseline)
    print(f"baseline mean {mean:.4f}, spread (max-min) {spread:.4f}, stdev {statistics.pstdev(baseline):.4f}")
    for label, values in variants:
        results = []
        for seed in range(1, args.variant_seeds + 1):
            bpb, info = run_once(ws, {**base, **values}, seed, env)
            results.append(bpb)
            print(f"{label:14s} seed {seed}: val_bpb {bpb:.4f}  ({info})", flush=True)
        shift = statistics.mean(results) - mean
        ratio = abs(shift) / spread if spread > 0 else float("inf")
        print(
            f"{label:14s} mean {statistics.mean(results):.4f}  shift {shift:+.4f} = {ratio:.1f}x the seed spread"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at end, {time.time() - started:.0f} s in all")
    shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
