"""The replay agent: proposals read from a JSONL file, one per line, in order.

It exists for reproducing a session, for tests, and for people who write their experiment
list by hand. A line looks like::

    {"description": "LR x2", "hypothesis": "...", "edits": [{"path": "train.py",
     "search": "LR = 0.01", "replace": "LR = 0.02"}]}

Its position survives a restart: every proposal carries its line number in ``meta``, and the
next line is the one after the highest line already in the history.
"""

from __future__ import annotations

import json
from pathlib import Path

from nightlab.agents.base import Agent, AgentSetup
from nightlab.errors import UserError
from nightlab.plugins import Kind, Settings
from nightlab.types import Context, Edit, HistoryEntry, Proposal


def _lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    return isinstance(value, list) and any(_lone_surrogate(v) for v in value)


def load_replay_file(path: Path) -> list[Proposal]:
    """Parse every line up front, so a bad line fails the run before any training starts."""
    if not path.is_file():
        raise UserError(f"[agent] file: replay file {path} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path.name} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None
    proposals: list[Proposal] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path.name} line {number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.args[0] if exc.args else exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object with description and edits")
        if _lone_surrogate(data):  # JSON allows "\ud800"; no file or ledger row can hold it
            raise UserError(
                f"{where}: a string holds a lone surrogate escape (\\ud800-\\udfff): not Unicode text"
            )
        description = data.get("description")
        edits = data.get("edits")
        if not isinstance(description, str) or not description.strip():
            raise UserError(f"{where}: 'description' must be a non-empty string")
        if not isinstance(edits, list) or not edits:
            raise UserError(f"{where}: 'edits' must be a non-empty list")
        parsed: list[Edit] = []
        for i, edit in enumerate(edits, start=1):
            if not isinstance(edit, dict) or not isinstance(edit.get("path"), str):
                raise UserError(f"{where}: edit {i} needs a 'path' string")
            if not isinstance(edit.get("replace"), str):
                raise UserError(f"{where}: edit {i} needs a 'replace' string")
            search = edit.get("search")
            if search is not None and not isinstance(search, str):
                raise UserError(f"{where}: edit {i} 'search' must be a string")
            unknown = set(edit) - {"path", "search", "replace"}
            if unknown:
                raise UserError(f"{where}: edit {i} has unknown key(s) {', '.join(sorted(unknown))}")
            parsed.append(Edit(path=edit["path"], search=search, replace=edit["replace"]))
        unknown = set(data) - {"description", "hypothesis", "edits"}
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        proposals.append(
            Proposal(
                description=description.strip(),
                hypothesis=str(data.get("hypothesis", "")),
                edits=parsed,
                meta={"replay_line": number},
            )
        )
    if not proposals:
        raise UserError(f"[agent] file: replay file {path} holds no proposals")
    return proposals


class ReplaySettings(Settings):
    """``[agent.replay]``: the JSONL file of proposals, relative to the workspace."""

    file: str | None = None


class ReplayAgent(Agent):
    """Proposes the file's lines in order, then stops."""

    name = "replay"

    def __init__(self, path: Path) -> None:
        self.proposals = load_replay_file(path)
        self._last_line = 0

    def observe(self, entry: HistoryEntry) -> None:
        line = entry.meta.get("replay_line") if isinstance(entry.meta, dict) else None
        if isinstance(line, int):
            self._last_line = max(self._last_line, line)

    def propose(self, context: Context) -> Proposal | None:
        for entry in context.running:  # proposed before a restart, still to be decided
            self.observe(entry)
        for proposal in self.proposals:
            if proposal.meta["replay_line"] > self._last_line:
                self._last_line = proposal.meta["replay_line"]
                return proposal
        return None


def _make(settings: ReplaySettings, setup: AgentSetup) -> Agent:
    if not settings.file:
        raise UserError('nightlab.toml: [agent] kind = "replay" needs file = "proposals.jsonl"')
    return ReplayAgent(setup.root / settings.file)


KINDS = (Kind("replay", _make, ReplaySettings, "proposals read from a JSONL file, in order"),)
