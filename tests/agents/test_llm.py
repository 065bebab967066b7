"""The LLM agent end to end against loopback servers: proposals, retries, duplicates, caps, lessons."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from agent_kit import GOOD, KEY, WIDER, make_context
from agent_kit import entry as make_entry
from fake_servers import Answer, Raw, Status, answer_text, block, fake_llm_server

from nightlab.agents.base import Agent
from nightlab.agents.llm.agent import MAX_FAILED_ROUNDS, LLMAgent
from nightlab.code.edits import apply_edits
from nightlab.errors import UserError


def own_entry(proposal, id: int = 1, **changes):
    """The history entry the loop would build for a proposal (meta and cost copied, as the ledger does)."""
    cost = proposal.cost.to_dict() if proposal.cost else {}
    return make_entry(
        id,
        proposal.description,
        hypothesis=proposal.hypothesis,
        meta=dict(proposal.meta),
        cost=cost,
        **changes,
    )


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_good_answer_becomes_a_proposal_with_tokens_and_cost(protocol, llm_config, caplog):
    caplog.set_level(logging.DEBUG)
    with fake_llm_server(protocol, [Answer(GOOD, tokens_in=2000, tokens_out=500)], api_key=KEY) as server:
        agent = LLMAgent(llm_config(server))
        assert isinstance(agent, Agent)
        proposal = agent.propose(make_context())
    assert proposal is not None
    assert proposal.description == "raise LR 0.01 -> 0.03"
    assert proposal.hypothesis == "the learning rate is far below the optimum"
    new = apply_edits({"train.py": make_context().files["train.py"]}, proposal.edits, ["train.py"])
    assert "LR = 0.03  # learning rate" in new["train.py"]
    cost = proposal.cost
    assert (cost.tokens_in, cost.tokens_out, cost.attempts, cost.model) == (2000, 500, 1, "fake-model")
    # prices = {"fake-model" = [1.0, 2.0]} $/Mtok: 2000 * 1e-6 + 500 * 2e-6
    assert cost.cost_usd == pytest.approx(0.003)
    assert agent.spent.cost_usd == pytest.approx(0.003)
    json.dumps(proposal.to_dict())  # the ledger stores it as JSON
    # What the model saw: the instructions, the protocol, the incumbent file, the frozen interface.
    [request] = server.requests
    sent = json.dumps(request.body)
    for needle in ("Lower val_loss", "<<<<<<< SEARCH", "LR = 0.01  # learning rate", "def evaluate(model"):
        assert needle in sent
    assert "secret_internal_detail" not in sent  # frozen bodies stay out of the prompt
    # The key is in the request header only: never in meta or the logs.
    assert KEY not in json.dumps(proposal.to_dict()) and KEY not in caplog.text


@pytest.mark.parametrize(
    ("bad_answer", "feedback"),
    [
        (
            answer_text("typo", "x", block("train.py", "LR = 0.001  # learning rate", "LR = 0.1")),
            "edit 1 (train.py)",  # apply_edits' own message: which block, the nearest lines
        ),
        (GOOD.replace("=======\n", ""), "expected '=======' between"),
        (
            answer_text("cheat", "x", block("prepare.py", "MAX_SEQ_LEN = 256", "MAX_SEQ_LEN = 1")),
            "prepare.py is frozen",
        ),
        (answer_text("elsewhere", "x", block("notes.md", "", "hello")), "outside the editable files"),
        (
            answer_text("broken", "x", block("train.py", "WIDTH = 64  # model width", "WIDTH = = 64")),
            "not valid Python",
        ),
        (
            answer_text(
                "nothing", "x", block("train.py", "LR = 0.01  # learning rate", "LR = 0.01  # learning rate")
            ),
            "leave every file exactly",
        ),
        ("I think we should raise the learning rate.", "no 'Description: ...' line"),
    ],
    ids=[
        "no-match",
        "malformed",
        "frozen-file",
        "outside-editable",
        "syntax-error",
        "no-change",
        "no-format",
    ],
)
def test_an_unusable_answer_is_sent_back_with_the_error_and_the_retry_is_used(
    bad_answer, feedback, llm_config
):
    with fake_llm_server("openai", [Answer(bad_answer, 1000, 100), Answer(GOOD, 1500, 200)]) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context())
    assert proposal is not None and proposal.description == "raise LR 0.01 -> 0.03"
    assert proposal.cost.attempts == 2
    assert (proposal.cost.tokens_in, proposal.cost.tokens_out) == (2500, 300)  # both calls paid
    first, second = server.requests
    # Same conversation: the first answer and the error text come back to the model.
    assert second.messages[:-2] == first.messages
    assert second.messages[-2] == {"role": "assistant", "content": bad_answer}
    assert feedback in second.last_user_text
    assert proposal.refused is None


def test_a_not_found_block_feedback_quotes_the_nearest_lines(llm_config):
    bad = answer_text("typo", "x", block("train.py", "LR = 0.001  # learning rate", "LR = 0.1"))
    with fake_llm_server("openai", [Answer(bad), Answer(GOOD)]) as server:
        LLMAgent(llm_config(server)).propose(make_context())
    assert "LR = 0.01  # learning rate" in server.requests[1].last_user_text


def test_a_proposal_already_tried_is_refused_and_the_model_asked_again(llm_config):
    with fake_llm_server("openai", [Answer(GOOD), Answer(GOOD), Answer(WIDER)]) as server:
        agent = LLMAgent(llm_config(server, lessons=False))
        first = agent.propose(make_context())
        agent.observe(own_entry(first, 1))
        second = agent.propose(make_context(history=[own_entry(first, 1)]))
    assert second is not None and second.description == "WIDTH 64 -> 128"
    assert "same files as experiment #1" in server.requests[2].last_user_text
    assert second.meta["files_hash"] != first.meta["files_hash"]


def test_a_duplicate_written_differently_is_still_a_duplicate(llm_config):
    whole = (
        make_context().files["train.py"].replace("LR = 0.01  # learning rate", "LR = 0.03  # learning rate")
    )
    rewritten = answer_text("set LR to 0.03 via whole file", "same idea", block("train.py", "", whole))
    with fake_llm_server("openai", [Answer(GOOD), Answer(rewritten), Answer(WIDER)]) as server:
        agent = LLMAgent(llm_config(server, lessons=False))
        agent.observe(own_entry(agent.propose(make_context()), 1))
        assert agent.propose(make_context()).description == "WIDTH 64 -> 128"
    assert "already tried" in server.requests[2].last_user_text


def test_past_experiments_from_a_previous_process_count_as_tried(llm_config):
    """After a restart the ledger's meta carries the files hash, so old ideas stay refused."""
    with fake_llm_server("openai", [Answer(GOOD)]) as server:
        earlier = LLMAgent(llm_config(server)).propose(make_context())
    with fake_llm_server("openai", [Answer(GOOD), Answer(WIDER)]) as server:
        agent = LLMAgent(llm_config(server))
        agent.observe(own_entry(earlier, 7))
        assert agent.propose(make_context()).description == "WIDTH 64 -> 128"
    assert "experiment #7" in server.requests[1].last_user_text


