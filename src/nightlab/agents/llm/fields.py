"""The parts of a chat response, whatever shape the server gave them, and text fit to send.

The SDKs build their models from a body, but keep what their types do not describe (content as a
list of parts, a usage block with strings) as plain values, and a body they could not decode at
all reaches nightlab as a plain dict; these read any of them the same way.
"""

from __future__ import annotations

from typing import Any


def token_count(value: object) -> int:
    """A token count as the usage block gives it; 0 for one it leaves out or garbles."""
    try:
        return max(0, int(value or 0))  # type: ignore[call-overload]  # checked right here
    except (TypeError, ValueError):
        return 0


def field(item: object, name: str) -> Any:  # whatever the response holds there
    """A field of a response part, whether the SDK built its model or left a plain dict (a shape
    its types do not describe, such as a list where they expect a string)."""
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def text_of(content: object) -> str | None:
    """A message's content as text: a string, or the text parts of a list of content parts (some
    OpenAI-compatible servers answer so, and Anthropic always does); other parts (thinking, a
    tool call) carry no answer text."""
    if content is None:
        return None
    if isinstance(content, list):
        content = "".join(p if isinstance(p, str) else str(field(p, "text") or "") for p in content)
    # JSON may carry half of a surrogate pair ("\\ud83d", an emoji cut by the token limit): as a
    # lone surrogate it could be neither written to a file nor sent back in the conversation.
    return str(content).encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def tool_names(calls: list[Any]) -> tuple[str, ...]:
    """The names of the tools in OpenAI ``tool_calls`` (or a legacy ``function_call``) or
    Anthropic ``tool_use`` blocks."""
    names = []
    for call in calls:
        function = field(call, "function")
        names.append(str(field(function, "name") if function is not None else field(call, "name"))[:60])
    return tuple(names)


def sendable(text: str) -> str:
    """``text`` with each byte that git handed over as a lone surrogate shown as ``\\xNN``."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def error_code(exc: Exception) -> str:
    """The ``code`` (or ``type``) of the error body a server sent, or ""."""
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        return ""
    return str(inner.get("code") or inner.get("type") or "")
