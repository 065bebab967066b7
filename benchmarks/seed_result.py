"""The headline result at laptop scale, in one command: tune small, validate bigger, ablate.

Karpathy's seed result: changes an agent found at depth 12 cut the time to GPT-2's score at
depth 24 from 2.02 h to 1.80 h. This reruns that story on the built-in cpu template:

1. a research night at the small scale (the search agent, the confirm policy, a FLOPs budget
   per run so results do not depend on the machine's load, kept changes valued on runs no
   decision saw);
2. ``nightlab validate --time-to-target`` of the night's start (A) against its best (B) at a
   larger scale (``--scale-constants``, default ``DEPTH=8``: twice the depth, so twice the
   width too at the template's fixed aspect ratio), interleaved seeds: each side's time and
   tokens to reach side A's final value, the speedup with its interval, the verdict;
3. ``nightlab ablate`` at the small scale: each kept change's contribution; and ``nightlab
   ablate --scale`` at the larger one: which of them carry over (earn their place there too);
4. one line in the seed's own form, "T_A → T_B to target (−X% ± Y%)", and how many changes were
   kept out of how many tried; everything as JSON, the plots copied to ``--out``.

    python benchmarks/seed_result.py /tmp/seed --hours 1.0              # 2 to 2.5 hours on 2 cores
    python benchmarks/seed_result.py /tmp/smoke --hours 0.05 --seeds 2 --ablate-seeds 2 \
        --scale-flops 2e12 --policy greedy                              # a smoke run, some 10 minutes

On 2 cores: the night 1 h, validate about 27 min, the ablation at the small scale about 16 min
and at the larger scale 20 to 30 min (docs/VALIDATION.md has a full run). A workspace that
exists is reused: the night continues where it stopped (``nightlab run``
resumes), and the studies run again on its current best. ``--steps`` runs only some steps (for
instance ``--steps carry`` after a study without it) and takes the others' results from the
``seed_result.json`` already in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nightlab.workspace.init import commit_all, init_workspace, set_toml_value

TAG = "seed"
SCALE = "larger"


def nightlab(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it; stops the study on a failure, showing what it said."""
    res = subprocess.run(
        [sys.executable, "-m", "nightlab.cli", *args], capture_output=capture, text=True, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"nightlab {' '.join(args)} failed ({res.returncode}):\n{res.stderr or ''}")
    return res


def prepare(root: Path, args: argparse.Namespace) -> None:
    """The cpu workspace with the study's budget, policy and larger scale, committed once."""
    if (root / "nightlab.toml").exists():
        return
    init_workspace(root, template="gpt", size="cpu")
    toml = root / "nightlab.toml"
    text = toml.read_text().replace("\nseconds = 60\n", "\n")  # the FLOPs budget replaces it
    text = set_toml_value(text, "budget", "flops", args.flops)
    text = set_toml_value(text, "budget", "timeout", 300)
    text = set_toml_value(text, "policy", "remeasure", args.remeasure)
    text = set_toml_value(text, "policy", "kind", args.policy)
    constants = ", ".join(f"{k} = {v}" for k, v in _constants(args.scale_constants).items())
    text += (
        f"\n# The larger scale of benchmarks/seed_result.py: validate --scale {SCALE}\n"
        f"[scales.{SCALE}]\nconstants = {{ {constants} }}\n"
        f"budget = {{ flops = {args.scale_flops:g}, timeout = 900 }}\n"
    )
    toml.write_text(text)
    commit_all(root, "seed study: FLOPs budget, remeasure, a larger scale", paths=["nightlab.toml"])