def test_retries_exhausted_gives_an_invalid_proposal_then_stops(llm_config, caplog):
    bad = answer_text("typo", "x", block("train.py", "LR = 0.5", "LR = 0.1"))
    with fake_llm_server("openai", lambda request: Answer(bad)) as server:
        agent = LLMAgent(llm_config(server, retries=1, lessons=False))
        proposal = agent.propose(make_context())
        assert proposal is not None
        assert "edit 1 (train.py)" in proposal.refused
        assert proposal.cost.attempts == 2 and proposal.description == "typo"
        assert len(server.requests) == 2
        for _ in range(2, MAX_FAILED_ROUNDS + 1):
            last = agent.propose(make_context())
        # The round that makes it stop is still an invalid proposal to record, with its cost.
        assert last is not None and last.refused and last.cost.attempts == 2
        assert "in a row had no usable answer" in agent.stop_reason()
        asked = len(server.requests)
        assert agent.propose(make_context()) is None  # stopped: no more calls
        assert len(server.requests) == asked


def test_the_token_cap_stops_the_agent_cleanly(llm_config, caplog):
    with fake_llm_server("openai", [Answer(GOOD, 1000, 200), Answer(WIDER, 1000, 200)]) as server:
        agent = LLMAgent(llm_config(server, max_total_tokens=1100, lessons=False))
        assert agent.propose(make_context()) is not None  # the call that crossed the cap still counts
        assert agent.propose(make_context()) is None
    assert len(server.requests) == 1
    assert (
        "token cap reached: 1200 tokens" in agent.stop_reason() and not agent.failed()
    )  # a limit, not a failure
    assert "token cap reached" in caplog.text


