"""``[agent.llm]``: which model, how to reach it, and what it may spend.

Reaching it is checked here before anything trains: a ``base_url`` that is no http(s) address
and a key that cannot go into an HTTP header would otherwise fail every request as a
"connection error", retried for minutes after the baseline, naming neither.
"""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from nightlab.errors import UserError
from nightlab.plugins import Settings
from nightlab.secrets import redact

DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# Where each SDK looks for a server when it is given no base_url.
BASE_URL_ENV = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LLMSettings(Settings):
    provider: Literal["openai", "anthropic"] | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float = Field(default=0.7, ge=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    max_total_tokens: int | None = Field(default=None, gt=0)
    max_cost: float | None = Field(default=None, ge=0)
    prices: dict[str, list[float]] = Field(default_factory=dict)
    context_chars: int = Field(default=60000, gt=1000)
    retries: int = Field(default=3, ge=0)
    # Transient API failures (429, 5xx, timeouts) are retried this many times, first waiting
    # `backoff` seconds (doubling); one request may take `request_timeout` seconds.
    api_retries: int = Field(default=6, ge=0)
    backoff: float = Field(default=2.0, ge=0)
    request_timeout: float = Field(default=300, gt=0)
    # Ask the model for a one-line lesson after each of its experiments.
    lessons: bool = True


def read_api_key(config: LLMSettings) -> str:
    """The key from the environment variable named by ``api_key_env`` (or the provider's default).

    A local server (``base_url`` set, no ``api_key_env``) needs no key, so a placeholder is used.
    """
    provider = config.provider or "openai"
    name = config.api_key_env or DEFAULT_KEY_ENV[provider]
    if not _VARIABLE_NAME.fullmatch(name) or redact(name, []) != name:  # the key itself: never echo it
        raise UserError(
            "nightlab.toml: [agent] api_key_env must be the NAME of an environment variable (letters, "
            f'digits and _, e.g. "{DEFAULT_KEY_ENV[provider]}"), not the key: export the key in that '
            "variable and take it out of nightlab.toml"
        )
    value = os.environ.get(name, "").strip()  # a pasted key often brings a space or newline
    if value:
        bad = next((i for i, c in enumerate(value) if not (c.isascii() and c.isprintable())), None)
        if bad is not None:  # it cannot go into an HTTP header: every request would fail
            raise UserError(
                f"nightlab.toml: [agent] api_key_env: ${name} holds a character no API key has (a "
                f"non-ASCII or control character at position {bad + 1}); export {name} again"
            )
        return value
    if config.api_key_env is None and config.base_url:
        return "no-key"
    raise UserError(
        f"nightlab.toml: [agent] api_key_env: the environment variable {name} is not set; "
        f"export {name}=... before `nightlab run`"
    )


def checked_base_url(base_url: str | None, where: str = "nightlab.toml: [agent] base_url") -> str | None:
    """``base_url`` without surrounding spaces, or a UserError when it is no http(s) address
    with a host (``localhost:8000/v1`` without ``http://``, a port out of range)."""
    if base_url is None:
        return None
    url = base_url.strip()
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise UserError(
            f'{where} = "{url[:80]}" is not an http(s) address with a host; '
            'write it whole, e.g. base_url = "http://localhost:8000/v1"'
        )
    return url
