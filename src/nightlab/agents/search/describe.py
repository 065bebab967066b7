"""What the search agent will search, in words: the table ``nightlab agent show-space`` prints,
and why there is nothing to search when that is so."""

from __future__ import annotations

from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import Dim, Space, build_space
from nightlab.code.knobs import Knob, format_literal


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def why_empty(space: Space, files: dict[str, str]) -> str | None:
    """Why there is nothing to search, and what to do; None when there is something."""
    if space.dims:
        return None
    if not space.knobs:
        names = ", ".join(sorted(files)) or "none"
        return (
            f"the search agent found no knobs in the editable files ({names}): it searches literal "
            "settings (constants and the leading settings of Python files, argparse/click defaults, "
            "dataclass fields, arguments of optimizer, scheduler, layer and DataLoader calls, "
            "YAML/JSON/TOML values); see docs/ARBITRARY_TARGETS.md, or use another "
            "agent (--agent llm)"
        )
    pinned = ", ".join(f"{k} ({why})" for k, why in list(space.pinned.items())[:6])
    return (
        f"the search agent has nothing to search: every knob is pinned or has no domain ({pinned}); "
        "declare a domain for one in [agent.search] space (`nightlab agent show-space` lists them)"
    )


def _where(knob: Knob) -> str:
    return f"{knob.path}:{knob.line}" + ("" if knob.source == "constant" else f" {knob.source}")


def describe_space(files: dict[str, str], settings: SearchSettings, command: str = "") -> str:
    """The table ``nightlab agent show-space`` prints: every knob, its value and its domain.

    ``command`` is the run command (``[target] run``), so a knob it sets on its command line
    shows as pinned, as the search will treat it. The text holds square brackets
    (``[0.001, 0.1]``, ``[agent.space]``): print it without markup.
    """
    space = build_space(files, settings, command=command)
    empty = why_empty(space, files)
    if empty:
        return empty
    rows = [("knob", "where", "value", "domain", "from", "comment")]
    by_knob: dict[str, list[Dim]] = {}
    for dim in space.dims:
        by_knob.setdefault(dim.knob, []).append(dim)
    for name, knob in space.knobs.items():
        dims = by_knob.get(name, [])
        if name in space.pinned and not dims:
            rows.append((name, _where(knob), knob.text, "pinned", space.pinned[name], _clip(knob.comment)))
            continue
        for dim in dims:
            value = space.dim_values(space.current())[space.dims.index(dim)]
            outside = ""
            if not dim.domain.categorical and not 0.0 <= dim.domain.to_unit(value) <= 1.0:
                outside = " (current value outside)"
            rows.append(
                (
                    dim.key,
                    _where(knob),
                    knob.text if dim.index is None else format_literal(repr(value), value),
                    dim.domain.describe() + outside,
                    dim.domain.origin,
                    _clip(knob.comment),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    searched = len(space.dims)
    lines.append(
        f"{searched} dimension(s) searched, {len(space.pinned)} knob(s) pinned; declare domains, choices "
        "or pins in nightlab.toml under [agent.search] (space = {...}, pin = [...])"
    )
    return "\n".join(lines)
