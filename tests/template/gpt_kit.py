"""What the GPT template's tests share: where the template is, and importing it from a workspace.

The template's files import each other by bare name (`import data`), as they do in a research
workspace, so a test copies them into a temporary folder, puts that folder first on sys.path and
imports from there; `import_template` forgets any earlier copy first, so a file rewritten by a
test (`set_constants`) is read again.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

TEMPLATE = Path(__file__).resolve().parents[2] / "src" / "nightlab" / "templates" / "gpt"
# Every module of the template (and of the benchmarks copied into workspaces), to forget between tests.
MODULES = ("train", "harness", "evaluation", "prepare", "data", "corpus", "sources", "tokenizer")
# Everything but train.py is frozen: the settings, data preparation, run-time harness, evaluation.
FROZEN = tuple(sorted(p.name for p in TEMPLATE.glob("*.py") if p.name != "train.py"))


def forget_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the template's modules from sys.modules (restored by monkeypatch afterwards)."""
    for name in MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)


def import_template(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The frozen modules as imported from `workspace`: .data, .prepare, .harness, .evaluation."""
    forget_template(monkeypatch)
    monkeypatch.syspath_prepend(str(workspace))
    return SimpleNamespace(
        **{name: importlib.import_module(name) for name in ("data", "prepare", "harness", "evaluation")}
    )


def run_script(
    workspace: Path, script: str, *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python <script> <args>` in `workspace`, one thread, with extra environment variables."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=workspace,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file directly in `folder`, name -> contents: to show that nothing was rewritten."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