def test_the_cost_cap_counts_spending_from_before_a_restart(llm_config):
    with fake_llm_server("openai", [Answer(GOOD)]) as server:
        agent = LLMAgent(llm_config(server, max_cost=0.05))
        agent.observe(
            make_entry(1, "from the last run", cost={"tokens_in": 10, "tokens_out": 10, "cost_usd": 0.05})
        )
        assert agent.propose(make_context()) is None
    assert server.requests == []
    assert agent.stop_reason().startswith("cost cap reached: $0.0500")


def test_spending_without_a_proposal_goes_to_the_loop_and_counts_after_a_restart(llm_config):
    """A conversation that ends in no proposal (here the cap, reached after an unusable answer)
    cost tokens that no experiment will carry: the loop takes them (``unreturned_cost``, once)
    for the tag's record, and the next process inherits them toward its caps."""
    unusable = answer_text("typo", "x", block("train.py", "NOT IN THE FILE", "X = 1"))
    with fake_llm_server("openai", [Answer(unusable, 700, 100)]) as server:
        agent = LLMAgent(llm_config(server, max_total_tokens=500, lessons=False))
        assert agent.propose(make_context()) is None
        assert len(server.requests) == 1 and "token cap reached: 800" in agent.stop_reason()
    cost = agent.unreturned_cost()
    assert cost is not None and (cost.tokens_in, cost.tokens_out) == (700, 100)
    assert agent.unreturned_cost() is None  # handed over once
    with fake_llm_server("openai", [Answer(GOOD)]) as server:
        resumed = LLMAgent(llm_config(server, max_total_tokens=500, lessons=False))
        resumed.inherit_cost(cost)
        assert resumed.propose(make_context()) is None
        assert server.requests == [] and "token cap reached: 800" in resumed.stop_reason()


def test_a_cost_cap_needs_a_price(llm_config):
    with fake_llm_server("openai", []) as server:
        with pytest.raises(UserError, match=r"max_cost needs a price for model 'unpriced'"):
            LLMAgent(llm_config(server, model="unpriced", max_cost=1.0))


def test_a_bad_key_met_by_propose_stops_the_agent_with_the_one_line(llm_config, monkeypatch):
    # Not raised: an experiment may be training while the next proposal is asked (see
    # test_llm_trouble.py); the loop ends the night with the agent's stop reason.
    with fake_llm_server("anthropic", [Answer(GOOD)], api_key="the-right-key") as server:
        agent = LLMAgent(llm_config(server))
        assert agent.propose(make_context()) is None
    assert agent.failed() and "rejected" in agent.stop_reason() and KEY not in agent.stop_reason()


def test_an_api_that_stays_down_stops_the_agent_instead_of_crashing(llm_config):
    with fake_llm_server("openai", lambda request: Status(503)) as server:
        agent = LLMAgent(llm_config(server, api_retries=2))
        assert agent.propose(make_context()) is None
    assert len(server.requests) == 3
    assert "gave up after 3 attempts" in agent.stop_reason() and agent.failed()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("<html>not json", "answered with something that is not JSON: '<html>not json'"),
        ("{}", "answered without a message: no choices"),
        ('{"choices": []}', "answered without a message: no choices"),
    ],
)
def test_a_server_answering_no_message_stops_the_agent_without_an_experiment(body, why, llm_config):
    with fake_llm_server("openai", lambda request: Raw(body)) as server:
        agent = LLMAgent(llm_config(server, api_retries=2))
        assert agent.propose(make_context()) is None  # not an invalid proposal counted as a try
    assert len(server.requests) == 3
    assert (
        f"gave up after 3 attempts (BadResponse: the API at {server.base_url} {why})" in agent.stop_reason()
    )


