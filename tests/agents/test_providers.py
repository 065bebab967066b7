"""Providers through the official SDKs against loopback servers: retries, fatal errors, prices.

The SDKs' own retries are off (max_retries=0), so every retry counted here is ours.
"""

from __future__ import annotations

import time

import pytest
from agent_kit import KEY, KEY_ENV
from fake_servers import Answer, Hang, Raw, Status, fake_llm_server

from nightlab.agents.llm.providers import (
    ProviderUnavailable,
    RetryPolicy,
    _retry_after,
    cost_usd,
    make_model,
    price_for,
)
from nightlab.agents.llm.settings import LLMSettings
from nightlab.errors import UserError

PROTOCOLS = ["openai", "anthropic"]
FAST = RetryPolicy(attempts=4, backoff=0.01, max_wait=5, timeout=5)


def ask(model, text: str = "hi"):
    return model.complete("you are a test", [{"role": "user", "content": text}], 64)


def gaps(server) -> list[float]:
    times = [r.time for r in server.requests]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_round_trip_carries_text_usage_and_the_request_fields(protocol, llm_config):
    with fake_llm_server(
        protocol, [Answer("hello there", tokens_in=321, tokens_out=54)], api_key=KEY
    ) as server:
        reply = ask(make_model(llm_config(server), FAST), "what now?")
    assert (reply.text, reply.tokens_in, reply.tokens_out) == ("hello there", 321, 54)
    [request] = server.requests
    assert request.body["model"] == "fake-model"
    assert request.last_user_text == "what now?"
    if protocol == "openai":
        assert request.path == "/v1/chat/completions"
        assert request.messages[0] == {"role": "system", "content": "you are a test"}
        assert request.body["max_tokens"] == 64
    else:
        assert request.path == "/v1/messages"
        assert request.body["system"] == "you are a test"
        assert request.body["max_tokens"] == 64


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_429_waits_as_long_as_retry_after_says(protocol, llm_config):
    script = [Status(429, "slow down", headers={"Retry-After": "1"}), Answer("ok")]
    with fake_llm_server(protocol, script) as server:
        assert ask(make_model(llm_config(server), FAST)).text == "ok"
    [gap] = gaps(server)
    # Our own backoff would be 0.01 s: the wait comes from the header.
    assert 0.95 <= gap < 2.5


def test_retry_after_ms_is_preferred_and_honoured(llm_config):
    script = [Status(429, headers={"retry-after-ms": "400", "Retry-After": "30"}), Answer("ok")]
    with fake_llm_server("openai", script) as server:
        assert ask(make_model(llm_config(server), FAST)).text == "ok"
    [gap] = gaps(server)
    assert 0.38 <= gap < 2.0


