"""The kind registries (nightlab.plugins): lookup, settings tables, older flat keys, entry points."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import Field

from nightlab.agents.llm.settings import LLMSettings
from nightlab.agents.registry import AGENTS
from nightlab.agents.search.settings import SearchSettings
from nightlab.config import parse_config
from nightlab.errors import UserError
from nightlab.plugins import Kind, Registry, Settings


def _agent(table: dict) -> object:
    return parse_config(
        {"target": {"editable": ["train.py"], "run": "python train.py"}, "agent": table}
    ).agent


def test_a_kind_table_and_an_older_flat_key_both_reach_the_kind() -> None:
    section = _agent({"kind": "llm", "model": "flat-model", "llm": {"temperature": 0.2}, "pin": ["DEPTH"]})
    AGENTS.check(section)
    llm = AGENTS.settings(section)
    assert isinstance(llm, LLMSettings) and (llm.model, llm.temperature) == ("flat-model", 0.2)
    search = AGENTS.settings(section, "search")  # a flat key of another kind is kept for it
    assert isinstance(search, SearchSettings) and search.pin == ["DEPTH"]
    both = _agent({"kind": "llm", "model": "flat", "llm": {"model": "table"}})
    assert AGENTS.settings(both).model == "table"  # the kind's own table wins


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "search", "modle": "x"}, "unknown key 'modle' in [agent] (did you mean 'model'?)"),
        ({"kind": "search", "zzzq": 1}, "unknown key 'zzzq' in [agent]"),
        (
            {"kind": "search", "temperature": "hot"},
            "[agent] temperature: Input should be a valid number, unable to parse string as a number",
        ),
        (
            {"kind": "search", "llm": {"temperature": -1}},
            "[agent.llm] temperature: Input should be greater than or equal to 0",
        ),
        (
            {"kind": "search", "search": {"pinn": []}},
            "unknown key 'pinn' in [agent.search] (did you mean 'pin'?)",
        ),
        ({"kind": "nope"}, "[agent] kind 'nope' is not one of command, llm, replay, search"),
    ],
)
def test_every_problem_is_one_line_naming_the_table_and_key(table: dict, message: str) -> None:
    with pytest.raises(UserError) as caught:
        AGENTS.check(_agent(table))
    assert str(caught.value) == f"nightlab.toml: {message}"


class _Tiny(Settings):
    step: float = Field(default=1.0, gt=0)


def test_a_kind_from_an_installed_package_is_found_by_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tiny_kind_plugin.py").write_text(
        "from nightlab.plugins import Kind, Settings\n"
        "class TinySettings(Settings):\n    step: float = 1.0\n"
        "KINDS = (Kind('tiny', lambda settings, extra: ('built', settings.step), TinySettings),)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    point = metadata.EntryPoint(name="tiny", value="tiny_kind_plugin", group="nightlab.widgets")
    real = metadata.entry_points

    def entry_points(**kwargs):  # noqa: ANN003, ANN202
        return [point] if kwargs.get("group") == "nightlab.widgets" else real(**kwargs)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    registry = Registry("widget", {}, "nightlab.widgets")
    assert registry.names() == ["tiny"]
    kind = registry.get("tiny")
    assert kind.factory(kind.settings(step=2.5), None) == ("built", 2.5)
    sys.modules.pop("tiny_kind_plugin", None)


def test_an_added_kind_is_found_and_can_be_removed() -> None:
    registry = Registry("widget", {}, "nightlab.no-such-group")
    registry.add(Kind("tiny", lambda s, extra: s.step, _Tiny))
    assert registry.get("tiny").factory(_Tiny(step=3), None) == 3
    registry.remove("tiny")
    with pytest.raises(UserError, match="kind 'tiny' is not one of"):
        registry.get("tiny")
