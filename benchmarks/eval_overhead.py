"""What the separate evaluation process costs: `python evaluation.py` on a trained model.

Copies the GPT template into a temporary workspace, applies a size from sizes.toml (plus any
`--set NAME=VALUE` overrides), prepares the data, trains train.py briefly with
NIGHTLAB_EVAL_SEPARATE=1 (so train.py only exports the model), then runs the evaluate command
`--repeats` times as the harness would and reports its wall time (process start to exit: Python
and torch start-up, loading the export, scoring EVAL_TOKENS val and holdout tokens, the
causality check) next to the evaluator's own eval_seconds.

    python benchmarks/eval_overhead.py --size cpu --train-seconds 20 --repeats 3
    python benchmarks/eval_overhead.py --size gpu --set DATASET='"synthetic"' --train-seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "nightlab" / "templates" / "gpt"


def set_literal(path: Path, name: str, literal: str) -> None:
    """Rewrite `NAME = literal  # comment` at the top level of a template file."""
    text = path.read_text()
    new, n = re.subn(
        rf"^{name} = [^#\n]*?(\s+#.*)?$",
        lambda m: f"{name} = {literal}{m.group(1) or ''}",
        text,
        count=1,
        flags=re.M,
    )
    if n != 1:
        raise SystemExit(f"{path.name}: no constant {name}")
    path.write_text(new)


def toml_literal(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def make_workspace(size: str, overrides: list[str]) -> Path:
    ws = Path(tempfile.mkdtemp(prefix="nightlab-eval-"))
    for path in TEMPLATE.glob("*.py"):
        shutil.copy(path, ws / path.name)
    sizes = tomllib.loads((TEMPLATE / "sizes.toml").read_text())[size]
    for part, values in sizes.items():  # [size.<file stem>] tables; budget and space are not files
        if (ws / f"{part}.py").is_file():
            for name, value in values.items():
                set_literal(ws / f"{part}.py", name, toml_literal(value))
    for item in overrides:
        name, _, literal = item.partition("=")
        target = "data.py" if re.search(rf"^{name} = ", (ws / "data.py").read_text(), re.M) else "train.py"
        set_literal(ws / target, name, literal)
    return ws


def run(cmd: list[str], ws: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="cpu")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=LITERAL", help="override a constant"
    )
    parser.add_argument("--train-seconds", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for every process")
    parser.add_argument("--cache", default=None, help="NIGHTLAB_CACHE (default: a temporary folder)")
    args = parser.parse_args()

    ws = make_workspace(args.size, args.set)
    run_dir = ws / "run"
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        NIGHTLAB_CACHE=args.cache or str(ws / "cache"),
        NIGHTLAB_RUN_DIR=str(run_dir),
        NIGHTLAB_BUDGET_SECONDS=str(args.train_seconds),
        NIGHTLAB_EVAL_SEPARATE="1",
    )
    prep_s, _ = run([sys.executable, "prepare.py"], ws, env)
    print(f"prepare: {prep_s:.1f}s  (workspace {ws})")
    train_s, proc = run([sys.executable, "train.py"], ws, env)
    summary = proc.stdout[proc.stdout.rindex("---") :]
    print(f"train.py: {train_s:.1f}s wall\n{summary}")
    export = json.loads((run_dir / "model.json").read_text())
    size_mb = (run_dir / "model.pt2").stat().st_size / 1e6
    print(f"export: {size_mb:.1f} MB, {export['num_params'] / 1e6:.2f}M params on {export['device']}")
    walls, evals = [], []
    for _ in range(args.repeats):
        (run_dir / "metrics.json").unlink(missing_ok=True)
        wall, _ = run([sys.executable, "evaluation.py"], ws, env)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        walls.append(wall)
        evals.append(metrics["eval_seconds"])
        print(
            f"evaluate: {wall:.2f}s wall, eval_seconds {metrics['eval_seconds']:.2f}, "
            f"val_bpb {metrics['val_bpb']:.4f}, holdout_bpb {metrics['holdout_bpb']:.4f}, "
            f"{metrics['eval_tokens']:,} val tokens"
        )
    print(
        f"median: {statistics.median(walls):.2f}s wall per evaluation ({statistics.median(evals):.2f}s inside)"
    )
    shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