def _constants(text: str) -> dict[str, int | float | str]:
    out: dict[str, int | float | str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            try:
                out[name.strip()] = float(value)
            except ValueError:
                out[name.strip()] = json.dumps(value.strip())
    return out


def headline(validation: dict, kept: int, tried: int) -> str:
    """``41.2 s → 35.0 s to target (−15% ± 6%), 3 changes kept of 24 tried``."""
    ttt = validation.get("time_to_target") or {}
    time_ = ttt.get("time")
    if not time_:
        return f"no time to target measured; {_kept(kept, tried)}"
    text = time_["text"].rsplit(",", 1)[0]
    change = time_["change"] * 100
    ci = ""
    if time_.get("ci_low") is not None and time_.get("ci_high") is not None:
        ci = f" ± {abs(time_['ci_high'] - time_['ci_low']) * 50:.0f}%"
    sign = "−" if change < 0 else "+"
    censored = " (some runs never reached it: a lower bound)" if time_.get("censored") else ""
    return f"{text} to target ({sign}{abs(change):.0f}%{ci}){censored}, {_kept(kept, tried)}"


def _kept(kept: int, tried: int) -> str:
    return f"{kept} change{'s' * (kept != 1)} kept of {tried} tried"


STEPS = ("night", "validate", "ablate", "carry")


def carry_over(small: dict, large: dict) -> list[dict]:
    """Per kept change: its contribution at each scale, and whether it carries over (it earns
    its place at the larger scale too)."""
    at_large = {c["id"]: c for c in large.get("changes", [])}
    rows = []
    for change in small.get("changes", []):
        there = at_large.get(change["id"], {})
        rows.append(
            {
                "id": change["id"],
                "description": change["description"],
                "small": {k: change.get(k) for k in ("contribution", "ci", "status")},
                "larger": {k: there.get(k) for k in ("contribution", "ci", "status")},
                "carries_over": there.get("status") == "earns its place",
            }
        )
    return rows


def _ablate(root: Path, seeds: int, *extra: str) -> dict:
    args = ("ablate", str(root), "--tag", TAG, "--seeds", str(seeds), *extra, "--json")
    return json.loads(nightlab(*args).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--hours", type=float, default=1.0, help="the research night")
    parser.add_argument("--flops", type=float, default=1.1e12, help="training FLOPs per run, small scale")
    parser.add_argument("--remeasure", type=int, default=1)
    parser.add_argument("--policy", default="confirm", help="greedy keeps more (a smoke run's keeps)")
    parser.add_argument("--scale-constants", default="DEPTH=8")
    parser.add_argument(
        "--scale-flops", type=float, default=8.8e12, help="training FLOPs per run, larger scale"
    )
    parser.add_argument("--seeds", type=int, default=3, help="validate: runs per side")
    parser.add_argument("--ablate-seeds", type=int, default=3)
    parser.add_argument(
        "--eval-interval", type=float, default=5.0, help="seconds of training between the curves' points"
    )
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="validate: time to this value, skipping the fixed-budget phase (e.g. its side A mean "
        "from an earlier study)",
    )
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help="which steps to run (night, validate, ablate, carry = ablate at the larger scale); "
        "the others' results are taken from an earlier seed_result.json in --out",
    )
    parser.add_argument("--out", type=Path, default=None, help="where the plots and seed_result.json go")
    args = parser.parse_args()
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    if steps - set(STEPS):
        parser.error(f"--steps: unknown {', '.join(sorted(steps - set(STEPS)))} (known: {', '.join(STEPS)})")
    root = args.directory.resolve()
    out = (args.out or root).resolve()
    out.mkdir(parents=True, exist_ok=True)
    earlier_path = out / "seed_result.json"
    earlier = json.loads(earlier_path.read_text()) if earlier_path.exists() else {}
    timings: dict[str, float] = dict(earlier.get("timings", {}))

    def step(name: str, key: str, run: Callable[[], dict]) -> dict:
        if name not in steps:
            return earlier.get(key) or {}
        started = time.monotonic()
        found = run()
        timings[f"{key}_s"] = round(time.monotonic() - started, 1)
        return found

    prepare(root, args)
    if "night" in steps and args.hours > 0:
        started = time.monotonic()
        nightlab("run", str(root), "--tag", TAG, "--hours", f"{args.hours:g}", "--plain", capture=False)
        timings["night_s"] = round(time.monotonic() - started, 1)
    status = json.loads(nightlab("status", str(root), "--tag", TAG, "--json").stdout)
    kept = sum(1 for e in status["experiments"] if e.get("decision") == "keep")
    tried = sum(1 for e in status["experiments"] if e.get("kind") == "candidate")
    validate_args = ("--scale", SCALE, "--seeds", str(args.seeds), "--time-to-target")
    validate_args += ("--eval-interval", f"{args.eval_interval:g}", "--json")
    if args.target is not None:
        validate_args += ("--target", repr(args.target))
    validation = step(
        "validate",
        "validation",
        lambda: (
            json.loads(nightlab("validate", str(root), "--tag", TAG, *validate_args).stdout) if kept else {}
        ),
    )
    ablation = step("ablate", "ablation", lambda: _ablate(root, args.ablate_seeds) if kept else {})
    larger = step(
        "carry",
        "ablation_larger",
        lambda: _ablate(root, args.ablate_seeds, "--scale", SCALE) if kept else {},
    )
    nightlab("report", str(root), "--tag", TAG)

    state = root / ".nightlab"
    for name in ("progress.png", "validation.png", "ablation.png", f"ablation-{SCALE}.png"):
        if (state / name).exists() and out != state:
            shutil.copy(state / name, out / f"seed_{name}")
    line = headline(validation, kept, tried)
    carried = carry_over(ablation, larger) if larger else []
    result = {
        "headline": line,
        "kept": kept,
        "tried": tried,
        "status": status,
        "validation": validation,
        "ablation": ablation,
        "ablation_larger": larger,
        "carry_over": carried,
        "timings": timings,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    earlier_path.write_text(json.dumps(result, indent=2, default=str))
    print(line)
    if validation:
        print(f"verdict at scale {SCALE}: {validation.get('verdict')}")
    for row in carried or ablation.get("changes", []):
        if "carries_over" in row:
            print(
                f"  #{row['id']} {row['description']}: small {row['small']['status']} "
                f"({row['small']['contribution']}), {SCALE} {row['larger']['status']} "
                f"({row['larger']['contribution']}): {'carries over' if row['carries_over'] else 'does not carry over'}"
            )
        else:
            print(f"  #{row['id']} {row['description']}: {row['status']}, contribution {row['contribution']}")
    print(f"everything: {earlier_path}")


if __name__ == "__main__":
    main()
