"""False keeps through the real harness: proposals that cannot change the metric, greedy vs confirm.

Each proposal adds a harmless statement to the toy target (a real code change, so it is run,
but the metric is only seed noise), and the candidates are proposed in sequence against the
incumbent exactly as in a night of research. A keep is a false keep. The pure-policy
simulation in benchmarks/false_keep.py covers many more candidates; this one checks that the
loop, the seeds and the noise floor estimate behave as the simulation assumes.

    .venv/bin/python benchmarks/false_keep_harness.py --proposals 100
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import TOY_TRAIN, make_workspace  # noqa: E402
from nightlab.events import EventSink  # noqa: E402
from nightlab.research.loop import LoopLimits  # noqa: E402
from nightlab.research.session import build_loop, open_session  # noqa: E402

NOISY = TOY_TRAIN.replace("NOISE = 0.002", "NOISE = 0.01")


def session(policy: str, proposals: int, seed: int) -> dict:
    # Every proposal inserts one more no-op line after the same anchor line, which stays in the
    # incumbent whether or not an earlier no-op was (falsely) kept, so every proposal applies.
    anchor = "NOISE = 0.01  # run-to-run noise (seed-driven)"
    items = [
        {
            "description": f"no-op {i}",
            "edits": [{"path": "train.py", "search": anchor, "replace": f"{anchor}\n_unused_{i} = {i}"}],
        }
        for i in range(proposals)
    ]
    tmp = Path(tempfile.mkdtemp(prefix="nl-falsekeep-"))
    root = make_workspace(tmp / "ws", proposals=items, train=NOISY, policy=policy)
    toml = root / "nightlab.toml"
    toml.write_text(toml.read_text().replace("[policy]", f"[run]\nseed = {seed}\n\n[policy]"))
    subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "seed"], cwd=root, check=True
    )
    loop = build_loop(open_session(root, tag="fk"), events=EventSink())
    loop.run(LoopLimits(max_experiments=proposals))
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute("select decision, n_runs from experiments where kind = 'candidate'").fetchall()
    con.close()
    decided = [r for r in rows if r[0] in ("keep", "discard")]
    keeps = sum(1 for r in decided if r[0] == "keep")
    runs = sum(r[1] or 0 for r in decided)
    return {"policy": policy, "seed": seed, "decided": len(decided), "keeps": keeps, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    results = [session(p, args.proposals, s) for p in ("greedy", "confirm") for s in range(args.seeds)]
    for policy in ("greedy", "confirm"):
        mine = [r for r in results if r["policy"] == policy]
        keeps = sum(r["keeps"] for r in mine)
        decided = sum(r["decided"] for r in mine)
        runs = sum(r["runs"] for r in mine)
        print(
            f"{policy:8s} false keeps {keeps}/{decided} = {keeps / max(decided, 1):.1%}, {runs / max(decided, 1):.2f} runs per candidate"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
