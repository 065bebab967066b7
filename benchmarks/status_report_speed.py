"""How long ``nightlab status``, ``status --json`` and ``report`` take on a large ledger.

Builds synthetic workspaces of N experiments of one tag (each 1-3 replicates, a 40-line diff and
a 2 KB log tail per replicate; kept, discarded, crashed and invalid ones, as
``benchmarks/dashboard_speed.py`` does) and times each command as a user runs it: a fresh
``nightlab`` process, output to a file (not a terminal), wall time and peak memory of the
process. Also the size of the report.html written.

Run: ``.venv/bin/python benchmarks/status_report_speed.py [--experiments 2000 10000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashboard_speed import insert_rows  # noqa: E402

TOML = """\
[target]
editable = ["train.py"]
run = "python train.py"
[metric]
name = "val_bpb"
direction = "minimize"
[run]
tag = "bench"
"""


def diff_text(i: int) -> str:
    """A 40-line unified diff (20 lines out, 20 in), different for every experiment."""
    old = "".join(f"-LAYER_{k} = {k * 0.1:.3f}\n" for k in range(20))
    new = "".join(f"+LAYER_{k} = {k * 0.1 + i * 1e-6:.6f}\n" for k in range(20))
    return f"--- a/train.py\n+++ b/train.py\n@@ -1,20 +1,20 @@\n{old}{new}"


def log_tail(i: int, r: int, rng: random.Random) -> str:
    """About 2 KB of training log: step lines then the final metric."""
    lines = [
        f"step {s:5d} | loss {3.5 - s * 1e-4 + rng.random() * 0.01:.4f} | lr 0.00{i % 9}"
        for s in range(0, 4000, 100)
    ]
    return ("\n".join(lines) + f"\n---\nval_bpb: {1.2 + r * 0.001:.6f}\n")[-2048:]


def synthetic_ledger(root: Path, n: int, tag: str = "bench", seed: int = 0) -> Path:
    """A workspace folder with nightlab.toml and a ledger of ``n`` finished experiments of ``tag``."""
    from nightlab.store.ledger import Ledger

    root.mkdir(parents=True, exist_ok=True)
    (root / "nightlab.toml").write_text(TOML)
    (root / "train.py").write_text("LR = 0.1\n")
    git = ["git", "-C", str(root), "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    path = root / ".nightlab" / "ledger.db"
    Ledger(path).close()  # the schema, as nightlab creates it
    rng = random.Random(seed)
    best = 1.5
    experiments, runs = [], []
    now = "2026-01-01T00:00:00+00:00"
    for i in range(1, n + 1):
        roll = rng.random()
        replicates = rng.randint(1, 3)
        values = [best + rng.gauss(0.01, 0.01) for _ in range(replicates)]
        status, decision = "ok", "discard"
        if i == 1:
            decision = "baseline"
        elif roll < 0.05:
            status, decision, values = "crash", "crash", []
        elif roll < 0.07:
            status, decision, values = "invalid", "invalid", []
        elif roll < 0.12:
            values = [best - abs(rng.gauss(0.004, 0.002)) for _ in range(replicates)]
            decision = "keep"
        metric = sum(values) / len(values) if values else None
        if decision == "keep" and metric is not None:
            best = metric
        experiments.append(
            (i, "baseline" if i == 1 else "candidate", tag, f"{i:040x}", "search",
             f"LR {0.1 + i * 1e-5:.5f}, WIDTH {64 + i % 7}", "a hypothesis " * 3, diff_text(i), status,
             decision, f"Δ {rng.gauss(0, 0.01):+.5f} ± 0.00300 ({len(values)} runs), {decision}", metric,
             0.002 if metric is not None else None, len(values) or 1, now, now)
        )  # fmt: skip
        for r, value in enumerate(values or [None]):
            runs.append(
                (i, r, 1000 * i + r, "ok" if value is not None else status, value, 30.0, 31.0,
                 log_tail(i, r, rng), str(root / ".nightlab" / "runs" / f"{i:04d}" / str(r)), now)
            )  # fmt: skip
    insert_rows(
        path, experiments, runs, {"current_tag": tag, "metric_name": "val_bpb", "direction": "minimize"}
    )
    return path


def timed(args: list[str], out: Path) -> tuple[float, float]:
    """Wall seconds and peak memory (MB) of one ``nightlab`` process, stdout to ``out``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with out.open("wb") as handle:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "nightlab.cli", *args],
            stdout=handle,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def measure(n: int, repeat: int) -> dict:
    """Median seconds of ``status``, ``status --json`` and ``report`` on a ledger of ``n``."""
    out: dict = {"experiments": n}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        synthetic_ledger(root, n)
        for name, args in (
            ("status", ["status", str(root)]),
            ("status_json", ["status", str(root), "--json"]),
            ("report", ["report", str(root)]),
        ):
            times = [timed(args, Path(tmp) / f"{name}.out")[0] for _ in range(repeat)]
            out[f"{name}_seconds"] = round(statistics.median(times), 3)
            out[f"{name}_all"] = [round(t, 3) for t in times]
            out[f"{name}_output_bytes"] = (Path(tmp) / f"{name}.out").stat().st_size
        out["report_html_bytes"] = (root / ".nightlab" / "report.html").stat().st_size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, nargs="+", default=[2_000, 10_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps([measure(n, args.repeat) for n in args.experiments], indent=2))


if __name__ == "__main__":
    main()
