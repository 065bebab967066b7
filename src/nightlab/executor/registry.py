"""The executor kinds nightlab can build (``[executor] kind``), and building the configured one.

Built-in kinds are named here with the module that declares them; another executor (a cluster
of machines) is one module declaring its :class:`~nightlab.plugins.Kind`, added at run time or
through an entry point in the group ``nightlab.executors``.
"""

from __future__ import annotations

from nightlab.config import Config
from nightlab.executor.base import Executor
from nightlab.plugins import Registry

EXECUTORS = Registry(
    "executor",
    {"local": "nightlab.executor.local", "ray": "nightlab.executor.ray_cluster"},
    "nightlab.executors",
)


def make_executor(config: Config) -> Executor:
    """The executor ``[executor] kind`` names, with the resource limits of ``[run]``."""
    kind = EXECUTORS.get(config.executor.kind)
    return kind.factory(EXECUTORS.settings(config.executor), config)
