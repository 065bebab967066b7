"""The llm agent against servers and models that misbehave the way real ones do.

Each test is one kind of trouble met with the official SDKs on a loopback server: answers in an
unexpected shape, a refused lessons request, runaway text. The night must go on (or stop with
one line), and what the agent hands the loop must stay bounded.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from agent_kit import GOOD, KEY, WIDER, make_context
from agent_kit import entry as make_entry
from fake_servers import Answer, Raw, Status, Trickle, answer_text, block, fake_llm_server

from nightlab.agents.llm.agent import LLMAgent
from nightlab.agents.llm.settings import LLMSettings
from nightlab.errors import UserError


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


def _openai_body(message: dict, finish: str = "stop") -> Raw:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return Raw(json.dumps(body))


def test_content_sent_as_a_list_of_text_parts_is_read_as_the_answer(llm_config):
    """Some OpenAI-compatible servers and proxies answer with content parts, not a string; the
    agent used to crash on it with a TypeError traceback."""
    parts = [{"type": "text", "text": GOOD[:40]}, {"type": "text", "text": GOOD[40:]}]
    with fake_llm_server("openai", [_openai_body({"content": parts})]) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context())
    assert proposal is not None and proposal.refused is None
    assert proposal.description == "raise LR 0.01 -> 0.03"


TOOL_CALLS = {
    "openai tool_calls": (
        "openai",
        _openai_body(
            {
                "content": None,
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "edit_file", "arguments": "{}"}}
                ],
            },
            "tool_calls",
        ),
    ),
    "openai function_call": (
        "openai",
        _openai_body({"content": None, "function_call": {"name": "edit_file", "arguments": "{}"}}),
    ),
    "anthropic tool_use": (
        "anthropic",
        Raw(
            json.dumps(
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "fake-model",
                    "content": [{"type": "tool_use", "id": "tu_1", "name": "edit_file", "input": {}}],
                    "stop_reason": "tool_use",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 5},
                }
            )
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(TOOL_CALLS))
def test_a_tool_call_instead_of_text_is_sent_back_to_the_model_not_retried_as_an_outage(case, llm_config):
    """A model that calls a tool (none is offered) answered: it used to count as a server
    without a message, retried with backoff until the night stopped."""
    protocol, tool_call = TOOL_CALLS[case]
    with fake_llm_server(protocol, [tool_call, Answer(GOOD)]) as server:
        agent = LLMAgent(llm_config(server))
        proposal = agent.propose(make_context())
    assert proposal is not None and proposal.description == "raise LR 0.01 -> 0.03"
    assert proposal.cost.attempts == 2 and agent.stop_reason() is None
    assert "call to the tool 'edit_file'; no tools are available" in server.requests[1].last_user_text


@pytest.mark.parametrize(
    ("protocol", "wrong"),
    [("openai", lambda url: url.removesuffix("/v1")), ("anthropic", lambda url: url + "/v1/")],
)
def test_a_base_url_with_or_without_v1_the_wrong_way_is_named_before_the_night(protocol, wrong, llm_config):
    """OpenAI's SDK wants /v1 in base_url, Anthropic's does not: the wrong form found no route and
    was reported after the baseline as an unknown model ('check model and base_url')."""
    with fake_llm_server(protocol, [Answer(GOOD)]) as server:
        agent = LLMAgent(llm_config(server, base_url=wrong(server.base_url)))
        with pytest.raises(UserError) as caught:
            agent.check({})
    message = str(caught.value)
    assert f'but "{server.base_url}" has: set base_url = "{server.base_url}"' in message
    assert "\n" not in message and not server.requests  # nothing was asked of the model


def test_a_pasted_key_with_spaces_works_and_one_no_header_can_carry_is_refused(llm_config, monkeypatch):
    """A key with a trailing newline or space failed every request as "Connection error." (after
    the baseline, minutes of retries); one with a typographic quote raised a traceback."""
    with fake_llm_server("openai", [Answer(GOOD)], api_key=KEY) as server:
        config = llm_config(server)
        monkeypatch.setenv(config.api_key_env, f" {KEY}\n")
        assert LLMAgent(config).propose(make_context()).description == "raise LR 0.01 -> 0.03"
        monkeypatch.setenv(config.api_key_env, KEY[:5] + "\u201d" + KEY[5:])
        with pytest.raises(UserError) as caught:
            LLMAgent(config)
    message = str(caught.value)
    assert f"${config.api_key_env} holds a character no API key has" in message and "position 6" in message
    assert KEY[5:] not in message and "\n" not in message


@pytest.mark.parametrize(
    "url", ["localhost:8000/v1", "http:/127.0.0.1:8000/v1", "ftp://127.0.0.1/v1", "http://127.0.0.1:99999/v1"]
)
def test_a_base_url_that_is_no_http_address_is_refused_at_start(url, llm_config):
    """It failed every request as "Connection error.", retried for minutes after the baseline."""
    with fake_llm_server("openai") as server, pytest.raises(UserError) as caught:
        LLMAgent(llm_config(server, base_url=url))
    assert f'base_url = "{url}" is not an http(s) address with a host' in str(caught.value)


def test_a_refused_connection_says_so(llm_config, caplog):
    """The SDKs say only "Connection error."; the cause they wrap names what went wrong."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with fake_llm_server("openai") as server:
        agent = LLMAgent(llm_config(server, base_url=f"http://127.0.0.1:{port}/v1", api_retries=0))
    agent.check({})
    assert agent.propose(make_context()) is None
    assert "Connection refused" in agent.stop_reason()
    assert "did not answer: Connection error. ([Errno 111] Connection refused)" in caplog.text


