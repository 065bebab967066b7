"""Fixtures for the trust tests (helpers live in kit.py)."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A folder outside /tmp (which the sandbox leaves writable for torch): under the home folder."""
    base = Path.home() / ".cache" / "nightlab-trust-tests" / uuid.uuid4().hex[:12]
    for _ in range(5):  # a test in another worker may remove the shared parent meanwhile
        try:
            base.mkdir(parents=True)
            break
        except FileNotFoundError:
            continue
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: another worker's folder is in it
            base.parent.rmdir()