def test_lessons_are_written_before_the_next_proposal_and_shown_after(llm_config):
    lesson = "#1: LR 0.03 helped but is within noise; try 0.1 next."
    with fake_llm_server("openai", [Answer(GOOD), Answer(lesson, 300, 20), Answer(WIDER)]) as server:
        agent = LLMAgent(llm_config(server))
        first = agent.propose(make_context())
        done = own_entry(first, 1, decision="keep", delta=0.004)
        agent.observe(done)
        second = agent.propose(make_context(history=[done]))
    first_call, lesson_call, proposal_call = server.requests
    assert "research notebook" in json.dumps(lesson_call.body)
    assert (
        "raise LR 0.01 -> 0.03" in lesson_call.last_user_text
        and "decision keep" in lesson_call.last_user_text
    )
    expected = "LR 0.03 helped but is within noise; try 0.1 next."
    assert second.lessons == {1: expected}
    assert done.lesson == expected and agent.lessons == {1: expected}
    assert expected in proposal_call.last_user_text
    assert (second.cost.tokens_in, second.cost.tokens_out) == (1300, 220)  # the lesson call is counted


def test_lessons_can_be_switched_off_and_flushed(llm_config):
    with fake_llm_server("openai", [Answer(GOOD), Answer(WIDER)]) as server:
        agent = LLMAgent(llm_config(server, lessons=False))
        agent.observe(own_entry(agent.propose(make_context()), 1))
        agent.propose(make_context())
    assert len(server.requests) == 2
    with fake_llm_server("openai", [Answer(GOOD), Answer("training crashed on a shape mismatch")]) as server:
        agent = LLMAgent(llm_config(server))
        crashed = own_entry(
            agent.propose(make_context()), 3, status="crash", decision="crash", log_tail="RuntimeError: shape"
        )
        agent.observe(crashed)
        assert agent.final_lessons() == {3: "training crashed on a shape mismatch"}
    assert "RuntimeError: shape" in server.requests[1].last_user_text


def test_observe_does_not_wait_for_a_proposal_in_flight(llm_config):
    """The loop prepares the next proposal in a thread while it records the last result."""
    with fake_llm_server("openai", [Answer(GOOD), Answer(WIDER, delay=1.0)]) as server:
        agent = LLMAgent(llm_config(server, lessons=False))
        first = agent.propose(make_context())
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(p=agent.propose(make_context())))
        worker.start()
        while len(server.requests) < 2:
            time.sleep(0.01)
        start = time.monotonic()
        agent.observe(own_entry(first, 1))
        observed_in = time.monotonic() - start
        worker.join(timeout=10)
    assert observed_in < 0.2
    assert result["p"].description == "WIDTH 64 -> 128"


def test_observing_its_own_proposals_does_not_count_their_spending_twice(llm_config):
    bad = answer_text("typo", "x", block("train.py", "LR = 0.5", "LR = 0.1"))
    with fake_llm_server("openai", [Answer(GOOD, 1000, 100), Answer(bad, 1000, 100)]) as server:
        agent = LLMAgent(llm_config(server, retries=0, lessons=False))
        good = agent.propose(make_context())
        invalid = agent.propose(make_context())
        assert invalid.refused
        agent.observe(own_entry(good, 1))
        agent.observe(own_entry(invalid, 2, status="invalid", decision="invalid"))
    assert agent.spent.tokens_in == 2000 and agent.spent.tokens_out == 200


def test_the_registry_builds_it_from_a_parsed_nightlab_toml(monkeypatch, tmp_path):
    from agent_kit import KEY_ENV

    from nightlab.agents.base import AgentSetup
    from nightlab.agents.registry import make_agent
    from nightlab.config import parse_config

    monkeypatch.setenv(KEY_ENV, KEY)
    with fake_llm_server("anthropic", [Answer(GOOD)], api_key=KEY) as server:
        agent_table = {
            "kind": "llm",
            "provider": "anthropic",
            "model": "claude-haiku-4-5",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "api_retries": 1,
            "backoff": 0.01,
            "request_timeout": 5,
            "lessons": False,
            "max_cost": 1.0,
        }
        config = parse_config(
            {"target": {"editable": ["train.py"], "run": "python train.py"}, "agent": agent_table}
        )
        agent = make_agent(AgentSetup(config, tmp_path))
        assert isinstance(agent, LLMAgent)
        proposal = agent.propose(make_context())
    # Built-in price for claude-haiku-4-5: $1 in / $5 out per Mtok; 1000 tokens in, 200 out.
    assert proposal.cost.cost_usd == pytest.approx(0.001 + 0.001)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_an_answer_cut_off_by_the_output_limit_is_told_so(protocol, llm_config):
    cut = GOOD[: GOOD.index("=======")]
    with fake_llm_server(protocol, [Answer(cut, truncated=True), Answer(GOOD)]) as server:
        proposal = LLMAgent(llm_config(server, max_output_tokens=300)).propose(make_context())
    assert proposal.description == "raise LR 0.01 -> 0.03"
    assert "cut off at 300 tokens" in server.requests[1].last_user_text


