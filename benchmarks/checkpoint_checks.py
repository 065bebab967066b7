"""What the progress evaluator's checks cost per checkpoint: the GPT template's model at a size
from sizes.toml (cpu by default), checkpoints written by the frozen harness as a run writes them
(the first a torch.export program, the later ones weights for it), then, in the evaluator's own
code (`evaluation._Follower`, one thread as `--follow` runs), per checkpoint: loading it, the
causality check it now gets (the final export's), and scoring it on the val prefix.

The graph check is part of loading a program (`load_program`), so it is paid by the first
checkpoint only; the weights that follow are loaded into that program, which they cannot change.
The causality check depends on the weights (a look-ahead a gate buffer switches on), so every
checkpoint pays it. Medians of `--repeats` timings per checkpoint, in milliseconds.

    python benchmarks/checkpoint_checks.py
    python benchmarks/checkpoint_checks.py --size cpu --checkpoints 4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_overhead import TEMPLATE, make_workspace  # noqa: E402

CHILD = """
import json, statistics, sys, time
from pathlib import Path
import torch
import data, evaluation, harness, prepare, train

checkpoints, repeats = int(sys.argv[1]), int(sys.argv[2])
prepare.ensure_data()
torch.manual_seed(0)
model = train.GPT(data.get_tokenizer().vocab_size, data.SEQ_LEN)
model.eval()
writer = harness.Checkpoints(harness.Budget(steps=checkpoints + 1))
for step in range(1, checkpoints + 1):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # new weights at every checkpoint, as training makes
    writer.after_step(model, float(step), step * 4096, step)
torch.set_num_threads(1)  # as `evaluation.py --follow` scores checkpoints
follower = evaluation._Follower(harness.get_run_dir(), evaluation._Target())
rows = []
for line in (harness.get_run_dir() / data.PROGRESS_FILE).read_text().splitlines():
    name = json.loads(line)["export"]
    folder = follower._folder(name)
    kind = json.loads((folder / data.EXPORT_META).read_text())["format"]
    load, check, score = [], [], []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model_, device, low = follower._load(name, folder)
            t1 = time.perf_counter()
            problem = evaluation.causality_violation(model_, follower.check_rows, device, low)
            t2 = time.perf_counter()
            evaluation.bits_per_byte(model_, follower.val, follower.token_bytes, device)
            t3 = time.perf_counter()
            assert problem is None, problem
            load.append(t1 - t0)
            check.append(t2 - t1)
            score.append(t3 - t2)
    rows.append({"export": name, "format": kind, "load": statistics.median(load),
                 "check": statistics.median(check), "score": statistics.median(score)})
print(json.dumps(rows))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="cpu")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ws = make_workspace(TEMPLATE, args.size, [])
    (ws / "train_child.py").write_text(CHILD)
    env = dict(os.environ, NIGHTLAB_RUN_DIR=str(ws / "run"), NIGHTLAB_PROGRESS_EVERY="0.2")
    env.pop("NIGHTLAB_SCORES_DIR", None)
    done = subprocess.run(
        [sys.executable, "train_child.py", str(args.checkpoints), str(args.repeats)],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        return 1
    rows = json.loads(done.stdout.splitlines()[-1])
    print(f"size {args.size}, median of {args.repeats} per checkpoint, milliseconds, one thread")
    print(f"{'checkpoint':<14} {'format':<13} {'load':>8} {'causality':>10} {'score':>8} {'check/score':>12}")
    for row in rows:
        load, check, score = (1000 * row[k] for k in ("load", "check", "score"))
        print(
            f"{row['export']:<14} {row['format']:<13} {load:8.1f} {check:10.1f} {score:8.1f} {check / score:12.2f}"
        )
    later = [r for r in rows if r["format"] == "weights"]
    if later:
        check = statistics.median(1000 * r["check"] for r in later)
        total = statistics.median(1000 * (r["load"] + r["score"]) for r in later)
        print(f"later checkpoints: the check adds {check:.1f} ms to {total:.1f} ms (load and score)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
