"""What a replicate of the GPT template spends outside training: `python train.py`, then
`python evaluation.py`, as the harness runs them (nightlab's own bookkeeping not included).

Copies the GPT template (or `--template DIR`, e.g. an older version of it) into a temporary
workspace, applies a size from sizes.toml (plus any `--set NAME=VALUE` overrides), prepares the
data, then per repeat trains with NIGHTLAB_EVAL_SEPARATE=1 and runs the evaluate command, and
reports where the wall time went: the training process's start-up (imports, data, model), its
warm-up step, training, progress checkpoints, the export and the rest of the process; then the
evaluation process (Python and torch start-up, loading the export, the causality check, val and
holdout) next to the evaluator's own eval_seconds. `--progress-every 0.25` adds checkpoints and
runs `python evaluation.py --follow` beside training, as nightlab does when it may prune.
`--compare DIR` runs a second template in alternation with the first (same load for both), always
without checkpoints ("other" is the rest of train.py's process: the summary, the exit). `--warm`
adds the first template once more, in the same alternation, with its final evaluation done by the
progress evaluator (NIGHTLAB_WARM_EVALUATE=1, progress.final: `[target] warm_evaluate`), whose
start-up then overlaps training; its eval_wall is from the request to the evaluator's exit.
`--warm-only` measures every template (the first and `--compare`) that way only, with checkpoints.

    python benchmarks/eval_overhead.py --size cpu --tokens 393216 --repeats 3
    python benchmarks/eval_overhead.py --tokens 393216 --repeats 3 --compare /tmp/old-template
    python benchmarks/eval_overhead.py --tokens 393216 --repeats 3 --progress-every 0.25 --warm
    python benchmarks/eval_overhead.py --tokens 393216 --progress-every 0.25 --warm-only --compare /tmp/old
    python benchmarks/eval_overhead.py --size gpu --set DATASET='"synthetic"' --seconds 60
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


def make_workspace(template: Path, size: str, overrides: list[str]) -> Path:
    ws = Path(tempfile.mkdtemp(prefix="nightlab-eval-"))
    for path in template.glob("*.py"):
        shutil.copy(path, ws / path.name)
    sizes = tomllib.loads((template / "sizes.toml").read_text())[size]
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


def seconds_in(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def replicate(ws: Path, env: dict, progress_every: float | None, warm: bool = False) -> dict[str, float]:
    """One replicate: train (with the progress evaluator beside it when asked), then evaluate:
    in a process of its own, or (``warm``) by the progress evaluator, asked once training ended."""
    run_dir = Path(env["NIGHTLAB_RUN_DIR"])
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    follower = None
    if progress_every:
        env = {**env, "NIGHTLAB_PROGRESS_EVERY": str(progress_every)}
    if warm:
        env = {**env, "NIGHTLAB_WARM_EVALUATE": "1"}
    if progress_every or warm:
        follower = subprocess.Popen([sys.executable, "evaluation.py", "--follow"], cwd=ws, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    train_wall, proc = run([sys.executable, "train.py"], ws, env)
    out = proc.stdout
    summary = dict(re.findall(r"^(\w+):\s+(\S+)$", out[out.rindex("\n---\n") :], re.M))
    row = {
        "train_wall": train_wall,
        "startup": seconds_in(r"^start-up ([\d.]+) s", out),
        "warmup": seconds_in(r"\| warm-up ([\d.]+) s", out),
        "training": float(summary["training_seconds"]),
        "checkpoints": seconds_in(r"^progress: \d+ checkpoints in ([\d.]+) s", out),
        "export": seconds_in(r"^export: ([\d.]+) s", out),
    }
    row["other"] = train_wall - sum(
        row[k] for k in ("startup", "warmup", "training", "checkpoints", "export")
    )
    if follower is not None:
        t0 = time.perf_counter()
        if warm:
            (run_dir / "progress.final").touch()  # before progress.done, as nightlab does
        (run_dir / "progress.done").touch()
        log, _ = follower.communicate(timeout=600)
        if warm:  # the scoring left and the final evaluation, in one process already running
            eval_wall = time.perf_counter() - t0
            if follower.returncode != 0:
                sys.exit(f"the warm evaluator failed ({follower.returncode}):\n{log[-3000:]}")
        else:
            row["follow_tail"] = time.perf_counter() - t0  # scoring left after training ended
        row["points"] = log.count("| val_bpb")
    if not warm:
        eval_wall, _ = run([sys.executable, "evaluation.py"], ws, env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row |= {"eval_wall": eval_wall, "eval_inside": metrics["eval_seconds"], "val_bpb": metrics["val_bpb"]}
    row["train_share"] = row["training"] / (train_wall + row.get("follow_tail", 0.0) + eval_wall)
    return row


def report(name: str, rows: list[dict[str, float]]) -> None:
    keys = ["train_wall", "startup", "warmup", "training", "checkpoints", "export", "other", "follow_tail"]
    keys += ["eval_wall", "eval_inside", "train_share", "val_bpb"]
    print(f"{name}: medians over {len(rows)} repeats")
    for key in keys:
        values = [r[key] for r in rows if key in r]
        if values:
            shown = ", ".join(f"{v:.3f}" if key in ("val_bpb", "train_share") else f"{v:.2f}" for v in values)
            print(f"  {key:12s} {statistics.median(values):8.3f}   ({shown})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="cpu")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="the template folder to measure")
    parser.add_argument("--compare", type=Path, default=None, help="a second template, run in alternation")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=LITERAL", help="override a constant"
    )
    parser.add_argument("--tokens", type=int, default=None, help="NIGHTLAB_BUDGET_TOKENS")
    parser.add_argument("--seconds", type=float, default=None, help="NIGHTLAB_BUDGET_SECONDS")
    parser.add_argument(
        "--progress-every", type=float, default=None, help="NIGHTLAB_PROGRESS_EVERY (first template only)"
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="also measure the first template with its final evaluation done by the (warm) progress "
        "evaluator, in alternation with the evaluation in its own process",
    )
    parser.add_argument(
        "--warm-only",
        action="store_true",
        help="measure each template (the first and --compare) only warm, with --progress-every",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS (default: torch's)")
    parser.add_argument("--cache", default=None, help="NIGHTLAB_CACHE (default: a temporary folder)")
    args = parser.parse_args()

    templates = [args.template] + ([args.compare] if args.compare else [])
    workspaces = [make_workspace(t, args.size, args.set) for t in templates]
    warm = [args.warm_only] * len(templates)
    if args.warm and not args.warm_only:  # the same workspace once more, its final evaluation warm
        templates.append(args.template)
        workspaces.append(workspaces[0])
        warm.append(True)
    budget = {}
    if args.tokens:
        budget["NIGHTLAB_BUDGET_TOKENS"] = str(args.tokens)
    if args.seconds or not budget:
        budget["NIGHTLAB_BUDGET_SECONDS"] = str(args.seconds or 20)
    base = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLAB_")}
    base |= {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    base |= {"NIGHTLAB_CACHE": args.cache or str(workspaces[0] / "cache"), "NIGHTLAB_EVAL_SEPARATE": "1"}
    base |= budget
    prep_s, _ = run([sys.executable, "prepare.py"], workspaces[0], base)
    print(f"prepare: {prep_s:.1f}s; budget {budget}; templates {[str(t) for t in templates]}")
    rows: list[list[dict[str, float]]] = [[] for _ in workspaces]
    for _ in range(args.repeats):
        for i, ws in enumerate(workspaces):  # alternate, so both see the same load
            env = {**base, "NIGHTLAB_RUN_DIR": str(ws / "run")}
            every = args.progress_every if i == 0 or warm[i] else None
            rows[i].append(replicate(ws, env, every, warm[i]))
            name = str(templates[i]) + (" (warm)" if warm[i] else "")
            print(json.dumps({"template": name, **{k: round(v, 3) for k, v in rows[i][-1].items()}}))
    for i, (template, template_rows) in enumerate(zip(templates, rows, strict=True)):
        report(str(template) + (" (warm)" if warm[i] else ""), template_rows)
    for ws in set(workspaces):
        shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
