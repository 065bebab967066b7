"""Chat models behind one call: OpenAI-compatible APIs and Anthropic, with our own retries.

Both official SDKs are used with their built-in retries switched off, so one policy applies to
every provider: transient failures (429, 5xx, timeouts, connection resets) are retried with
exponential backoff, honouring ``Retry-After``; so is an HTTP 200 that carries no answer (a
body that is not JSON, a completion without a message), since a proxy's error page or a server
half-way through a restart is as passing as a 503 and must never reach the model's answer
parser as if the model had said nothing; a bad key (401/403) or an unknown model (404)
stops the run with a one-line :class:`UserError`, because no amount of retrying fixes them.

Keys come from the environment variable named by ``api_key_env`` and live only inside the SDK
client: they never enter a log line, an error message or a proposal's meta.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from nightlab.agents.llm.fields import error_code as _error_code
from nightlab.agents.llm.fields import field as _field
from nightlab.agents.llm.fields import sendable as _sendable
from nightlab.agents.llm.fields import text_of as _text_of
from nightlab.agents.llm.fields import token_count as _count
from nightlab.agents.llm.fields import tool_names as _tool_names
from nightlab.agents.llm.prices import DEFAULT_PRICES, cost_usd, price_for
from nightlab.agents.llm.retries import (
    Overdue,
    ProviderUnavailable,
    RetryPolicy,
    _retry_after,
    _status_text,
    call_with_retries,
    within,
)
from nightlab.agents.llm.settings import (
    BASE_URL_ENV,
    DEFAULT_KEY_ENV,
    LLMSettings,
    checked_base_url,
    read_api_key,
)
from nightlab.agents.llm.streamed import read_stream
from nightlab.errors import UserError
from nightlab.formatting import terminal_safe
from nightlab.secrets import redact

log = logging.getLogger("nightlab.agents.llm.agent")

# Their homes are prices.py, retries.py and settings.py.
__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_PRICES",
    "ProviderUnavailable",
    "RetryPolicy",
    "_retry_after",
    "call_with_retries",
    "cost_usd",
    "price_for",
    "read_api_key",
]


@dataclass
class Reply:
    """One model answer and what it cost in tokens."""

    text: str
    tokens_in: int
    tokens_out: int
    truncated: bool = False  # stopped by the output limit, so the answer may be cut off
    # Tools the model called instead of answering in text (no tools are offered: it is a
    # spoiled answer for the conversation to correct, not a failure of the server).
    tool_calls: tuple[str, ...] = ()
    # Only reasoning came back (``reasoning_content``, thinking blocks): no answer text at all.
    reasoning_only: bool = False


class ProviderRefused(UserError):
    """The API refused a request in a way no retry changes (a rejected key, an unknown model, a
    request too large): one line for the user. The agent stops proposing on it, so the
    experiment that trains meanwhile (the next proposal is asked while it trains) still ends and
    is recorded before the night stops."""


class BadResponse(Exception):
    """A server answered (often HTTP 200) with something that is not a chat answer.

    Retried like a 5xx and reported like one when retries run out: it is the server's fault, so
    it must neither crash the run nor be recorded as an experiment the model spoiled.
    """


class ChatModel(Protocol):
    """A chat model: a system text and alternating user/assistant messages in, a reply out."""

    model: str

    def complete(self, system: str, messages: list[dict[str, str]], max_tokens: int) -> Reply: ...


def make_model(config: LLMSettings, retry: RetryPolicy | None = None) -> ChatModel:
    """The chat model ``[agent]`` describes (``provider``, ``model``, ``base_url``, ``api_key_env``)."""
    if not config.model:
        raise UserError('nightlab.toml: [agent] model is required for kind = "llm" (e.g. model = "gpt-4o")')
    provider = config.provider or "openai"
    policy = retry or RetryPolicy(
        attempts=config.api_retries + 1, timeout=config.request_timeout, backoff=config.backoff
    )
    # The SDKs read $OPENAI_BASE_URL / $ANTHROPIC_BASE_URL when given none: name that server in
    # every message (not "the OpenAI API"), and check it like a base_url of nightlab.toml.
    if config.base_url:
        base_url = checked_base_url(config.base_url)
    else:
        variable = BASE_URL_ENV[provider]
        base_url = checked_base_url(os.environ.get(variable) or None, f"${variable} (no [agent] base_url)")
    key = read_api_key(config)
    key_env = config.api_key_env or DEFAULT_KEY_ENV[provider]
    if provider == "anthropic":
        return AnthropicChat(config.model, key, base_url, config.temperature, policy, key_env)
    return OpenAIChat(config.model, key, base_url, config.temperature, policy, key_env)


def _fatal_message(
    provider: str, status: int | None, model: str, base_url: str | None, key_env: str
) -> str | None:
    where = base_url or f"the {provider} API"
    if status in (401, 403):
        return f"nightlab.toml: [agent] the key in ${key_env} was rejected by {where} (HTTP {status}); check api_key_env"
    if status == 404:
        return (
            f"nightlab.toml: [agent] model '{model}' is not served by {where} (HTTP 404); check model "
            f"and base_url{_prefix_hint(provider, base_url)}"
        )
    return None


def _other_prefix(sdk: str, base_url: str | None) -> str | None:
    """``base_url`` with ``/v1`` added (OpenAI-compatible) or taken off (Anthropic), when that is
    the usual mistake; None for the provider's own API."""
    if not base_url:
        return None
    url = base_url.rstrip("/")
    if sdk == "openai" and not url.endswith("/v1"):
        return url + "/v1"
    if sdk == "anthropic" and url.endswith("/v1"):
        return url.removesuffix("/v1")
    return None


