"""Fixtures for the agent tests (shared helpers live in agent_kit.py)."""

from __future__ import annotations

import pytest
from agent_kit import KEY, KEY_ENV

from nightlab.agents.llm.settings import LLMSettings


@pytest.fixture
def llm_config(monkeypatch):
    """Build LLMSettings for a fake server: fast retries, a known key, a price for 'fake'."""
    monkeypatch.setenv(KEY_ENV, KEY)

    def build(server, **changes) -> LLMSettings:
        values = dict(
            provider=server.protocol,
            model="fake-model",
            base_url=server.base_url,
            api_key_env=KEY_ENV,
            api_retries=3,
            backoff=0.01,
            request_timeout=5,
            prices={"fake-model": [1.0, 2.0]},
        )
        values.update(changes)
        return LLMSettings(**values)

    return build
