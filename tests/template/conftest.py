"""Fixtures for the GPT template's tests: a workspace holding the template's frozen files."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from gpt_kit import FROZEN, MODULES, TEMPLATE, import_template

RUN_VARIABLES = (
    "NIGHTLAB_BUDGET_SECONDS",
    "NIGHTLAB_BUDGET_TOKENS",
    "NIGHTLAB_BUDGET_STEPS",
    "NIGHTLAB_SEED",
)
RUN_VARIABLES += ("NIGHTLAB_EVAL_SEPARATE", "NIGHTLAB_EVAL_INTERVAL_SECONDS", "NIGHTLAB_TARGET_METRIC")
RUN_VARIABLES += ("NIGHTLAB_BUDGET_FLOPS", "NIGHTLAB_PROGRESS_EVERY", "NIGHTLAB_TARGET_DIRECTION")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the default synthetic data: generating it once keeps the suite fast."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def workspace(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The frozen files in a temporary folder (the working directory), a run dir and the cache.

    The models the tests hand to the harness are tiny modules of their own, so nothing here
    depends on train.py.
    """
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in FROZEN:
        shutil.copy(TEMPLATE / name, ws / name)
    monkeypatch.setenv("NIGHTLAB_CACHE", str(shared_cache))
    monkeypatch.setenv("NIGHTLAB_RUN_DIR", str(tmp_path / "run"))
    for var in RUN_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(ws)
    yield ws
    for name in MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def tpl(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The workspace's modules (.data, .prepare, .harness, .evaluation), cpu constants."""
    return import_template(workspace, monkeypatch)