def _prefix_hint(provider: str, base_url: str | None) -> str:
    other = _other_prefix(provider.lower(), base_url)
    if other is None:
        return ""
    wanted = "ends in /v1" if other.endswith("/v1") else "leaves out /v1"
    return f' ({provider}\'s base_url usually {wanted}: "{other}")'


class _SDKChat:
    """What both official SDKs share: their client without its own retries, our retry policy,
    and the same exception classes (timeouts, connection errors, 429, 5xx, other statuses).

    A subclass names its provider and SDK module, builds the client and makes one call.
    """

    provider = ""  # as error messages name it
    sdk = ""  # the module to import

    def __init__(
        self,
        model: str,
        api_key: str,
        base_url: str | None,
        temperature: float,
        retry: RetryPolicy,
        key_env: str = "",
    ) -> None:
        self._sdk = importlib.import_module(self.sdk)
        self.model = model
        self.base_url = base_url
        self.temperature = temperature
        self.retry = retry
        self.key_env = key_env or DEFAULT_KEY_ENV[self.sdk]
        self._client = self._sdk_client(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=retry.timeout
        )

    def _sdk_client(self, **options: object) -> Any:  # the SDK's own client type
        raise NotImplementedError

    def _call(self, system: str, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        raise NotImplementedError

    def complete(self, system: str, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        # The SDK's timeout bounds each read; the request as a whole gets a little more, so a
        # plain hang is still reported as the SDK's own timeout.
        deadline = self.retry.timeout * 1.2 + 0.1
        # A file that is not UTF-8 reaches the prompt with its bytes as lone surrogates (git's
        # surrogateescape), which no JSON request can carry (the SDKs raised UnicodeEncodeError,
        # a traceback): the model sees them as \\xe9 escapes instead.
        system = _sendable(system)
        messages = [{key: _sendable(value) for key, value in m.items()} for m in messages]
        return call_with_retries(
            lambda: within(deadline, lambda: self._checked_call(system, messages, max_tokens)),
            self._classify,
            self.retry,
            f"{self.model} via {self.base_url or self.provider}",
            ProviderRefused,
        )

    def check_key(self) -> None:
        """Refuse a rejected key before the night starts (a UserError), by listing the server's
        models: free, and served by OpenAI, Anthropic and the common local servers. Only a 401
        or 403 counts; any other answer (a server without the endpoint, one that is down for a
        moment) is left for the first proposal to meet, with its retries."""
        limit = min(self.retry.timeout, 15.0)
        try:
            within(limit * 1.2 + 0.1, lambda: self._client.with_options(timeout=limit).models.list())
        except self._sdk.APIStatusError as exc:
            status = getattr(exc, "status_code", None)
            if status in (401, 403):
                message = _fatal_message(self.provider, status, self.model, self.base_url, self.key_env)
                raise UserError(message or f"the key was rejected (HTTP {status})") from None
            if status == 404:
                self._check_prefix()
        except (self._sdk.APIConnectionError, Overdue) as exc:  # timeouts too; it may be back soon
            log.warning(
                "%s did not answer: %s; the first proposal will try again", self._where(), _status_text(exc)
            )
        except Exception as exc:  # noqa: BLE001 - anything else is the first proposal's to meet
            log.debug("key check skipped: %s", self._redacted(_brief(exc)))

    def _check_prefix(self) -> None:
        """A base_url with or without ``/v1`` the wrong way round (the SDKs disagree: OpenAI's
        includes it, Anthropic's leaves it out) finds no route. When the other form answers,
        say so now, before the baseline trains, rather than as an unknown model after it."""
        other = _other_prefix(self.sdk, self.base_url)
        if other is None:
            return
        try:
            self._client.with_options(base_url=other, timeout=min(self.retry.timeout, 15.0)).models.list()
        except self._sdk.APIStatusError as exc:
            if getattr(exc, "status_code", None) not in (401, 403):  # no route there either
                return
        raise UserError(
            f'nightlab.toml: [agent] base_url = "{self.base_url}" has no {self.provider} API (HTTP 404), '
            f'but "{other}" has: set base_url = "{other}"'
        )

    def _checked_call(self, system: str, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        """``_call``, with a body the SDK could not read turned into a :class:`BadResponse`.

        Both SDKs let ``json.JSONDecodeError`` escape on a JSON-typed body that is not JSON, hand
        back the raw text for a body of another type, and raise ``APIResponseValidationError``
        only under strict validation: all three mean the server sent no answer.
        """
        try:
            return self._call(system, messages, max_tokens)
        except json.JSONDecodeError as exc:
            raise BadResponse(self._not_json(exc.doc)) from None
        except UnicodeDecodeError as exc:
            return self._not_utf8(bytes(exc.object), exc.start)
        except self._sdk.APIResponseValidationError as exc:
            raise BadResponse(f"{self._where()} answered with an invalid response: {_brief(exc)}") from None

    def _reply(self, response: Any) -> Reply:
        raise NotImplementedError

    def _not_utf8(self, body: bytes, start: int) -> Reply:
        """A body that is not UTF-8 text (a local server that cut a character between two
        tokens): JSON with the bad bytes as U+FFFD is still the model's answer, said in one
        line; anything else is a :class:`BadResponse` that names the byte, not "not JSON"."""
        text = body.decode("utf-8", "replace")
        where = f"byte 0x{body[start]:02x} at offset {start}"
        try:
            data = json.loads(text)
        except ValueError:
            raise BadResponse(
                f"{self._where()} answered with something that is neither UTF-8 text ({where}) "
                f"nor JSON: {self._snippet(text)}"
            ) from None
        log.warning(
            "%s answered with text that is not UTF-8 (%s): read with U+FFFD in place of the bad bytes",
            self._where(),
            where,
        )
        return self._reply(self._parsed(data))

    def _where(self) -> str:
        return f"the API at {self.base_url}" if self.base_url else f"the {self.provider} API"

    def _not_json(self, body: str) -> str:
        return f"{self._where()} answered with something that is not JSON: {self._snippet(body)}"

    def _no_message(self, what: str, response: object = None) -> BadResponse:
        """The server's HTTP 200 carried no answer; an ``error`` it holds instead (OpenRouter and
        LiteLLM report an upstream failure so) is quoted, in short."""
        error = _field(response, "error") if response is not None else None
        said = _field(error, "message") if isinstance(error, dict) or hasattr(error, "message") else error
        note = f"; it says {self._snippet(str(said))}" if said else ""
        return BadResponse(f"{self._where()} answered without a message: {what}{note}")

    def _parsed(self, response: object) -> Any:  # the SDK's response model
        """The SDK's response, or a :class:`BadResponse` when it is no JSON object at all.

        The SDKs return a body of a non-JSON content type as its text, and ``null``, a list or
        a string as themselves: none of them carries an answer, except a streamed one
        (:mod:`~nightlab.agents.llm.streamed`), handed back as a :class:`Reply` when it ended.
        """
        if isinstance(response, str):
            streamed = read_stream(response)
            if streamed is None:
                raise BadResponse(self._not_json(response))
            if not streamed.complete:
                raise BadResponse(f"{self._where()} streamed an answer that stopped before its end")
            text = _text_of(streamed.text) or ""
            return Reply(text, streamed.tokens_in, streamed.tokens_out, streamed.truncated)
        if response is None or isinstance(response, (list, int, float, bool)):
            raise self._no_message(f"the body is {json.dumps(response)[:40]}, not a JSON object")
        return response

    def _snippet(self, body: str) -> str:
        """The start of a body on one line, quoted, with the key (or anything shaped like one)
        redacted should a server echo it."""
        text = self._redacted(" ".join(body.split()))
        return repr(text if len(text) <= 60 else text[:57] + "...")

    def _classify(self, exc: Exception) -> str | None:
        sdk = self._sdk
        if isinstance(exc, sdk.APIStatusError) and _error_code(exc) == "insufficient_quota":
            return self._redacted(
                _status_verdict(self.provider, exc, self.model, self.base_url, self.key_env) or ""
            )
        if isinstance(
            exc,
            (
                BadResponse,
                Overdue,
                sdk.APITimeoutError,
                sdk.APIConnectionError,
                sdk.RateLimitError,
                sdk.InternalServerError,
            ),
        ):
            return None
        if isinstance(exc, sdk.APIStatusError):  # its message quotes the server, which may echo the key
            verdict = _status_verdict(self.provider, exc, self.model, self.base_url, self.key_env)
            return None if verdict is None else self._redacted(verdict)
        raise exc

    def _redacted(self, text: str) -> str:
        """``text`` without the key (or anything shaped like one)."""
        return redact(text, [str(getattr(self._client, "api_key", "") or "")])


class OpenAIChat(_SDKChat):
    """Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp, OpenRouter)."""

    provider, sdk = "OpenAI", "openai"

    def _sdk_client(self, **options: object) -> Any:
        return self._sdk.OpenAI(**options)

    def _call(self, system: str, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        # OpenAI's own newer models accept only max_completion_tokens; local servers
        # (vLLM, Ollama, llama.cpp) have long known max_tokens.
        limit = {"max_tokens": max_tokens} if self.base_url else {"max_completion_tokens": max_tokens}
        response = self._parsed(
            self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": system}, *messages],
                temperature=self.temperature,
                **limit,
            )
        )
        return self._reply(response)

    def _reply(self, response: Any) -> Reply:
        """The answer in a chat completion (the SDK's model, or the plain dict of a body it could
        not decode)."""
        if isinstance(response, Reply):  # it was streamed
            return response
        choices = _field(response, "choices")
        if not choices:
            raise self._no_message("no choices", response)
        choice = choices[0]
        message = _field(choice, "message")
        if message is None:
            raise self._no_message("its choice has no message")
        truncated = _field(choice, "finish_reason") == "length"
        text = _text_of(_field(message, "content"))
        legacy = _field(message, "function_call")
        calls = _tool_names([*(_field(message, "tool_calls") or []), *([legacy] if legacy else [])])
        # Only reasoning (vLLM, DeepSeek, Ollama: `reasoning_content`, `reasoning`) is the model's
        # answer, one without text, for the conversation to correct: not a server's failure.
        thought = not (text or "").strip() and bool(
            _field(message, "reasoning_content") or _field(message, "reasoning")
        )
        # No content is still the model's answer when it spent its output limit (a reasoning
        # model that only thought), refused, or called a tool; otherwise the server left it out.
        if text is None and not truncated and not _field(message, "refusal") and not calls and not thought:
            raise self._no_message("its message has no content")
        usage = _field(response, "usage")
        return Reply(
            text=text or "",
            tokens_in=_count(_field(usage, "prompt_tokens")),
            tokens_out=_count(_field(usage, "completion_tokens")),
            truncated=truncated,
            tool_calls=calls,
            reasoning_only=thought,
        )


class AnthropicChat(_SDKChat):
    """Anthropic's messages API (or a compatible proxy at ``base_url``)."""

    provider, sdk = "Anthropic", "anthropic"

    def _sdk_client(self, **options: object) -> Any:
        client = self._sdk.Anthropic(**options)
        # Recent SDKs dropped `temperature` from messages.create (newer models fix it); send it
        # only where the installed SDK still takes it.
        takes_temperature = "temperature" in inspect.signature(client.messages.create).parameters
        self._sampling = {"temperature": min(self.temperature, 1.0)} if takes_temperature else {}
        return client

    def _call(self, system: str, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        response = self._parsed(
            self._client.messages.create(
                model=self.model, system=system, messages=messages, max_tokens=max_tokens, **self._sampling
            )
        )
        return self._reply(response)

    def _reply(self, response: Any) -> Reply:
        """The answer in a message (the SDK's model, or the plain dict of a body it could not
        decode)."""
        if isinstance(response, Reply):  # it was streamed
            return response
        content = _field(response, "content")
        truncated = _field(response, "stop_reason") == "max_tokens"
        # An empty list is the model's answer only when the output limit cut it off at once.
        if not isinstance(content, list) or (not content and not truncated):
            raise self._no_message("no content" if not content else "its content is not a list", response)
        usage = _field(response, "usage")
        return Reply(
            text=_text_of(content) or "",
            tokens_in=_count(_field(usage, "input_tokens")),
            tokens_out=_count(_field(usage, "output_tokens")),
            truncated=truncated,
            tool_calls=_tool_names([b for b in content if _field(b, "type") == "tool_use"]),
            reasoning_only=bool(content)
            and all(_field(b, "type") in ("thinking", "redacted_thinking") for b in content),
        )


def _status_verdict(
    provider: str, exc: Exception, model: str, base_url: str | None, key_env: str
) -> str | None:
    """None for a status worth retrying; otherwise the one-line message that stops the run."""
    status = int(getattr(exc, "status_code", 0) or 0)
    if status == 429 and _error_code(exc) == "insufficient_quota":  # OpenAI: no credit, not a rate
        where = f"the API at {base_url}" if base_url else f"the {provider} API"
        return f"{where} says the quota of the key in ${key_env} is used up (HTTP 429): {_brief(exc)}"
    if status in (408, 409, 429, 529) or status >= 500:
        return None
    return _fatal_message(provider, status, model, base_url, key_env) or _refused(model, status, _brief(exc))


def _refused(model: str, status: int, message: str) -> str:
    hint = (
        "; if the prompt is too long for the model, lower [agent] context_chars"
        if status in (400, 413)
        else ""
    )
    return f"nightlab.toml: [agent] model '{model}' refused the request (HTTP {status}): {message}{hint}"


def _brief(exc: Exception) -> str:
    """The server's error message, one line, without anything that could echo a key."""
    body = getattr(exc, "body", None)
    message = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = str(inner.get("message", ""))
    text = (message or str(exc)).splitlines()[0] if (message or str(exc)) else ""
    return terminal_safe(text[:200])  # printed: a server's escape sequences stay off the terminal