def test_an_empty_answer_is_retried_without_sending_an_empty_turn(llm_config):
    with fake_llm_server("anthropic", [Answer(""), Answer(GOOD)]) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context())
    assert proposal.description == "raise LR 0.01 -> 0.03"
    assert all(m["content"] for m in server.requests[1].messages)


def test_a_runaway_answer_is_repeated_shortened_in_the_retry(llm_config):
    """One unusable 1 MB answer must not make the round's next requests 1 MB, then 2 MB larger."""
    huge = "x" * 1_000_000
    with fake_llm_server("openai", [Answer(huge), Answer(huge), Answer(GOOD)]) as server:
        agent = LLMAgent(llm_config(server, retries=2, lessons=False, context_chars=40_000))
        assert agent.propose(make_context()).description
    sizes = [len(json.dumps(r.messages)) for r in server.requests]
    assert len(sizes) == 3 and max(sizes) < 60_000, sizes
    assert "characters, left out]" in server.requests[1].messages[-2]["content"]


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_reasoning_models_inline_thoughts_are_left_out_of_the_proposal_and_the_retry(protocol, llm_config):
    """Qwen3 or DeepSeek-R1 behind Ollama or llama.cpp without a reasoning parser: the answer
    starts with <think>...</think>, draft description and draft block included."""
    draft = answer_text(
        "lower LR 0.01 -> 0.005",
        "too high",
        block("train.py", "LR = 0.01  # learning rate", "LR = 0.005  # learning rate"),
    )
    only_thoughts = f"<think>\n{draft}\nstill thinking"
    answers = [Answer(only_thoughts, truncated=True), Answer(f"<think>\n{draft}\n</think>\n\n{GOOD}")]
    with fake_llm_server(protocol, answers) as server:
        proposal = LLMAgent(llm_config(server, max_output_tokens=300)).propose(make_context())
    assert proposal.description == "raise LR 0.01 -> 0.03"
    new = apply_edits({"train.py": make_context().files["train.py"]}, proposal.edits, ["train.py"])
    assert "LR = 0.03  # learning rate" in new["train.py"]
    retry = server.requests[1]
    assert "ended inside its <think> reasoning" in retry.last_user_text
    assert "cut off at 300 tokens" in retry.last_user_text
    assert "lower LR" not in json.dumps(retry.messages)  # the thoughts are not sent back


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_lesson_call_a_reasoning_model_spent_thinking_is_asked_again_at_the_answer_limit(
    protocol, llm_config
):
    """gpt-5 or o3 count hidden reasoning against the output limit: at the lessons' short one
    they can end cut off with nothing written, and no lesson was ever kept."""
    lesson = "#1: LR 0.03 helped; try 0.1 next."
    answers = [
        Answer(GOOD),
        Answer("", 300, 400, truncated=True),
        Answer(lesson, 300, 900),
        Answer(WIDER, 1000, 500),
    ]
    with fake_llm_server(protocol, answers) as server:
        agent = LLMAgent(llm_config(server, max_output_tokens=5000))
        done = own_entry(agent.propose(make_context()), 1, decision="keep", delta=0.004)
        agent.observe(done)
        second = agent.propose(make_context(history=[done]))
    limits = [r.body.get("max_tokens", r.body.get("max_completion_tokens")) for r in server.requests]
    assert limits == [5000, 80, 5000, 5000]
    assert second.lessons == {1: "LR 0.03 helped; try 0.1 next."}
    assert second.cost.tokens_out == 400 + 900 + 500  # both lesson calls are counted