def test_retry_after_beyond_max_wait_is_capped(llm_config):
    policy = RetryPolicy(attempts=2, backoff=0.01, max_wait=0.2, timeout=5)
    with fake_llm_server("openai", [Status(429, headers={"Retry-After": "3600"}), Answer("ok")]) as server:
        assert ask(make_model(llm_config(server), policy)).text == "ok"
    assert gaps(server)[0] < 1.5


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("code", [500, 502, 503, 529])
def test_server_errors_are_retried_then_succeed(protocol, code, llm_config):
    with fake_llm_server(protocol, [Status(code), Status(code), Answer("fine")]) as server:
        assert ask(make_model(llm_config(server), FAST)).text == "fine"
    assert len(server.requests) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_hung_response_times_out_and_is_retried(protocol, llm_config):
    policy = RetryPolicy(attempts=3, backoff=0.01, timeout=0.5)
    with fake_llm_server(protocol, [Hang(20), Answer("after the hang")]) as server:
        start = time.monotonic()
        assert ask(make_model(llm_config(server), policy)).text == "after the hang"
        elapsed = time.monotonic() - start
    assert len(server.requests) == 2
    assert 0.45 <= gaps(server)[0] < 3  # the client waited for its timeout, not the 20 s hang
    assert elapsed < 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_dropped_connection_is_retried(protocol, llm_config):
    with fake_llm_server(protocol, [Hang(0), Answer("back")]) as server:
        assert ask(make_model(llm_config(server), FAST)).text == "back"
    assert len(server.requests) == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_persistent_failure_gives_up_after_the_policy(protocol, llm_config):
    with fake_llm_server(protocol, [Status(500)] * 10) as server:
        with pytest.raises(ProviderUnavailable, match="gave up after 4 attempts"):
            ask(make_model(llm_config(server), FAST))
    assert len(server.requests) == 4


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sdk_retries_are_off_so_the_config_decides(protocol, llm_config):
    with fake_llm_server(protocol, [Status(500)] * 5) as server:
        with pytest.raises(ProviderUnavailable):
            ask(make_model(llm_config(server, api_retries=0)))
    assert len(server.requests) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_key_stops_at_once_with_one_line_that_never_shows_the_key(protocol, llm_config, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-12345")
    with fake_llm_server(protocol, [Answer("never")], api_key=KEY) as server:
        with pytest.raises(UserError) as caught:
            ask(make_model(llm_config(server), FAST))
    message = str(caught.value)
    assert "\n" not in message
    assert f"${KEY_ENV}" in message and "401" in message
    assert "sk-wrong-key-12345" not in message and KEY not in message
    assert len(server.requests) == 1  # no retry: waiting does not fix a key


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forbidden_is_fatal_too(protocol, llm_config):
    with fake_llm_server(protocol, [Status(403, "no access")]) as server:
        with pytest.raises(UserError, match="403"):
            ask(make_model(llm_config(server), FAST))
    assert len(server.requests) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unknown_model_stops_with_its_name(protocol, llm_config):
    with fake_llm_server(protocol, [Answer("never")], models=["real-model"]) as server:
        with pytest.raises(UserError, match="model 'fake-model' is not served") as caught:
            ask(make_model(llm_config(server), FAST))
    assert "\n" not in str(caught.value)
    assert len(server.requests) == 1


NOT_JSON = [
    Raw("<html>not json"),  # declared JSON, is not
    Raw("<html><body>502 Bad Gateway</body></html>", content_type="text/html"),  # a proxy's page
    Raw(b"\x80 not even text"),  # not UTF-8
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("body", NOT_JSON, ids=["json-typed", "html-typed", "bytes"])
def test_a_200_that_is_not_json_is_retried_like_a_server_error(protocol, body, llm_config, caplog):
    with fake_llm_server(protocol, [body, Answer("fine")]) as server:
        assert ask(make_model(llm_config(server), FAST)).text == "fine"
    assert len(server.requests) == 2
    [warning] = [r.getMessage() for r in caplog.records if "retry 1/" in r.getMessage()]
    said = (
        "neither UTF-8 text (byte 0x80 at offset 0) nor JSON" if isinstance(body.body, bytes) else "not JSON"
    )
    assert f"the API at {server.base_url} answered with something that is {said}: '" in warning


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_server_that_only_answers_garbage_gives_up_with_one_line_quoting_it(protocol, llm_config):
    with fake_llm_server(protocol, lambda request: Raw("<html>not json")) as server:
        with pytest.raises(ProviderUnavailable) as caught:
            ask(make_model(llm_config(server), FAST))
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith(
        f"gave up after 4 attempts (BadResponse: the API at {server.base_url} answered with "
        "something that is not JSON: '<html>not json')"
    )
    assert len(server.requests) == 4


def test_a_long_page_is_shortened_and_an_echoed_key_never_shown(llm_config):
    def echo(request) -> Raw:
        return Raw(f"<html>\n  your key {request.headers['authorization']} " + "x" * 500, "text/html")

    with fake_llm_server("openai", echo) as server:
        with pytest.raises(ProviderUnavailable) as caught:
            ask(make_model(llm_config(server), FAST))
    message = str(caught.value)
    assert KEY not in message
    assert "not JSON: '<html> your key Bearer [redacted] xxx" in message and "...')" in message
    assert len(message) < 300


NO_MESSAGE = {
    "openai": [
        ("{}", "no choices"),
        ('{"id": "x", "object": "chat.completion", "choices": []}', "no choices"),
        ('{"choices": [{"index": 0, "finish_reason": "stop"}]}', "its choice has no message"),
        (
            '{"choices": [{"index": 0, "finish_reason": "stop", '
            '"message": {"role": "assistant", "content": null}}]}',
            "its message has no content",
        ),
        ("null", "the body is null, not a JSON object"),
        ("[]", "the body is [], not a JSON object"),
    ],
    "anthropic": [
        ("{}", "no content"),
        ('{"type": "message", "content": [], "stop_reason": "end_turn"}', "no content"),
        ('{"type": "message", "content": null}', "no content"),
        ('{"type": "message", "content": "hi"}', "its content is not a list"),
    ],
}


@pytest.mark.parametrize(
    ("protocol", "body", "what"),
    [(protocol, body, what) for protocol, cases in NO_MESSAGE.items() for body, what in cases],
)
def test_json_without_a_message_is_a_server_error_not_an_empty_answer(protocol, body, what, llm_config):
    with fake_llm_server(protocol, [Raw(body), Answer("fine")]) as server:
        assert ask(make_model(llm_config(server), FAST)).text == "fine"
    with fake_llm_server(protocol, lambda request: Raw(body)) as server:
        with pytest.raises(ProviderUnavailable) as caught:
            ask(make_model(llm_config(server), FAST))
    assert f"the API at {server.base_url} answered without a message: {what})" in str(caught.value)
    assert len(server.requests) == 4


@pytest.mark.parametrize(
    ("protocol", "body"),
    [
        (
            "openai",
            '{"choices": [{"index": 0, "finish_reason": "length", '
            '"message": {"role": "assistant", "content": null}}], '
            '"usage": {"prompt_tokens": 7, "completion_tokens": 64}}',
        ),
        (
            "anthropic",
            '{"type": "message", "content": [], "stop_reason": "max_tokens", '
            '"usage": {"input_tokens": 7, "output_tokens": 64}}',
        ),
    ],
)
def test_nothing_said_within_the_output_limit_is_still_the_models_answer(protocol, body, llm_config):
    # A reasoning model can spend its whole limit thinking: billed, and the agent tells it so.
    with fake_llm_server(protocol, [Raw(body)]) as server:
        reply = ask(make_model(llm_config(server), FAST))
    assert (reply.text, reply.truncated, reply.tokens_in, reply.tokens_out) == ("", True, 7, 64)
    assert len(server.requests) == 1


def test_a_missing_key_variable_names_the_variable(monkeypatch):
    monkeypatch.delenv("NIGHTLAB_NO_SUCH_KEY", raising=False)
    config = LLMSettings(provider="openai", model="gpt-4o", api_key_env="NIGHTLAB_NO_SUCH_KEY")
    with pytest.raises(UserError, match="NIGHTLAB_NO_SUCH_KEY is not set"):
        make_model(config)


def test_a_local_server_needs_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with fake_llm_server("openai", [Answer("local")]) as server:
        config = LLMSettings(provider="openai", model="qwen", base_url=server.base_url)
        assert ask(make_model(config, FAST)).text == "local"


def test_a_model_is_required():
    with pytest.raises(UserError, match=r"\[agent\] model is required"):
        make_model(LLMSettings(provider="openai"))


def test_prices_match_names_and_dated_snapshots_only_and_user_overrides_win():
    assert price_for("gpt-4o-2024-08-06") == (2.50, 10.00)
    assert price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert price_for("claude-haiku-4-5-20251001") == (1.00, 5.00)
    # A neighbour is not a snapshot: no guessed price for a model we do not know.
    assert price_for("gpt-5.5") is None and price_for("claude-opus-4-7") is None
    assert price_for("my-local-model") is None
    assert price_for("gpt-4o", {"gpt-4o": [1.0, 3.0]}) == (1.0, 3.0)
    assert price_for("gpt-5.5", {"gpt-5.5": [2.0, 12.0]}) == (2.0, 12.0)
    assert cost_usd("gpt-4o", 1_000_000, 500_000) == pytest.approx(2.50 + 5.00)
    assert cost_usd("fake", 2000, 1000, {"fake": [1.0, 2.0]}) == pytest.approx(0.002 + 0.002)
    assert cost_usd("my-local-model", 10**6, 10**6) == 0.0
    with pytest.raises(UserError, match=r"prices.bad must be \[input"):
        price_for("bad", {"bad": [1.0]})


def test_a_refused_request_is_one_line_with_a_hint(llm_config):
    with fake_llm_server("openai", [Status(400, "maximum context length is 8192 tokens")]) as server:
        with pytest.raises(
            UserError, match=r"HTTP 400\): maximum context length.*lower \[agent\] context_chars"
        ):
            ask(make_model(llm_config(server), FAST))
    assert len(server.requests) == 1


def test_retry_after_reads_seconds_milliseconds_and_http_dates():
    import email.utils
    from types import SimpleNamespace

    def exc(headers: dict) -> Exception:
        error = Exception("x")
        error.response = SimpleNamespace(headers=headers)
        return error

    assert _retry_after(exc({"retry-after": "2.5"})) == 2.5
    assert _retry_after(exc({"retry-after-ms": "250"})) == 0.25
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= _retry_after(exc({"retry-after": in_a_minute})) <= 61
    assert _retry_after(exc({"retry-after": "soon"})) is None
    assert _retry_after(exc({})) is None
    assert _retry_after(Exception("no response")) is None
