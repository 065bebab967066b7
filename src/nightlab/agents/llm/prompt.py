"""The prompt an LLM researcher sees, built to fit a character budget.

Everything the model may know comes from :class:`Context`: the human's ``program.md``, the
incumbent's editable files, the frozen interface, the history, the noise floor, the budget
left, plus the agent's own lessons. When it does not all fit ``context_chars``, pieces leave in
a fixed order, oldest and least useful first: old history rows, old lessons, old kept diffs,
near misses, the frozen interface, then recent ones. The instructions and the editable files
never leave (the model cannot write a SEARCH block for code it has not seen).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from nightlab.formatting import general
from nightlab.types import Context, HistoryEntry

PROTOCOL = """\
You are an autonomous machine-learning researcher. A harness you do not control trains the
code you propose under a fixed budget, evaluates it with frozen code, and keeps a change only
when the improvement is larger than the measured noise. One experiment per answer.

Answer in exactly this format:

Description: <one line saying what you change, e.g. "raise LR 0.01 -> 0.02">
Hypothesis: <a short paragraph: why this should improve the metric>

<file path, alone on its line>
<<<<<<< SEARCH
<lines copied exactly from the current file>
=======
<the new lines>
>>>>>>> REPLACE

Rules:
- Edit only these editable files: {editable}. Every other file is frozen.
- SEARCH must copy the current lines exactly (indentation included) and match one place only;
  include a few surrounding lines to make it unique. Use several blocks for several places.