@pytest.mark.parametrize("code", [401, 404, 400])
def test_a_refusal_mid_night_stops_proposing_so_the_experiment_training_ends_recorded(code, llm_config):
    """A key revoked, a model withdrawn or a prompt too long, met by the proposal asked while an
    experiment trains (pipelining): it raised, and `nightlab run` exited with that experiment
    left `running` in the ledger. Now the agent stops (failed), the loop records the experiment
    in flight and ends with the one line; no lesson is asked of the API after it failed."""
    with fake_llm_server("openai", [Answer(GOOD), Status(code, "no")]) as server:
        agent = LLMAgent(llm_config(server))
        first = agent.propose(make_context())
        assert agent.propose(make_context()) is None
        agent.observe(make_entry(1, first.description, meta=dict(first.meta), decision="keep"))
        assert agent.final_lessons() == {}
    assert agent.failed() and f"(HTTP {code})" in agent.stop_reason()
    assert "\n" not in agent.stop_reason() and len(server.requests) == 2


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_refusal_that_echoes_the_key_never_shows_it(protocol, llm_config, monkeypatch, caplog):
    """A proxy or local server whose 4xx message quotes the request's key put the key in the stop
    line, the log and the night's summary."""
    token = "local-vllm-token-42"  # not shaped like any known credential: only its value tells
    with fake_llm_server(protocol, [Status(422, f"bad request from key {token}")]) as server:
        config = llm_config(server)
        monkeypatch.setenv(config.api_key_env, token)
        agent = LLMAgent(config)
        assert agent.propose(make_context()) is None
    assert "(HTTP 422): bad request from key [redacted]" in agent.stop_reason()
    assert token not in agent.stop_reason() + caplog.text


def test_half_a_surrogate_pair_in_an_answer_is_replaced_not_a_traceback(llm_config):
    """JSON can carry a lone "\\ud83d" (an emoji cut in two): sending the answer back in the
    retry conversation raised UnicodeEncodeError out of `nightlab run` as a traceback."""
    spoiled = answer_text("emoji \ud83d", "x", block("train.py", "LR = 9  # no such line", "LR = 1"))
    raw = _openai_body({"content": spoiled})
    raw.body = raw.body.replace("\\\\ud83d", "\\ud83d")  # the escape as the server sent it
    assert "\\ud83d" in raw.body
    with fake_llm_server("openai", [raw, Answer(GOOD)]) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context())
    assert proposal is not None and proposal.description == "raise LR 0.01 -> 0.03"
    assert "emoji \ufffd" in json.dumps(server.requests[1].body, ensure_ascii=False)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_an_error_in_a_200_body_is_retried_and_quoted(protocol, llm_config):
    """OpenRouter and LiteLLM can answer HTTP 200 with {"error": {...}} for an upstream failure:
    retried like a 5xx, and the stop line quotes what it said, not only "no choices"."""
    body = Raw(json.dumps({"error": {"message": "Upstream provider timed out", "code": 502}}))
    with fake_llm_server(protocol, [body, Answer(GOOD)]) as server:
        assert LLMAgent(llm_config(server)).propose(make_context()).description == "raise LR 0.01 -> 0.03"
    with fake_llm_server(protocol, lambda request: body) as server:
        agent = LLMAgent(llm_config(server, api_retries=1))
        assert agent.propose(make_context()) is None
    assert "answered without a message: no " in agent.stop_reason()
    assert "; it says 'Upstream provider timed out')" in agent.stop_reason()


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_server_that_trickles_bytes_is_given_up_at_request_timeout(protocol, llm_config):
    """The SDKs' timeouts bound each read: a body that trickles in (a keep-alive, a server stuck
    half-way) held the request, and the night, for as long as the server kept on."""
    with fake_llm_server(protocol, [Trickle(30), Answer(GOOD)]) as server:
        agent = LLMAgent(llm_config(server, request_timeout=0.5))
        started = time.monotonic()
        proposal = agent.propose(make_context())
    assert time.monotonic() - started < 5
    assert proposal is not None and proposal.description == "raise LR 0.01 -> 0.03"  # retried


