"""A key planted in the harness's environment never appears in anything nightlab writes or prints.

The sandbox is off here on purpose: that is the worst case, where a training script *can* read
the key (from ``/proc/<harness>/environ``, which the scrubbed run environment does not cover),
so what is tested is the second line of defence, the redaction of every output. The script
proves it held the key by writing its sha256 (not the key) into its run directory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from helpers import nightlab
from trust.kit import PLANTED_KEY, assert_clean, attack, ledger_rows, run_session, trust_workspace

STEAL = """\
import hashlib, re
pid, found = os.getppid(), ''
while pid > 1 and not found:
    try:
        found = ''.join(re.findall(r'sk-[A-Za-z0-9]+', open(f'/proc/{pid}/environ').read())[:1])
    except OSError:
        pass
    pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
open(os.path.join(os.environ['NIGHTLAB_RUN_DIR'], 'held.sha256'), 'w').write(hashlib.sha256(found.encode()).hexdigest())
"""


@pytest.mark.slow
def test_planted_key_is_in_no_output(tmp_path: Path) -> None:
    root = trust_workspace(
        tmp_path / "ws",
        [
            attack("print the key", STEAL + "print('key:', found)\nprint(os.environ.get('OPENAI_API_KEY'))"),
            attack(
                "crash with the key in the traceback", STEAL + "raise RuntimeError('the key is ' + found)"
            ),
            attack("key in the metric line", STEAL + "print(f'val_loss: 0.5 {found}')"),
            attack("write the key into the worktree", STEAL + "open('key.txt', 'w').write(found)"),
        ],
        sandbox="off",
        audit="mark",
    )
    env = {"OPENAI_API_KEY": PLANTED_KEY, "NIGHTLAB_TEST_PLANTED": PLANTED_KEY}
    run = run_session(root, env=env)
    status = nightlab("status", str(root), "--json", env=env)
    report = nightlab("report", str(root), env=env)
    assert status.returncode == 0 and report.returncode == 0, status.stderr + report.stderr

    # The attacks really held the key (so the redaction was exercised) ...
    rows = ledger_rows(root)
    held = hashlib.sha256(PLANTED_KEY.encode()).hexdigest()
    state = root / ".nightlab"
    for name in ("print the key", "crash with the key in the traceback", "write the key into the worktree"):
        assert (state / "runs" / f"{rows[name]['id']:04d}" / "0" / "held.sha256").read_text() == held, name
    assert rows["crash with the key in the traceback"]["decision"] == "crash"
    assert rows["write the key into the worktree"]["decision"] == "invalid"

    # ... and no output of nightlab holds it.
    outputs: dict[str, bytes] = {
        "run stdout/stderr": (run.stdout + run.stderr).encode(),
        "status --json": (status.stdout + status.stderr).encode(),
        "report output": (report.stdout + report.stderr).encode(),
    }
    for path in [
        *state.glob("ledger.db*"),
        state / "results.tsv",
        state / "progress.png",
        *state.glob("report*"),
        *state.rglob("*.log"),
    ]:
        if path.is_file():
            outputs[str(path.relative_to(root))] = path.read_bytes()
    assert any(name.endswith("run.log") for name in outputs) and "progress.png" in " ".join(outputs)
    for name, data in outputs.items():
        assert PLANTED_KEY.encode() not in data, f"the key leaked into {name}"
        assert PLANTED_KEY[3:20].encode() not in data, f"part of the key leaked into {name}"
    assert_clean(root)