- To rewrite a whole file, leave the SEARCH part empty: the REPLACE part becomes the file.
- The result must be valid Python. Do not repeat an experiment that was already tried.
- Small, testable changes teach more than many changes at once; the history shows what failed.
"""

NEAR_MISSES = 5
DIFF_CHARS = 4000
LOG_CHARS = 3000


@dataclass
class Prompt:
    """A system text (the protocol) and the first user message, and what had to be left out."""

    system: str
    user: str
    omitted: dict[str, int] = field(default_factory=dict)


@dataclass
class _Item:
    section: str
    text: str
    stage: int  # lower stages leave the prompt first
    order: float  # within a stage, lower leaves first (older, less useful)


def build_prompt(context: Context, lessons: list[str], budget: int) -> Prompt:
    """The prompt for one proposal, at most ``budget`` characters unless the essentials alone exceed it."""
    system = PROTOCOL.format(editable=", ".join(sorted(context.files)) or ", ".join(context.editable))
    items = _history_items(context.history) + _kept_items(context.history) + _near_miss_items(context.history)
    items += _lesson_items(lessons) + _frozen_items(context.frozen_files) + _crash_items(context.history)
    fixed = len(system) + len(_render(context, [], {}))
    total = fixed + sum(len(it.text) + 1 for it in items)
    dropped: dict[str, int] = {}
    for item in sorted(items, key=lambda it: (it.stage, it.order)):
        if total <= budget:
            break
        total -= len(item.text) + 1
        item.stage = -1
        dropped[item.section] = dropped.get(item.section, 0) + 1
    # The estimate leaves out section titles and notes: drop on until the real text fits.
    queue = [it for it in sorted(items, key=lambda it: (it.stage, it.order)) if it.stage >= 0]
    user = _render(context, queue, dropped)
    while queue and len(system) + len(user) > budget:
        item = queue.pop(0)
        dropped[item.section] = dropped.get(item.section, 0) + 1
        user = _render(context, queue, dropped)
    return Prompt(system=system, user=user, omitted=dropped)


def _render(context: Context, items: list[_Item], dropped: dict[str, int]) -> str:
    parts: list[str] = []
    if context.program.strip():
        parts.append("# Research instructions (program.md)\n\n" + context.program.strip())
    parts.append("# State\n\n" + _state(context))
    table = (
        f"| id | description | {context.metric_name} | improvement ± se | runs | status | decision | reason |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    sections = [
        (
            "history",
            "# History (oldest first; improvement > 0 means better than the incumbent of the time)",
            table,
        ),
        ("kept", "# Kept changes (diffs, oldest first)", ""),
        ("near", "# Near misses (discarded, closest to an improvement first)", ""),
        ("crash", "# Tail of the last crash's log", ""),
        ("lessons", "# Lessons you recorded after earlier experiments", ""),
        ("frozen", "# Frozen interface (read-only; call it, do not edit it)", ""),
    ]
    for key, title, header in sections:
        body = [it.text for it in sorted(items, key=_position) if it.section == key]
        if not body and not dropped.get(key):
            continue
        note = (
            [f"({dropped[key]} older or less useful left out to fit the context)"] if dropped.get(key) else []
        )
        lines = [title, "", *note, *([header] if header and body else []), *body]
        parts.append("\n".join(lines).rstrip())
    for path, text in sorted(context.files.items()):
        parts.append(f"# Editable file: {path} (current best)\n\n{path}\n```\n{text.rstrip()}\n```")
    parts.append("Propose the next experiment, in the answer format.")
    return "\n\n".join(parts) + "\n"


def _position(item: _Item) -> float:
    """Where an item is shown: in history order, except near misses, closest first."""
    return -item.order if item.section == "near" else item.order


def _state(context: Context) -> str:
    arrow = "lower" if context.direction == "minimize" else "higher"
    lines = [f"- metric: {context.metric_name} ({arrow} is better)"]
    lines.append(
        f"- best so far: {general(context.best)}"
        if context.best is not None
        else "- best so far: not measured yet"
    )
    if context.noise is not None:
        lines.append(
            f"- noise floor: one run's {context.metric_name} varies by about ±{general(context.noise)} (std)"
        )
    else:
        lines.append("- noise floor: not measured yet")
    budget = []
    if context.experiments_left is not None:
        budget.append(f"{context.experiments_left} experiments")
    if context.seconds_left is not None:
        budget.append(f"{context.seconds_left / 3600:.1f} hours")
    lines.append("- budget left: " + (" / ".join(budget) if budget else "open-ended"))
    lines.append(f"- experiments so far: {len(context.history)}")
    if context.running:
        lines.append("- running now in other slots (do not propose these again):")
        lines += [f"  - #{e.id} {_cell(e.description)}" for e in context.running]
    return "\n".join(lines)


def _cell(text: str, limit: int = 90) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _delta(entry: HistoryEntry) -> str:
    if entry.delta is None:
        return "—"
    spread = f" ± {entry.spread:.2g}" if entry.spread is not None else ""
    return f"{entry.delta:+.4g}{spread}"


def _history_items(history: list[HistoryEntry]) -> list[_Item]:
    """One table row per experiment; rows older than the last 20 go first, the last 5 go last."""
    n = len(history)
    items = []
    for i, e in enumerate(history):
        row = (
            f"| {e.id} | {_cell(e.description)} | {general(e.metric)} | {_delta(e)} | {e.runs} | {e.status} | {e.decision} "
            f"| {_cell(e.reason, 70)} |"
        )
        age = n - i
        stage = 0 if age > 20 else (5 if age > 5 else 9)
        items.append(_Item("history", row, stage, i))
    return items


def _kept_items(history: list[HistoryEntry]) -> list[_Item]:
    kept = [e for e in history if e.decision == "keep" and e.diff.strip()]
    items = []
    for i, e in enumerate(kept):
        diff = e.diff if len(e.diff) <= DIFF_CHARS else e.diff[:DIFF_CHARS] + "\n… (diff truncated)"
        text = f"## #{e.id} {_cell(e.description)} (improvement {_delta(e)})\n```diff\n{diff.rstrip()}\n```"
        stage = 2 if len(kept) - i > 3 else 7
        items.append(_Item("kept", text, stage, i))
    return items


def _near_miss_items(history: list[HistoryEntry]) -> list[_Item]:
    """Discarded experiments that came closest: the best ideas to refine or combine."""
    misses = [e for e in history if e.decision == "discard" and e.delta is not None]
    misses.sort(key=lambda e: e.delta or 0.0, reverse=True)
    items = []
    for e in misses[:NEAR_MISSES]:
        text = f"- #{e.id} {_cell(e.description)}: improvement {_delta(e)}, {_cell(e.reason, 70)}"
        if e.hypothesis:
            text += f"\n  hypothesis: {_cell(e.hypothesis, 200)}"
        items.append(_Item("near", text, 3, e.delta or 0.0))
    return items


def _lesson_items(lessons: list[str]) -> list[_Item]:
    n = len(lessons)
    return [
        _Item("lessons", f"- {_cell(lesson, 300)}", 1 if n - i > 10 else 6, i)
        for i, lesson in enumerate(lessons)
    ]


def _crash_items(history: list[HistoryEntry]) -> list[_Item]:
    crashed = [e for e in history if e.status in ("crash", "timeout", "oom", "nan") and e.log_tail.strip()]
    if not crashed:
        return []
    e = crashed[-1]
    tail = e.log_tail[-LOG_CHARS:]
    return [_Item("crash", f"#{e.id} {_cell(e.description)} ({e.status}):\n```\n{tail.rstrip()}\n```", 8, 0)]


def _frozen_items(frozen: dict[str, str]) -> list[_Item]:
    if not frozen:
        return []
    text = "\n\n".join(
        f"{path}:\n```\n{frozen_interface(path, src)}\n```" for path, src in sorted(frozen.items())
    )
    return [_Item("frozen", text, 4, 0)]


def frozen_interface(path: str, source: str) -> str:
    """The public face of a frozen file: constants, function signatures with their first doc line.

    The model needs to know what it can call and what the evaluation fixes, not how it is done,
    and the full text of a data-preparation module would crowd out the history.
    """
    if not path.endswith(".py"):
        lines = source.splitlines()
        return "\n".join(lines[:40]) + ("\n…" if len(lines) > 40 else "")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return "\n".join(source.splitlines()[:40])
    out: list[str] = []
    for node in tree.body:
        out.extend(_describe_node(node, ""))
    return "\n".join(out) or "(no public names)"


def _describe_node(node: ast.AST, indent: str) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        line = f"{indent}def {node.name}({ast.unparse(node.args)}){returns}"
        doc = ast.get_docstring(node)
        return [line + (f"  # {doc.splitlines()[0]}" if doc else "")]
    if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
        doc = ast.get_docstring(node)
        out = [f"{indent}class {node.name}:" + (f"  # {doc.splitlines()[0]}" if doc else "")]
        for child in node.body:
            out.extend(_describe_node(child, indent + "    "))
        return out
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and not indent:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if names and all(name.isupper() for name in names):
            text = ast.unparse(node)
            return [text if len(text) <= 120 else text[:117] + "..."]
    return []