@pytest.mark.parametrize(
    "value", ["sk-proj-AbC123xyz789longsecretvalue", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"]
)
def test_a_key_written_into_api_key_env_itself_is_refused_without_echoing_it(value):
    """`api_key_env = "sk-..."` (the key, not the variable's name) was echoed whole in the error:
    "the environment variable sk-... is not set; export sk-...=...", on the terminal and in logs."""
    with pytest.raises(UserError) as caught:
        LLMAgent(LLMSettings(provider="openai", model="gpt-4o", api_key_env=value))
    assert "api_key_env must be the NAME of an environment variable" in str(caught.value)
    assert value[6:] not in str(caught.value)


def test_a_server_named_by_the_sdks_base_url_variable_is_the_one_messages_name(llm_config, monkeypatch):
    """With $OPENAI_BASE_URL exported (for another tool) and no base_url, the SDK went there while
    every message said "via OpenAI": a local server's outage read as OpenAI's."""
    with fake_llm_server("openai", lambda request: Status(503)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        agent = LLMAgent(llm_config(server, base_url=None, api_retries=0))
        assert agent.propose(make_context()) is None
    assert agent.stop_reason().startswith(f"fake-model via {server.base_url}: gave up")
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000/v1")
    with pytest.raises(UserError, match=r"^\$OPENAI_BASE_URL \(no \[agent\] base_url\) = \"localhost"):
        LLMAgent(llm_config(server, base_url=None))


def _sse(*events: dict | str) -> Raw:
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    return Raw("".join(lines), content_type="text/event-stream")


def _openai_chunks(text: str, finish: str | None = "stop") -> list[dict]:
    half = len(text) // 2
    chunks = [{"choices": [{"index": 0, "delta": {"content": part}}]} for part in (text[:half], text[half:])]
    chunks[-1]["choices"][0]["finish_reason"] = finish
    return [*chunks, {"choices": [], "usage": {"prompt_tokens": 700, "completion_tokens": 90}}]


STREAMS = {
    "openai": _sse(*_openai_chunks(GOOD), "[DONE]"),
    "anthropic": _sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 700, "output_tokens": 1}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": GOOD[:50]}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": GOOD[50:]}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 90}},
        {"type": "message_stop"},
    ),
}


@pytest.mark.parametrize("protocol", sorted(STREAMS))
def test_an_answer_streamed_unasked_is_read_and_one_cut_off_is_retried(protocol, llm_config):
    """A server or proxy that streams whatever it is asked: its answer was taken for a body that
    is not JSON, retried (it streamed again) until the night stopped."""
    with fake_llm_server(protocol, [STREAMS[protocol]]) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context())
    assert proposal is not None and proposal.description == "raise LR 0.01 -> 0.03"
    assert (proposal.cost.tokens_in, proposal.cost.tokens_out) == (700, 90)
    cut = _sse(*_openai_chunks(GOOD, finish=None)[:1])  # no end: the connection dropped
    with fake_llm_server("openai", [cut, Answer(GOOD)]) as server:
        assert LLMAgent(llm_config(server)).propose(make_context()).cost.attempts == 1
    assert len(server.requests) == 2  # the cut stream was retried like a dropped connection


def _body_with_bytes(protocol: str, text: str, bad: bytes) -> Raw:
    """A well-formed answer carrying ``text`` whose first "LR" is preceded by ``bad`` raw bytes."""
    if protocol == "openai":
        message = {"role": "assistant", "content": "TEXT"}
        body = {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
    else:
        body = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "TEXT"}]}
        body.update(stop_reason="end_turn", usage={"input_tokens": 3, "output_tokens": 4})
    escaped = json.dumps(text)[1:-1].encode().replace(b"LR", bad + b"LR", 1)
    return Raw(json.dumps(body).encode().replace(b"TEXT", escaped))


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_an_answer_that_is_not_utf8_is_read_once_not_retried_as_not_json(protocol, llm_config, caplog):
    """A local server that cut a character between two tokens sent JSON with a stray byte: it
    was called "not JSON" (quoting a JSON body) and retried until the agent stopped."""
    with fake_llm_server(protocol, lambda request: _body_with_bytes(protocol, GOOD, b"\xf0\x9f")) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context())
    assert len(server.requests) == 1
    assert proposal is not None and proposal.refused is None and proposal.edits
    assert proposal.description == "raise \ufffdLR 0.01 -> 0.03"
    said = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(
        f"the API at {server.base_url} answered with text that is not UTF-8 (byte 0xf0 at offset "
    )
    assert said[0].endswith("): read with U+FFFD in place of the bad bytes")


