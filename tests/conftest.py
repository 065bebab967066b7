"""Suite-wide collection order: the slow end-to-end tests first.

`make test` spreads the tests over one pytest-xdist worker per core (``--dist worksteal``). In
file order the longest tests (template training, time to target, kill -9 trials, a fresh
workspace's night: 40-100 s each on 2 cores) came last, so the suite often ended with one
worker still inside such a test while the other had nothing left. Started first, they run
while the many short tests fill the other worker, and the short ones even out the end. The
order of tests within each group (and so the module fixtures they share) stays as collected.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow ones first
