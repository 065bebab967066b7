"""Fixtures for the trust tests (helpers live in kit.py)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A folder outside /tmp (which the sandbox leaves writable for torch): under the home folder."""
    base = Path.home() / ".cache" / "nightlab-trust-tests" / uuid.uuid4().hex[:12]
    base.mkdir(parents=True)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        with_parent = base.parent
        if with_parent.is_dir() and not any(with_parent.iterdir()):
            with_parent.rmdir()
