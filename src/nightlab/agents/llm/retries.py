"""Retrying what passes: how long, how often, and how a server's ``Retry-After`` is honoured.

:func:`call_with_retries` runs one request under a :class:`RetryPolicy`; the provider says which
failures are transient (retried with exponential backoff and jitter, or exactly as long as the
server asks, capped) and which are fatal (raised at once as the provider's one-line error).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("nightlab.agents.llm.agent")

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """How long to keep trying a transient failure.

    ``attempts`` counts every try (the first included); ``backoff`` is the first wait in seconds,
    doubled each time up to ``max_wait``, which also caps a server's ``Retry-After``.
    """

    attempts: int = 6
    backoff: float = 2.0
    max_wait: float = 120.0
    timeout: float = 300.0


class ProviderUnavailable(Exception):
    """Transient failures outlasted the retry policy; the agent stops cleanly on this."""


def _retry_after(exc: Exception) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms``, ``retry-after`` seconds or date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def call_with_retries(
    call: Callable[[], T],
    classify: Callable[[Exception], str | None],
    policy: RetryPolicy,
    describe: str,
    refusal: type[Exception],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``; retry what ``classify`` calls transient, re-raise what it calls fatal.

    ``classify`` returns None for transient errors and a one-line message for fatal ones, raised
    as ``refusal``.
    """
    last = ""
    for attempt in range(policy.attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified right below
            fatal = classify(exc)
            if fatal is not None:
                raise refusal(fatal) from None
            last = f"{type(exc).__name__}: {_status_text(exc)}"
            if attempt + 1 >= policy.attempts:
                break
            asked = _retry_after(exc)
            wait = policy.backoff * (2**attempt) * (0.5 + random.random() / 2)
            if asked is not None:
                wait = asked
            wait = min(wait, policy.max_wait)
            log.warning(
                "%s: %s; retry %d/%d in %.1fs", describe, last, attempt + 1, policy.attempts - 1, wait
            )
            sleep(wait)
    raise ProviderUnavailable(f"{describe}: gave up after {policy.attempts} attempts ({last})")


def _status_text(exc: Exception) -> str:
    """The failure in a few words: its status, or the SDK's line plus the cause it wraps (the
    SDKs say only "Connection error." for a refused connection, a bad address or a reset)."""
    status = getattr(exc, "status_code", None)
    if status:
        return f"HTTP {status}"
    text = (str(exc).splitlines() or [""])[0][:200]
    cause = (str(exc.__cause__).splitlines() or [""])[0][:120] if exc.__cause__ else ""
    return f"{text} ({cause})" if cause and cause not in text else text


class Overdue(Exception):
    """A request outlived its whole deadline; retried like a timeout."""


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``, or :class:`Overdue` once ``seconds`` have passed without its end.

    The SDKs' timeouts bound each read, not the request: a server (or proxy) that trickles a byte
    now and then, as keep-alives do, held a request, and the night, for as long as it kept on.
    Neither SDK can cancel a read from another thread, so the call runs on a daemon thread that
    is left to end with its connection; the exit does not wait for it.
    """
    done = threading.Event()
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="nightlab-llm-attempt", daemon=True).start()
    if not done.wait(seconds):
        raise Overdue(f"no complete answer within {seconds:g} s ([agent] request_timeout)")
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]  # a BaseException, as the call raised it
    return value  # type: ignore[return-value]  # what call returned
