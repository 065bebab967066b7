"""How much of a slow model's latency the loop hides: idle time between experiments, pipelined or not.

`nightlab run` with the llm agent talks to a loopback OpenAI-compatible server (the test
suite's fake server) that answers every proposal after ``--delay`` seconds; the toy target
trains for ``--train`` seconds and records the wall-clock time of its start and end in its run
directory. The idle time between two experiments is the next run's start minus the previous
run's end: the model's latency when proposals are made one after the other (``pipeline =
false``), only the harness's own bookkeeping when the next proposal is prepared while the
current experiment trains (``pipeline = true``).

Usage::

    .venv/bin/python benchmarks/pipelining.py --delay 1.5 --train 1.5 --experiments 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "tests", ROOT / "tests" / "agents"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from fake_servers import Answer, answer_text, block, fake_llm_server  # noqa: E402

from helpers import TOY_TOML, make_workspace, nightlab  # noqa: E402

KNOBS = ("A", "B", "C", "D", "E", "F", "G", "H")

TRAIN = """\
import json, os, random, time
START = time.time()
A = 0
B = 0
C = 0
D = 0
E = 0
F = 0
G = 0
H = 0
SECONDS = {seconds}

time.sleep(SECONDS)  # "training"
rng = random.Random(int(os.environ.get("NIGHTLAB_SEED", "0")))
loss = 2.0 - 0.01 * (A + B + C + D + E + F + G + H) + rng.gauss(0, 0.0001)
run_dir = os.environ.get("NIGHTLAB_RUN_DIR", "run")
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({{"val_loss": loss}}, f)
with open(os.path.join(run_dir, "times.json"), "w") as f:
    json.dump({{"start": START, "end": time.time()}}, f)
print("---")
print(f"val_loss: {{loss:.6f}}")
"""


@dataclass
class Measurement:
    pipeline: bool
    gaps: list[float]  # idle seconds between consecutive candidate runs
    first_gap: float  # baseline end -> first candidate start (never hidden: nothing trains then)
    wall: float  # first run start -> last run end
    busy: float  # sum of run durations
    requests: int

    @property
    def mean_gap(self) -> float:
        return statistics.mean(self.gaps)

    @property
    def utilisation(self) -> float:
        return self.busy / self.wall


def _answers(count: int, delay: float) -> list[Answer]:
    """One proposal per knob, each on its own line, so every one applies whatever was kept before."""
    return [
        Answer(
            answer_text(f"{knob} 0 -> 1", f"{knob} helps", block("train.py", f"{knob} = 0", f"{knob} = 1")),
            delay=delay,
        )
        for knob in KNOBS[:count]
    ]


def measure(
    workdir: Path, pipeline: bool, delay: float, train: float, experiments: int, baseline_runs: int = 2
) -> Measurement:
    """Run ``nightlab run -n experiments`` once and read the runs' start and end times."""
    if experiments > len(KNOBS):
        raise ValueError(f"at most {len(KNOBS)} experiments")
    with fake_llm_server("openai", _answers(experiments, delay)) as server:
        agent = (
            f'kind = "llm"\nprovider = "openai"\nmodel = "fake-model"\nbase_url = "{server.base_url}"\n'
            f"lessons = false\npipeline = {str(pipeline).lower()}\nbackoff = 0.05"
        )
        toml = (
            TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy")
            .replace('kind = "replay"\nfile = "proposals.jsonl"', agent)
            .replace("baseline_runs = 2", f"baseline_runs = {baseline_runs}")
        )
        root = make_workspace(workdir, train=TRAIN.format(seconds=train), toml=toml)
        result = nightlab("run", str(root), "-n", str(experiments), "--plain", timeout=600)
        requests = len(server.requests)
    if result.returncode != 0:
        raise RuntimeError(f"nightlab run failed: {result.stderr[-2000:]}")
    runs = [
        (json.loads(p.read_text()), int(p.parts[-3]))
        for p in (root / ".nightlab" / "runs").glob("*/*/times.json")
    ]
    runs.sort(key=lambda item: item[0]["start"])
    times = [t for t, _ in runs]
    if sum(1 for _, exp in runs if exp == 1) != baseline_runs or len(runs) != baseline_runs + experiments:
        raise RuntimeError(
            f"expected {baseline_runs} baseline and {experiments} candidate runs, got {len(runs)}"
        )
    spans = list(zip(times, times[1:], strict=False))
    gaps = [b["start"] - a["end"] for a, b in spans]
    return Measurement(
        pipeline=pipeline,
        gaps=gaps[baseline_runs:],
        first_gap=gaps[baseline_runs - 1],
        wall=times[-1]["end"] - times[0]["start"],
        busy=sum(t["end"] - t["start"] for t in times),
        requests=requests,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=1.5, help="model latency per proposal, seconds")
    parser.add_argument("--train", type=float, default=1.5, help="training time per run, seconds")
    parser.add_argument("--experiments", type=int, default=4, help="candidate experiments per mode")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="nightlab-pipelining-") as tmp:
        for pipeline in (False, True):
            started = time.monotonic()
            m = measure(
                Path(tmp) / f"pipeline-{pipeline}", pipeline, args.delay, args.train, args.experiments
            )
            results.append((m, time.monotonic() - started))
    print(f"model delay {args.delay:g} s, training {args.train:g} s per run, {args.experiments} experiments")
    print("| pipeline | idle between experiments (mean) | max | baseline -> first | runs busy | total |")
    print("|---|---|---|---|---|---|")
    for m, total in results:
        print(
            f"| {str(m.pipeline).lower()} | {m.mean_gap:.3f} s | {max(m.gaps):.3f} s | {m.first_gap:.3f} s "
            f"| {m.utilisation:.0%} | {total:.1f} s |"
        )


if __name__ == "__main__":
    main()
