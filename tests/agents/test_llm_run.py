"""`nightlab run` with the llm agent against a loopback server: the real CLI, git and ledger.

The CLI runs in a subprocess; the scripted OpenAI-compatible server runs in the test process,
so the model's answers (and a 429 on the way) are known and the ledger can be checked.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from fake_servers import Answer, Status, answer_text, block, fake_llm_server

from helpers import TOY_TOML, make_workspace, nightlab

KEY = "sk-run-test-0b1c"


def lr(old: str, new: str) -> str:
    return block(
        "train.py", f"LR = {old}  # learning rate: best at 0.3", f"LR = {new}  # learning rate: best at 0.3"
    )


SCRIPT = [
    Answer(answer_text("LR 0.1 -> 0.3", "LR is below its optimum", lr("0.1", "0.3")), 1000, 200),
    Status(429, "slow down", headers={"Retry-After": "0.2"}),  # the lesson call is rate limited once
    Answer("#2: LR at 0.3 cut the loss a lot", 100, 10),
    Answer(answer_text("typo", "x", lr("0.5", "0.6")), 1000, 200),  # does not match: sent back
    Answer(
        answer_text(
            "WIDTH 64 -> 128",
            "more capacity",
            block(
                "train.py",
                "WIDTH = 64  # model width: best at 128",
                "WIDTH = 128  # model width: best at 128",
            ),
        ),
        1000,
        200,
    ),
    Answer("#3: width 128 helped", 100, 10),
    Answer(answer_text("LR 0.3 -> 0.9", "bigger steps", lr("0.3", "0.9")), 1000, 200),
    Answer("#4: LR 0.9 overshoots", 100, 10),  # the lesson flushed when the run stops
]


def _llm_workspace(tmp_path: Path, server, protocol: str, extra: str = "") -> Path:  # noqa: ANN001
    """The toy workspace with the llm agent pointed at ``server``."""
    agent = (
        f'kind = "llm"\nprovider = "{protocol}"\nmodel = "fake-model"\nbase_url = "{server.base_url}"\n'
        f'api_key_env = "RUN_TEST_KEY"\nbackoff = 0.05\npipeline = false\n{extra}'
    )
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy").replace(
        'kind = "replay"\nfile = "proposals.jsonl"', agent
    )
    return make_workspace(Path(tmp_path / "ws"), toml=toml)


@pytest.mark.slow
def test_nightlab_run_with_the_llm_agent_records_decisions_tokens_cost_and_lessons(tmp_path):
    with fake_llm_server("openai", SCRIPT, api_key=KEY) as server:
        root = _llm_workspace(tmp_path, server, "openai", 'prices = { "fake-model" = [1.0, 2.0] }')
        result = nightlab("run", str(root), "--max-experiments", "3", env={"RUN_TEST_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert len(server.requests) == len(SCRIPT)

    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM experiments WHERE kind = 'candidate' ORDER BY id")]
    con.close()
    assert [(r["description"], r["decision"]) for r in rows] == [
        ("LR 0.1 -> 0.3", "keep"),
        ("WIDTH 64 -> 128", "keep"),
        ("LR 0.3 -> 0.9", "discard"),
    ]
    metas = [json.loads(r["meta_json"]) for r in rows]
    costs = [json.loads(r["cost_json"]) for r in rows]
    proposals = [json.loads(r["proposal_json"]) for r in rows]
    # The second proposal paid for the lesson call and the retry after the non-matching block.
    assert [(c["tokens_in"], c["tokens_out"], c["attempts"]) for c in costs] == [
        (1000, 200, 1),
        (2100, 410, 2),
        (1100, 210, 1),
    ]
    assert costs[1]["cost_usd"] == pytest.approx(0.00292)  # 2100 * $1/Mtok + 410 * $2/Mtok
    assert proposals[1]["lessons"] == {"2": "LR at 0.3 cut the loss a lot"}
    assert proposals[2]["lessons"] == {"3": "width 128 helped"}
    assert [r["lesson"] for r in rows] == [
        "LR at 0.3 cut the loss a lot",
        "width 128 helped",
        "LR 0.9 overshoots",
    ]
    assert not any(KEY in json.dumps(m) for m in metas + costs + proposals)
    assert KEY not in result.stdout + result.stderr
    # The last lesson was written after the last proposal: its call is on the tag's record, so
    # the whole bill is every token the server answered with.
    status = json.loads(nightlab("status", str(root), "--json").stdout)
    outside = status["agent_cost_outside_experiments"]
    assert outside == {"tokens_in": 100, "tokens_out": 10, "cost_usd": pytest.approx(0.00012), "dropped": 0}
    served = [a for a in SCRIPT if isinstance(a, Answer)]
    assert sum(c["tokens_in"] for c in costs) + outside["tokens_in"] == sum(a.tokens_in for a in served)
    assert sum(c["tokens_out"] for c in costs) + outside["tokens_out"] == sum(a.tokens_out for a in served)
    report = " ".join(nightlab("report", str(root)).stdout.split())  # rich wraps the line
    spent = (
        "5,130 tokens, $0.0060 (110 tokens, $0.0001 of it outside experiments: lessons, abandoned requests)"
    )
    assert f"Agent cost {spent}" in report, report
    page = (root / ".nightlab" / "report.html").read_text()
    assert "Cost: LLM 5,130 tokens, $0.01 (110 tokens, $0.00 of it outside experiments: lessons" in page


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_rejected_key_stops_the_night_before_the_baseline_trains(tmp_path, protocol):
    """The key is checked by listing the server's models before the setup and the baseline: a
    401 there is one line and exit 2, with nothing trained (it used to cost the baseline's runs)."""
    with fake_llm_server(protocol, SCRIPT, api_key=KEY) as server:
        root = _llm_workspace(tmp_path, server, protocol)
        result = nightlab("run", str(root), "--max-experiments", "3", env={"RUN_TEST_KEY": "sk-wrong"})
        assert result.returncode == 2, result.stdout + result.stderr
        assert "was rejected" in result.stderr and "HTTP 401" in result.stderr
        assert "Traceback" not in result.stderr and "sk-wrong" not in result.stderr
        assert server.key_checks == 1 and server.requests == []  # no completion asked for
        ok = nightlab("run", str(root), "--max-experiments", "1", env={"RUN_TEST_KEY": KEY})
        assert ok.returncode == 0, ok.stderr
        assert server.key_checks == 2
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    con.close()
    assert runs >= 2  # the baseline trained only once the key was right
