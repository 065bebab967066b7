"""The diff audit: proposals that reach for what the score is made of are flagged before they run.

The runtime checks (frozen hashes, restored worktree, metric read only from the evaluation's
own process) catch a script that *succeeds* in tampering. The audit is the cheaper, earlier
line: it reads the proposed change and flags code that names the evaluation or holdout data,
the harness's internals or environment, or that prints lines that look like the metric. A
flagged proposal is not run (``[audit] mode = "block"``, the default) or runs with the reason
kept in the ledger (``"mark"``).

Each rule counts its matches in a file before and after the edit and fires only when the count
grows: an agent that edits a line which already called the evaluation (the template's
``train.py`` does, for plain runs) is not blamed for code it did not add. The audit reads text,
so a determined script can hide a reference (``"va" + "l.bin"``); the runtime checks and the
sandbox are there for that (see docs/SECURITY.md).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from nightlab.config import Config
from nightlab.formatting import INVISIBLE, show_invisible

# Harness variables a training script is meant to read (docs: "The run environment").
RUN_INPUTS = ("NIGHTLAB_SEED", "NIGHTLAB_RUN_DIR", "NIGHTLAB_EVAL_SEPARATE", "NIGHTLAB_DEVICE")
RUN_INPUT_PREFIXES = ("NIGHTLAB_BUDGET_",)


@dataclass(frozen=True)
class Rule:
    """One thing a proposal must not add: a name for the report and a pattern over the text."""

    name: str
    pattern: re.Pattern[str]


def _rules(config: Config) -> list[Rule]:
    metric = config.metric
    metric_names = [re.escape(n) for n in (metric.name, metric.holdout) if n]
    printed = "|".join(metric_names)
    rules = [
        Rule(
            "evaluation or holdout data",
            re.compile(
                r"\b(?:val|valid|validation|holdout|test)\.(?:bin|npy|pt|txt|jsonl?)\b"
                r"|[\"'](?:val|valid|validation|holdout)[\"']"
                r"|\bholdout\b"
                r"|\.cache/nightlab\b",
                re.IGNORECASE,
            ),
        ),
        Rule(
            "the evaluation",
            re.compile(
                r"\bevaluat(?:e|ion)\s*\(|\bimport\s+evaluation\b|\bfrom\s+evaluation\b|[\"']evaluate[\"']"
            ),
        ),
        Rule("the metrics file", re.compile(re.escape(metric.file))),
        Rule("the harness's internals", re.compile(r"\b(?:import|from)\s+nightlab\b|\.nightlab\b")),
        # Not about the score but about the reader: with these, the diff a person reviews in the
        # morning need not be the code that ran.
        Rule("invisible or text-direction characters (the code may not run as it reads)", INVISIBLE),
    ]
    if printed:
        # A print/write/log call whose text names the metric (``print(f"val_bpb: {x}")``).
        rules.append(
            Rule(
                "a metric-like line",
                re.compile(
                    rf"(?:\bprint|\.write|\blog(?:ging)?\.\w+|\blogger\.\w+|\becho)\b.*?\b(?:{printed})\b\s*[:=]"
                ),
            )
        )
    return rules


_ENV = re.compile(r"\bNIGHTLAB_[A-Z0-9_]+")


def _env_hits(text: str, allowed: set[str]) -> list[str]:
    return [
        name for name in _ENV.findall(text) if name not in allowed and not name.startswith(RUN_INPUT_PREFIXES)
    ]


def audit_change(before: dict[str, str], after: dict[str, str], config: Config) -> list[str]:
    """Why the change from ``before`` to ``after`` (path -> text) is suspect; empty when clean.

    Each reason names the file, the rule and the first line that added a match, so the agent
    (and the person reading the ledger) can see exactly what was flagged.
    """
    rules = _rules(config)
    extra = [Rule("a pattern in [audit] patterns", re.compile(p)) for p in config.audit.patterns]
    allowed_env = set(RUN_INPUTS) | set(config.target.env)
    metric_pattern = _metric_pattern(config)
    reasons: list[str] = []
    for path in sorted(after):
        new, old = after[path] or "", before.get(path) or ""
        if new == old:
            continue
        for rule in [*rules, *extra]:
            if len(rule.pattern.findall(new)) > len(rule.pattern.findall(old)):
                reasons.append(f"{path}: references {rule.name} ({_first_new_line(rule.pattern, old, new)})")
        if metric_pattern is not None and path.endswith(".py"):
            added = _metric_texts(new, metric_pattern)
            for text in _metric_texts(old, metric_pattern):
                if text in added:
                    added.remove(text)
            if added:
                reasons.append(
                    f"{path}: prints text the metric pattern reads ({added[0][1][:80]!r} matches "
                    f"[metric] pattern {config.metric.pattern!r})"
                )
        new_env, old_env = _env_hits(new, allowed_env), _env_hits(old, allowed_env)
        added = sorted({n for n in new_env if new_env.count(n) > old_env.count(n)})
        if added:
            reasons.append(f"{path}: reads the harness's environment ({', '.join(added)})")
    return reasons


def _metric_pattern(config: Config) -> re.Pattern[str] | None:
    """The configured metric pattern, when the metric is read from a log with it."""
    if config.metric.source != "regex" or not config.metric.pattern:
        return None
    return re.compile(config.metric.pattern, re.MULTILINE)


def _metric_texts(source: str, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """The string literals of a Python file that the metric pattern would read if printed, each
    as ``(kind, text)``: ``constant`` for a fixed text, ``computed`` for an f-string with a
    computed placeholder.

    f-strings are read with every computed placeholder as a number (``f"val loss {x:.4f}"`` is
    ``"val loss 0.5"``), so a formatted print of a made-up value is found as well as a constant
    one. The kind keeps the two apart: the script's own ``f"val_loss: {loss}"`` does not license
    a new constant ``"val_loss: 0.5"`` that happens to read the same. A file that does not
    parse yields nothing (screening refuses it anyway).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    texts: list[tuple[str, str]] = []
    inside_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            computed, parts = False, []
            for value in node.values:
                inside_fstrings.add(id(value))
                if isinstance(value, ast.Constant):
                    parts.append(str(value.value))
                elif _constant_placeholder(value):
                    parts.append(str(value.value.value))  # f"val_loss: {0.5}" is a constant
                else:
                    computed = True
                    parts.append("0.5")
            texts.append(("computed" if computed else "constant", "".join(parts)))
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside_fstrings
        ):
            texts.append(("constant", node.value))
    return [(kind, t) for kind, t in texts if pattern.search(t) or pattern.search(t.strip())]


def _constant_placeholder(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.FormattedValue)
        and isinstance(node.value, ast.Constant)
        and node.conversion == -1
        and node.format_spec is None
    )


def _first_new_line(pattern: re.Pattern[str], old: str, new: str) -> str:
    """Where ``new`` first matches on a line ``old`` does not have: the line number and the match."""
    old_lines = set(old.splitlines())
    for number, line in enumerate(new.splitlines(), start=1):
        found = pattern.search(line)
        if found and line not in old_lines:
            return f"line {number}: '{show_invisible(found.group(0)[:80])}'"
    return "a new match"
