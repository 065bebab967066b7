"""The tracker interface and its kinds, found the way agents, policies and executors are.

A tracker is a :class:`~nightlab.plugins.Kind` whose factory takes its validated settings and a
:class:`TrackerTarget` and returns a :class:`Tracker`. Built-in: ``mlflow`` and ``wandb`` (their
clients are imported only when used, so nightlab runs without them); another is one module
declaring ``KINDS``, added with ``TRACKERS.add`` or an entry point in ``nightlab.trackers``.

Settings live in nightlab.toml as ``[trackers.NAME]`` tables, validated by the kind's model
with the usual one-line errors; ``[trackers] live = ["NAME", ...]`` sends every experiment while
``nightlab run`` runs. Credentials never go in the file: each client reads its own variables
(``WANDB_API_KEY``, ``MLFLOW_TRACKING_TOKEN``...), which the run environment never receives.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nightlab.config import KindSection, TrackersSection, describe_error
from nightlab.errors import UserError
from nightlab.paths import CONFIG_NAME
from nightlab.plugins import Registry, Settings
from nightlab.store.trackers.records import ExperimentRecord, SessionRecord

TRACKERS = Registry(
    "trackers",
    {"mlflow": "nightlab.store.trackers.mlflow", "wandb": "nightlab.store.trackers.wandb"},
    "nightlab.trackers",
)


@dataclass(frozen=True)
class TrackerTarget:
    """Where a tracker keeps local files: the workspace and its ``.nightlab`` folder."""

    root: Path
    state_dir: Path


class Tracker(ABC):
    """One tracking service. The exporter calls :meth:`open_session` once, :meth:`exported` to
    skip what is already there, :meth:`log` once per finished experiment, :meth:`close` last."""

    name: str = ""

    @abstractmethod
    def open_session(self, session: SessionRecord) -> None:
        """Find or create what stands for the research tag (a parent run, a group)."""

    @abstractmethod
    def exported(self) -> set[int]:
        """Ids of the experiments of the open session already in the tracker."""

    @abstractmethod
    def log(self, record: ExperimentRecord) -> None:
        """Send one finished experiment as a run: params, metrics, tags, the diff."""

    def close(self, session: SessionRecord | None = None) -> None:
        """Bring the session's summary up to date (``session``, when given) and flush."""
        return None


def tracker_settings(
    section: TrackersSection, name: str, overrides: dict[str, Any] | None = None
) -> Settings:
    """The validated settings of tracker ``name``: its ``[trackers.NAME]`` table, then ``overrides``.

    The table is validated on its own first, so that its errors name nightlab.toml and the
    overrides' errors name ``-o`` (``nightlab export -o KEY=VALUE``), where each came from.
    """
    kind = TRACKERS.get(name)
    table = dict((section.model_extra or {}).get(name) or {})
    settings = TRACKERS.settings(KindSection(kind=name, **{name: table}), name)
    if not overrides:
        return settings
    fields = kind.settings.model_fields
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(
                f"-o {name}.{key}: the {name} tracker has no setting '{key}' "
                f"({hint}it takes {', '.join(sorted(fields))})"
            )
    try:
        return kind.settings.model_validate({**table, **overrides})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error.get("loc", ())) or "?"
        raise UserError(f"-o {name}.{key}: {describe_error({**error, 'loc': ()})}") from None


def check_trackers(section: TrackersSection) -> None:
    """Every name in ``live`` is a tracker, every ``[trackers.NAME]`` table validates: checked
    before the run starts, so a typo costs a second, not a night."""
    known = TRACKERS.names()
    for name in section.live:
        if name not in known:
            raise UserError(f"{CONFIG_NAME}: [trackers] live: '{name}' is not one of {', '.join(known)}")
    for key, value in (section.model_extra or {}).items():
        if key not in known or not isinstance(value, dict):
            raise UserError(
                f"{CONFIG_NAME}: unknown key '{key}' in [trackers] (it takes live = [...] and "
                f"[trackers.NAME] tables for {', '.join(known)})"
            )
        tracker_settings(section, key)


def make_tracker(
    section: TrackersSection, name: str, target: TrackerTarget, overrides: dict[str, Any] | None = None
) -> Tracker:
    """Build tracker ``name`` from nightlab.toml's settings (and ``overrides``)."""
    kind = TRACKERS.get(name)
    return kind.factory(tracker_settings(section, name, overrides), target)