def test_a_body_that_is_neither_utf8_nor_json_is_named_so(llm_config):
    with fake_llm_server("openai", lambda request: Raw(b"<html>\xff</html>")) as server:
        agent = LLMAgent(llm_config(server, api_retries=1))
        assert agent.propose(make_context()) is None
    assert (
        f"the API at {server.base_url} answered with something that is neither UTF-8 text "
        "(byte 0xff at offset 6) nor JSON: '<html>\ufffd</html>'"
    ) in agent.stop_reason()


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_an_answer_of_reasoning_only_is_told_to_the_model_not_retried_as_a_server_failure(finish, llm_config):
    """vLLM, DeepSeek and Ollama put a reasoning model's thinking in `reasoning_content`; an
    answer with only that (content null) was retried as "answered without a message" until the
    agent stopped, the model never told; one that spent the output limit thinking was told to
    "answer more briefly, with fewer or smaller blocks"."""
    thought = _openai_body({"content": None, "reasoning_content": "LR looks low..."}, finish)
    with fake_llm_server("openai", [thought, Answer(GOOD)]) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context())
    assert proposal is not None and proposal.description == "raise LR 0.01 -> 0.03"
    feedback = server.requests[1].last_user_text
    assert "your answer held only reasoning and no text: after thinking, write the answer itself" in feedback
    assert ("the reasoning used all 4096 output tokens ([agent] max_output_tokens)" in feedback) == (
        finish == "length"
    )


def test_an_anthropic_answer_of_thinking_blocks_only_is_told_to_the_model(llm_config):
    body = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}],
    }
    body.update(stop_reason="end_turn", usage={"input_tokens": 3, "output_tokens": 4})
    with fake_llm_server("anthropic", [Raw(json.dumps(body)), Answer(GOOD)]) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context())
    assert proposal is not None and proposal.refused is None
    assert "your answer held only reasoning and no text" in server.requests[1].last_user_text


def test_a_refusal_quoting_escape_sequences_is_printed_without_them(llm_config):
    """A server's error message was quoted raw in the refusal line printed at once ("llm agent
    stops: ..."): its escape sequences cleared the screen and set the window title."""
    with fake_llm_server("openai", lambda request: Status(400, "bad \x1b[2J\x1b]0;T\x07 input")) as server:
        agent = LLMAgent(llm_config(server))
        assert agent.propose(make_context()) is None
    assert "refused the request (HTTP 400): bad  input;" in agent.stop_reason()


def test_a_used_up_quota_stops_at_once_instead_of_being_retried_as_a_rate_limit(llm_config):
    """OpenAI answers a key without credit with HTTP 429 `insufficient_quota`: it was retried as a
    rate limit, minutes of backoff, then "gave up after 6 attempts (RateLimitError: HTTP 429)"."""
    error = {
        "message": "You exceeded your current quota.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
    with fake_llm_server("openai", lambda request: Raw(json.dumps({"error": error}), code=429)) as server:
        agent = LLMAgent(llm_config(server))
        assert agent.propose(make_context()) is None
    assert len(server.requests) == 1
    assert agent.stop_reason() == (
        f"the API at {server.base_url} says the quota of the key in $NIGHTLAB_TEST_LLM_KEY is used up "
        "(HTTP 429): You exceeded your current quota."
    )


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_an_editable_file_that_is_not_utf8_is_sent_escaped_and_edited_elsewhere(protocol, llm_config):
    """A Latin-1 train.py (with its coding line) reaches the agent with its byte as a lone
    surrogate: the SDKs raised UnicodeEncodeError building the request (a traceback, the night
    over), and an edit elsewhere in the file was refused as "not valid Python"."""
    from agent_kit import TRAIN

    latin = "# -*- coding: latin-1 -*-\n" + TRAIN.replace("# learning rate", "# caf\udce9 learning rate")
    with fake_llm_server(protocol, [Answer(WIDER)]) as server:
        proposal = LLMAgent(llm_config(server)).propose(make_context(files={"train.py": latin}))
    assert "caf\\xe9 learning rate" in server.requests[0].last_user_text
    assert proposal is not None and proposal.refused is None
    assert proposal.edits and proposal.description == "WIDTH 64 -> 128"
