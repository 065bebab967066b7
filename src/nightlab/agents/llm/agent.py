"""The LLM researcher: a chat model reads the state of the research and proposes one experiment.

Each proposal is one short conversation. The model's answer is parsed and its edits applied to
the incumbent's files right here (with the same :func:`nightlab.code.edits.apply_edits` the loop
uses) and syntax-checked; when that fails, or when the result is a set of files already tried,
the error goes back to the model in the same conversation, up to ``[agent] retries`` times. A
proposal that reaches the loop therefore applies cleanly, unless retries ran out: then it is
``refused`` with the last error, for the loop to record as ``invalid``.

After an experiment of its own finishes, the agent asks the model for a one-line lesson. That
call is made at the start of the next :meth:`LLMAgent.propose`, which the loop runs in the
background while an experiment trains, so it never idles the hardware; the lessons come back
in that proposal's ``lessons`` (experiment id -> lesson) for the ledger.

Spending is tracked per proposal (its ``cost``: tokens in and out, dollars) and in total; when
``max_total_tokens`` or ``max_cost`` is reached, or the API stays unreachable after all
retries, :meth:`propose` returns None and :meth:`stop_reason` says why.

Ctrl-C or SIGTERM while a request is in flight (:meth:`LLMAgent.interrupt`): neither SDK can
cancel a read from another thread (closing the client does not end it), and the loop's desk
thread is one the interpreter waits for at exit, so the process would live until
``request_timeout`` ran out. Each request therefore runs on a daemon thread of its own, which
the exit does not wait for; the proposal waiting on it raises :class:`ProposalAbandoned` at
once, so nothing half-made reaches the ledger.

Example (a local vLLM server)::

    agent = LLMAgent(LLMSettings(provider="openai", model="Qwen/Qwen2.5-Coder-32B",
                                 base_url="http://localhost:8000/v1"))
    proposal = agent.propose(context)
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

from nightlab.agents.base import Agent
from nightlab.agents.llm.answer import ParsedAnswer, parse_answer, without_reasoning
from nightlab.agents.llm.fields import sendable
from nightlab.agents.llm.lessons import lesson_fact, parse_lessons
from nightlab.agents.llm.prompt import build_prompt
from nightlab.agents.llm.providers import (
    ChatModel,
    ProviderRefused,
    ProviderUnavailable,
    Reply,
    cost_usd,
    make_model,
    price_for,
)
from nightlab.agents.llm.settings import LLMSettings
from nightlab.code.changes import code_hash
from nightlab.errors import EditError, UserError
from nightlab.types import Context, HistoryEntry, Proposal, ProposalCost

log = logging.getLogger("nightlab.agents.llm.agent")

# Proposals in a row whose retries all failed before the agent gives up: a model that cannot
# follow the protocol five times running will not start to, and each round costs money.
MAX_FAILED_ROUNDS = 5
LESSON_TOKENS = 80
LESSONS_PER_CALL = 5


class ProposalAbandoned(Exception):
    """The proposal in progress was given up because nightlab is stopping (see interrupt)."""


@dataclass
class _Spend:
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    def add(self, other: _Spend) -> None:
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost_usd += other.cost_usd


class LLMAgent(Agent):
    """An :class:`~nightlab.agents.base.Agent` backed by a chat model; see the module docstring.

    Pipelined: the loop asks for the next proposal while the current experiment trains, so the
    model's latency does not idle the hardware.
    """

    name = "llm"
    pipelined = True

    def __init__(self, config: LLMSettings, model: ChatModel | None = None) -> None:
        self.config = config
        self.model = model if model is not None else make_model(config)
        self._model_name = config.model or getattr(self.model, "model", "")
        if config.max_cost is not None and price_for(self._model_name, config.prices) is None:
            raise UserError(
                f"nightlab.toml: [agent] max_cost needs a price for model '{self._model_name}': add "
                f'prices = {{ "{self._model_name}" = [input $/Mtok, output $/Mtok] }}'
            )
        if price_for(self._model_name, config.prices) is None:
            log.warning(
                "no price known for model '%s': its cost is recorded as $0 (right for a local server; "
                "otherwise set [agent] prices)",
                self._model_name,
            )
        self._lock = threading.Lock()  # guards the state below; never held during a model call
        self._propose_lock = threading.Lock()  # one proposal at a time
        self._seen: dict[str, str] = {}  # files hash -> what it was ("experiment #3 'raise LR'")
        # Ids of proposals made by this process and not yet observed: their spending is already
        # counted, and they are owed a lesson. Anything else observed comes from an earlier process.
        self._issued: set[str] = set()
        self._session = uuid.uuid4().hex[:8]
        self._count = 0
        self._awaiting_lesson: list[HistoryEntry] = []
        self._lessons: dict[int, str] = {}
        self._failed_rounds = 0
        self.spent = _Spend()
        self._unreturned = _Spend()  # spent in calls that returned no proposal (unreturned_cost)
        self._stop_reason: str | None = None
        self._failed = False  # the stop is the API's failure, not a cap
        self._interrupted = threading.Event()  # nightlab is stopping: abandon the request in flight
        self._waiting: threading.Event | None = None  # set to wake the wait for the request in flight

    # -- the Agent protocol -------------------------------------------------------------------

    def check(self, files: dict[str, str]) -> None:
        """Before the setup and the baseline: a key the server rejects stops the night now, not
        after the baseline has trained (minutes at the gpu size) and the first proposal is asked."""
        check_key = getattr(self.model, "check_key", None)
        if check_key is not None:  # the SDK models; a test's stand-in model has none
            check_key()

    def propose(self, context: Context) -> Proposal | None:
        """The next experiment, or None when a cap is reached or the API is gone (see stop_reason)."""
        with self._propose_lock:
            if self._stop_reason is not None:
                return None
            spend = _Spend()
            proposal: Proposal | None = None
            try:
                lessons = self._write_lessons(spend)
                proposal = self._converse(context, spend, lessons)
                return proposal
            except (ProviderUnavailable, ProviderRefused) as exc:
                self._stop(str(exc), failed=True)
                return None
            finally:
                if proposal is None:  # a returned proposal carries its spending itself
                    with self._lock:
                        self._unreturned.add(spend)

    def observe(self, entry: HistoryEntry) -> None:
        """Remember a finished experiment: its files hash (for duplicates), lesson and spending."""
        meta = entry.meta if isinstance(entry.meta, dict) else {}
        digest = meta.get("files_hash")
        with self._lock:
            if digest:
                self._seen[digest] = f"experiment #{entry.id} ('{entry.description}', {entry.decision})"
            if entry.lesson:
                self._lessons[entry.id] = entry.lesson
            if meta.get("proposal_id") in self._issued:
                self._issued.discard(meta["proposal_id"])
                if entry.status != "invalid":
                    self._failed_rounds = 0
                    # A skipped proposal (comment-only, say) never ran: nothing to learn from it.
                    if self.config.lessons and not entry.lesson and entry.status != "skipped":
                        self._awaiting_lesson.append(entry)
            else:
                # Spending recorded by an earlier process (a resumed run) still counts toward the caps.
                cost = entry.cost or {}
                self.spent.add(
                    _Spend(
                        int(cost.get("tokens_in", 0) or 0),
                        int(cost.get("tokens_out", 0) or 0),
                        float(cost.get("cost_usd", 0.0) or 0.0),
                    )
                )

    def interrupt(self) -> None:
        """nightlab is stopping (Ctrl-C, SIGTERM): the request in flight is abandoned at once, on
        whichever thread waits for it, and every later one is refused; the proposal in progress
        raises :class:`ProposalAbandoned` instead of returning. Spending already answered stays
        in :attr:`spent`."""
        self._interrupted.set()
        with self._lock:
            waiting = self._waiting
        if waiting is not None:
            waiting.set()

    # -- public helpers for the loop ----------------------------------------------------------

    @property
    def lessons(self) -> dict[int, str]:
        """Every lesson known so far, experiment id -> one line."""
        with self._lock:
            return dict(self._lessons)

    def stop_reason(self) -> str | None:
        """Why :meth:`propose` stopped proposing: a cap, or an API that stayed unreachable."""
        return self._stop_reason

    def final_lessons(self) -> dict[int, str]:
        """Write the lessons still owed (e.g. for the last experiment of a run) and return them."""
        with self._propose_lock:
            spend = _Spend()
            try:
                return self._write_lessons(spend)
            except ProviderUnavailable as exc:
                log.warning("no lessons written: %s", exc)
                return {}
            finally:
                with self._lock:
                    self._unreturned.add(spend)

    def unreturned_cost(self) -> ProposalCost | None:
        """What :meth:`propose` and :meth:`final_lessons` spent without a proposal to carry it."""
        with self._lock:
            spend, self._unreturned = self._unreturned, _Spend()
        if not (spend.tokens_in or spend.tokens_out or spend.cost_usd):
            return None
        return ProposalCost(
            spend.tokens_in, spend.tokens_out, round(spend.cost_usd, 6), self._model_name, attempts=0
        )

    def inherit_cost(self, cost: ProposalCost) -> None:
        """Earlier processes' spending outside any experiment counts toward the caps too."""
        with self._lock:
            self.spent.add(_Spend(cost.tokens_in, cost.tokens_out, cost.cost_usd))

    # -- the conversation ---------------------------------------------------------------------

    def _converse(self, context: Context, spend: _Spend, lessons: dict[int, str]) -> Proposal | None:
        with self._lock:
            known = [self._lessons[k] for k in sorted(self._lessons)]
        prompt = build_prompt(context, known, self.config.context_chars)
        if prompt.omitted:
            log.info("prompt over %d chars: left out %s", self.config.context_chars, prompt.omitted)
        messages = [{"role": "user", "content": prompt.user}]
        error = ""
        parsed: ParsedAnswer | None = None
        for attempt in range(1, self.config.retries + 2):
            if self._over_cap():
                return None
            reply = self._complete(prompt.system, messages, self.config.max_output_tokens)
            self._account(spend, reply)
            parsed = None  # an invalid proposal carries the last answer's edits, never an older one's
            try:
                parsed = parse_answer(reply.text, sorted(context.files))
                digest = self._check(parsed, context)
            except EditError as exc:
                error = str(exc)
                if reply.tool_calls and not reply.text.strip():
                    error = (
                        f"your answer was a call to the tool {', '.join(map(repr, reply.tool_calls))}; no tools "
                        "are available here: write the answer itself as text"
                    )
                if reply.reasoning_only and not reply.text.strip():
                    error = (
                        "your answer held only reasoning and no text: after thinking, write the answer "
                        "itself (the Description: line, Hypothesis: and the blocks)"
                    )
                    if reply.truncated:
                        error += (
                            f"; the reasoning used all {self.config.max_output_tokens} output tokens "
                            "([agent] max_output_tokens): think more briefly"
                        )
                elif reply.truncated:
                    error += (
                        f" (your answer was cut off at {self.config.max_output_tokens} tokens: "
                        "answer more briefly, with fewer or smaller blocks)"
                    )
                log.info("attempt %d: answer not usable: %s", attempt, error)
                # Anthropic refuses an empty turn; the model still needs to see that it said nothing.
                messages.append(
                    {
                        "role": "assistant",
                        "content": _echoed(
                            without_reasoning(reply.text, strict=False), self.config.context_chars
                        ),
                    }
                )
                messages.append({"role": "user", "content": _feedback(error)})
                continue
            with self._lock:
                self._seen[digest] = f"an earlier proposal ('{parsed.description}')"
            return Proposal(
                description=parsed.description,
                hypothesis=parsed.hypothesis,
                edits=parsed.edits,
                meta=self._meta() | {"files_hash": digest},
                lessons=lessons,
                cost=self._cost(spend, attempt),
            )
        return self._give_up(parsed, error, spend, lessons)

    def _check(self, parsed: ParsedAnswer, context: Context) -> str:
        """Apply the edits to the incumbent's files and syntax-check them; the new files' hash."""
        from nightlab.code.edits import apply_edits, python_syntax_error

        new_files = {
            **context.files,
            **apply_edits(context.files, parsed.edits, context.editable, frozen=context.frozen),
        }
        changed = sorted(path for path, text in new_files.items() if context.files.get(path) != text)
        if not changed:
            raise EditError("your edits leave every file exactly as it is; propose a real change")
        for path in changed:
            if path.endswith(".py"):
                problem = python_syntax_error(path, new_files[path])
                if problem:
                    raise EditError(f"after your edits {path} is not valid Python: {problem}")
        digest = code_hash(new_files)
        with self._lock:
            before = self._seen.get(digest)
        if before is not None:
            raise EditError(
                f"this gives exactly the same files as {before}, already tried; propose a different experiment"
            )
        return digest

    def _give_up(
        self, parsed: ParsedAnswer | None, error: str, spend: _Spend, lessons: dict[int, str]
    ) -> Proposal | None:
        """Retries ran out: hand the loop an invalid proposal to record; after too many in a row,
        stop proposing (the last one is still recorded, with what it cost)."""
        with self._lock:
            self._failed_rounds += 1
            rounds = self._failed_rounds
        # The reason quotes the file's lines: a byte that is not UTF-8 there (a lone surrogate)
        # could not be stored in the ledger.
        error = sendable(error)
        if rounds >= MAX_FAILED_ROUNDS:
            self._stop(
                f"{rounds} proposals in a row had no usable answer after retries (last: {error})", failed=True
            )
        return Proposal(
            description=parsed.description if parsed else "unusable answer",
            hypothesis=parsed.hypothesis if parsed else "",
            edits=parsed.edits if parsed else [],
            meta=self._meta(),
            refused=error,
            lessons=lessons,
            cost=self._cost(spend, self.config.retries + 1),
        )

    # -- lessons ------------------------------------------------------------------------------

    def _write_lessons(self, spend: _Spend) -> dict[int, str]:
        """One short call for the lessons owed; failures only cost the lessons, never the run."""
        with self._lock:
            owed, self._awaiting_lesson = self._awaiting_lesson[-LESSONS_PER_CALL:], []
        if not owed or self._failed or self._over_cap(quiet=True):
            return {}  # after the API failed, asking again would only wait out its retries
        prompt = "\n\n".join(lesson_fact(e) for e in owed)
        system = (
            "You keep a research notebook. For each experiment below write one line, at most 25 "
            "words, that future experiments should know (what worked, what failed and why). "
            "Answer only with lines of the form '#<id>: <lesson>'."
        )
        ids = [e.id for e in owed]
        found: dict[int, str] = {}
        # A reasoning model (gpt-5, o3) spends hidden tokens before it writes: at the short limit
        # it can be cut off with nothing written. Then once more at the answer's own limit.
        limits = dict.fromkeys(
            (LESSON_TOKENS * len(owed), max(LESSON_TOKENS * len(owed), self.config.max_output_tokens))
        )
        for limit in limits:
            try:
                reply = self._complete(system, [{"role": "user", "content": prompt}], limit)
            except (ProviderUnavailable, UserError) as exc:
                # A refused lessons request (a 400 for its length) costs the lessons, not the
                # night; a rejected key or unknown model stops the next proposal's call anyway.
                log.warning("no lessons written: %s", exc)
                return {}
            self._account(spend, reply)
            found = parse_lessons(without_reasoning(reply.text, strict=False), ids)
            if found or not reply.truncated or self._over_cap(quiet=True):
                break
        with self._lock:
            self._lessons.update(found)
        for e in owed:  # the loop's own objects, for a loop that saves entry.lesson
            if e.id in found:
                e.lesson = found[e.id]
        return found

    # -- requests -----------------------------------------------------------------------------

    def _complete(self, system: str, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        """``model.complete`` on a daemon thread, waited for until it ends or :meth:`interrupt`
        gives it up (see the module docstring: an abandoned read must not keep the process)."""
        done = threading.Event()
        outcome: list[Reply | BaseException] = []

        def call() -> None:
            try:
                outcome.append(self.model.complete(system, messages, max_tokens))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome.append(exc)
            finally:
                done.set()

        with self._lock:
            self._waiting = done
        try:
            if self._interrupted.is_set():
                raise ProposalAbandoned("nightlab is stopping: no further model request")
            threading.Thread(target=call, name="nightlab-llm-request", daemon=True).start()
            done.wait()
        finally:
            with self._lock:
                self._waiting = None
        if not outcome:  # woken by interrupt(): the request is left to its daemon thread
            raise ProposalAbandoned("nightlab is stopping: the model request in flight was abandoned")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    # -- spending -----------------------------------------------------------------------------

    def _account(self, spend: _Spend, reply: Reply) -> None:
        cost = cost_usd(self._model_name, reply.tokens_in, reply.tokens_out, self.config.prices)
        spend.add(_Spend(reply.tokens_in, reply.tokens_out, cost))
        with self._lock:  # into the total at once, so a cap is seen in the middle of a conversation
            self.spent.add(_Spend(reply.tokens_in, reply.tokens_out, cost))

    def _over_cap(self, quiet: bool = False) -> bool:
        with self._lock:
            tokens = self.spent.tokens_in + self.spent.tokens_out
            cost = self.spent.cost_usd
        cap = self.config.max_total_tokens
        if cap is not None and tokens >= cap:
            if not quiet:
                self._stop(f"token cap reached: {tokens} tokens used, max_total_tokens = {cap}")
            return True
        if self.config.max_cost is not None and cost >= self.config.max_cost:
            if not quiet:
                self._stop(f"cost cap reached: ${cost:.4f} spent, max_cost = {self.config.max_cost:g}")
            return True
        return False

    def _stop(self, reason: str, failed: bool = False) -> None:
        self._stop_reason = reason
        self._failed = failed
        log.warning("llm agent stops: %s", reason)

    def failed(self) -> bool:
        return self._failed

    def _meta(self) -> dict:
        """A proposal id unique to this process, so :meth:`observe` knows its own experiments."""
        with self._lock:
            self._count += 1
            proposal_id = f"{self._session}-{self._count}"
            self._issued.add(proposal_id)
        return {"proposal_id": proposal_id}

    def _cost(self, spend: _Spend, attempts: int) -> ProposalCost:
        return ProposalCost(
            tokens_in=spend.tokens_in,
            tokens_out=spend.tokens_out,
            cost_usd=round(spend.cost_usd, 6),
            model=self._model_name,
            attempts=attempts,
        )


def _echoed(text: str, context_chars: int) -> str:
    """An unusable answer as the retry conversation repeats it: bounded, so one runaway answer
    cannot make every later request of the round larger than the prompt budget."""
    if not text:
        return "(empty answer)"
    limit = max(2000, context_chars // 4)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... the rest of this answer, {len(text) - limit} characters, left out]"


def _feedback(error: str) -> str:
    return (
        f"Your answer could not be used: {error}\n\n"
        "Answer again in full (Description, Hypothesis and every SEARCH/REPLACE block), with this fixed."
    )
