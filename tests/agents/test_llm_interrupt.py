"""Ctrl-C or SIGTERM while a model request hangs: `nightlab run` ends at once, not at the
request's timeout (300 s by default), and what it recorded stays sound for `status` and a
resumed run. The real CLI in a subprocess, a loopback server that accepts the request and
never answers, real signals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from agent_kit import make_context
from fake_servers import Answer, Hang, Request, answer_text, block, fake_llm_server

from helpers import TOY_TOML, TOY_TRAIN, make_workspace, nightlab
from nightlab.agents.llm.agent import LLMAgent, ProposalAbandoned

KEY = "sk-interrupt-test-5e2a"
LR_UP = answer_text(
    "LR 0.1 -> 0.3",
    "LR is below its optimum",
    block("train.py", "LR = 0.1  # learning rate: best at 0.3", "LR = 0.3  # learning rate: best at 0.3"),
)
# A candidate trains for a while (the baseline does not), so a pipelined request hangs while
# one of its runs is in flight.
SLOW_TRAIN = TOY_TRAIN.replace(
    "seed = int(", "import time\ntime.sleep(0 if LR == 0.1 else 2)\nseed = int(", 1
)


class Script:
    """Proposals answered from ``answers`` in order, then one that hangs; lessons answered."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.hung = False

    def __call__(self, request: Request) -> Answer | Hang:
        if "research notebook" in json.dumps(request.body):
            return Answer("#1: a lesson", 100, 10)
        if self.answers:
            return Answer(self.answers.pop(0), 1000, 200)
        if not self.hung:
            self.hung = True
            return Hang(600)
        return Answer(LR_UP, 1000, 200)  # a resumed run's proposal


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_interrupt_abandons_the_request_in_flight_and_keeps_what_was_spent(protocol, llm_config):
    """In process: the first answer is unusable (paid for), the retry hangs; interrupt() from
    another thread ends the proposal at once, with no proposal and the first answer counted."""
    with fake_llm_server(protocol, [Answer("no blocks here", 1000, 200), Hang(60)]) as server:
        agent = LLMAgent(llm_config(server, request_timeout=300))
        outcome: list[object] = []
        thread = threading.Thread(target=lambda: outcome.append(_propose_or_error(agent)), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while len(server.requests) < 2:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        time.sleep(0.2)
        sent = time.monotonic()
        agent.interrupt()
        thread.join(timeout=5)
        assert time.monotonic() - sent < 1
        [abandoned] = outcome
        assert isinstance(abandoned, ProposalAbandoned)
        assert (agent.spent.tokens_in, agent.spent.tokens_out) == (1000, 200)
        with pytest.raises(ProposalAbandoned):  # nothing more is asked once stopping
            agent.propose(make_context())
        assert len(server.requests) == 2


def _propose_or_error(agent: LLMAgent) -> object:
    try:
        return agent.propose(make_context())
    except ProposalAbandoned as exc:
        return exc


def _workspace(tmp_path: Path, server, pipeline: bool) -> Path:  # noqa: ANN001
    agent = (
        f'kind = "llm"\nprovider = "{server.protocol}"\nmodel = "fake-model"\n'
        f'base_url = "{server.base_url}"\napi_key_env = "INTERRUPT_TEST_KEY"\n'
        f'pipeline = {str(pipeline).lower()}\nprices = {{ "fake-model" = [1.0, 2.0] }}\n'
    )
    toml = TOY_TOML.format(evaluate="", source="json", pattern="", policy="greedy").replace(
        'kind = "replay"\nfile = "proposals.jsonl"', agent
    )
    return make_workspace(tmp_path / "ws", train=SLOW_TRAIN, toml=toml)


def _foreground_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a user's shell starts it, not a background job


def _interrupt_when_hung(root: Path, script: Script, signum: int) -> tuple[int, str, float]:
    """Start `nightlab run`, signal it once the hanging request is in flight; (code, stderr, seconds)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "run", str(root), "-n", "3", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "INTERRUPT_TEST_KEY": KEY},
        preexec_fn=_foreground_signals,
    )
    try:
        deadline = time.monotonic() + 120
        while not script.hung:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.3)  # the request is sent and its answer awaited
        sent = time.monotonic()
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err, took


def _candidates(root: Path) -> list[dict]:
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM experiments WHERE kind = 'candidate' ORDER BY id")]
    con.close()
    return rows


def _assert_interrupted_promptly(code: int, err: str, took: float, signum: int) -> None:
    assert took < 5, f"took {took:.1f} s to exit: {err}"  # not [agent] request_timeout (300 s)
    assert code == 128 + signum, err
    assert f"interrupted ({signal.Signals(signum).name})" in err
    assert "Traceback" not in err and KEY not in err


def test_ctrl_c_with_a_request_hanging_ends_the_run_at_once(tmp_path):
    """Without pipelining: the proposal is asked while nothing trains, and never answered (both
    SDKs are covered in process above; the wait does not depend on the SDK)."""
    script = Script()
    with fake_llm_server("openai", script) as server:
        root = _workspace(tmp_path, server, pipeline=False)
        code, err, took = _interrupt_when_hung(root, script, signal.SIGINT)
        _assert_interrupted_promptly(code, err, took, signal.SIGINT)
        assert _candidates(root) == []  # nothing half-made in the ledger

        status = nightlab("status", str(root), "--json")
        assert status.returncode == 0, status.stderr
        assert [e["kind"] for e in json.loads(status.stdout)["experiments"]] == ["baseline"]

        resumed = nightlab("run", str(root), "-n", "1", "--plain", env={"INTERRUPT_TEST_KEY": KEY})
        assert resumed.returncode == 0, resumed.stderr
    [row] = _candidates(root)
    assert (row["description"], row["decision"]) == ("LR 0.1 -> 0.3", "keep")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_with_a_pipelined_request_hanging_while_a_run_trains(tmp_path, signum):
    """Pipelined: the next proposal is asked on the desk's thread while the first candidate
    trains; the signal stops the run in flight and the request, and the answered proposal
    keeps its cost."""
    script = Script(LR_UP)
    with fake_llm_server("openai", script) as server:
        root = _workspace(tmp_path, server, pipeline=True)
        code, err, took = _interrupt_when_hung(root, script, signum)
        _assert_interrupted_promptly(code, err, took, signum)
        [row] = _candidates(root)  # the answered proposal; nothing of the hanging one
        assert row["status"] == "running"  # its run was stopped: the next run repeats it
        cost = json.loads(row["cost_json"])
        assert (cost["tokens_in"], cost["tokens_out"], cost["cost_usd"]) == (1000, 200, 0.0014)

        status = nightlab("status", str(root))
        assert status.returncode == 0, status.stderr

        resumed = nightlab("run", str(root), "-n", "1", "--plain", env={"INTERRUPT_TEST_KEY": KEY})
        assert resumed.returncode == 0, resumed.stderr
    [row] = _candidates(root)
    assert row["decision"] == "keep" and json.loads(row["cost_json"])["tokens_in"] == 1000
