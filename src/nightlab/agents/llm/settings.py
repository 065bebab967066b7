"""``[agent.llm]``: which model, how to reach it, and what it may spend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nightlab.plugins import Settings


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
