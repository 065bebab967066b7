"""The llm agent against servers and models that misbehave the way real ones do.

Each test is one kind of trouble met with the official SDKs on a loopback server: answers in an
unexpected shape, a refused lessons request, runaway text. The night must go on (or stop with
one line), and what the agent hands the loop must stay bounded.
"""

from __future__ import annotations

import json

from agent_kit import entry as make_entry
from agent_kit import make_context
from fake_servers import Answer, Status, answer_text, block, fake_llm_server

from nightlab.agents.llm.agent import LLMAgent

GOOD = answer_text(
    "raise LR 0.01 -> 0.03",
    "the learning rate is far below the optimum",
    block("train.py", "LR = 0.01  # learning rate", "LR = 0.03  # learning rate"),
)
WIDER = answer_text(
    "WIDTH 64 -> 128",
    "more capacity",
    block("train.py", "WIDTH = 64  # model width", "WIDTH = 128  # model width"),
)


def test_a_refused_lessons_request_costs_the_lessons_not_the_night(llm_config):
    """A lessons request the server refuses (HTTP 400: too long for the model's context) used to
    raise the run-stopping error of a refused proposal; now the lesson is skipped and the next
    proposal is asked. The hypothesis it tells is bounded, so one from `nightlab try` or MCP
    (any length) cannot make that request huge in the first place."""
    refused = Status(400, "This model's maximum context length is 8192 tokens")
    with fake_llm_server("openai", [Answer(GOOD), refused, Answer(WIDER)]) as server:
        agent = LLMAgent(llm_config(server))
        first = agent.propose(make_context())
        agent.observe(
            make_entry(1, first.description, hypothesis="h" * 200_000, meta=dict(first.meta), decision="keep")
        )
        proposal = agent.propose(make_context())
    assert proposal is not None and proposal.description == "WIDTH 64 -> 128"
    assert agent.stop_reason() is None and agent.lessons == {}
    lesson_request = json.dumps(server.requests[1].body)
    assert "research notebook" in lesson_request and len(lesson_request) < 5_000
