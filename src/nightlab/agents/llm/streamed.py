"""An answer a server streamed although nightlab asked for one whole (``stream`` is never set).

Some OpenAI-compatible servers and proxies stream whatever they are asked; the SDKs then hand
back the raw ``text/event-stream`` body. Its ``data:`` lines carry the answer in pieces:
``choices[0].delta.content`` (OpenAI's chunks) or ``content_block_delta`` events (Anthropic's).
Joined, they are the answer the model gave, so the night goes on instead of retrying a server
that will only stream again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class Streamed:
    """The pieces of a streamed answer, joined."""

    text: str
    tokens_in: int
    tokens_out: int
    truncated: bool
    complete: bool  # the stream said it ended ([DONE], a finish or stop reason)


def read_stream(body: str) -> Streamed | None:
    """The answer in an event-stream body, or None when ``body`` is no such stream."""
    if not body.lstrip().startswith(("data:", "event:", ":")):
        return None
    pieces: list[str] = []
    tokens_in = tokens_out = 0
    truncated = complete = False
    for line in body.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            complete = True
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(event, dict):
            continue
        usage = event.get("usage") or (event.get("message") or {}).get("usage") or {}
        if isinstance(usage, dict):
            tokens_in = int(usage.get("prompt_tokens") or usage.get("input_tokens") or tokens_in)
            tokens_out = int(usage.get("completion_tokens") or usage.get("output_tokens") or tokens_out)
        for choice in event.get("choices") or []:  # OpenAI's chunks
            delta = choice.get("delta") or {}
            pieces.append(str(delta.get("content") or ""))
            if choice.get("finish_reason"):
                complete = True
                truncated = choice["finish_reason"] == "length"
        kind = event.get("type")
        if kind == "content_block_delta":  # Anthropic's events
            pieces.append(str((event.get("delta") or {}).get("text") or ""))
        elif kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            complete = complete or bool(reason)
            truncated = truncated or reason == "max_tokens"
    return Streamed("".join(pieces), tokens_in, tokens_out, truncated, complete)
