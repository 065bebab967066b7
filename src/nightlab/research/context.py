"""What an agent may know when it proposes: the :class:`~nightlab.types.Context` of a moment.

Built from the ledger (history, best, noise floor), git (the incumbent's editable files and the
frozen interfaces it uses) and the workspace (program.md), never from the holdout metric.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from nightlab.config import Config
from nightlab.paths import editable_files, select
from nightlab.stats import noise_floor
from nightlab.store.ledger import Ledger
from nightlab.store.schema import ExperimentRow
from nightlab.types import Context
from nightlab.workspace.git import Workspace

PROGRAM_FILE = "program.md"
# Frozen files larger than this are left out of the context (data, not interfaces).
MAX_FROZEN_CHARS = 200_000


def editable_texts(config: Config, workspace: Workspace, commit: str) -> dict[str, str]:
    """The editable files at ``commit`` (path -> text): what an agent edits and screening checks.

    A commit never changes, and the loop reads the incumbent's files for every proposal (its
    context, its screening): the last few are kept, which matters once many slots decide at once."""

    def read() -> dict[str, str]:
        paths = editable_files(workspace.list_files(commit), config.target.editable, config.target.frozen)
        return workspace.read_files(commit, paths)

    return _cached(
        (str(workspace.root), commit, "editable", *config.target.editable, "|", *config.target.frozen), read
    )


def frozen_texts(config: Config, workspace: Workspace, commit: str) -> dict[str, str]:
    """The frozen files at ``commit`` small enough to be interfaces (the context's frozen_files)."""

    def read() -> dict[str, str]:
        frozen = workspace.read_files(commit, select(workspace.list_files(commit), config.target.frozen))
        return {p: t for p, t in frozen.items() if len(t) < MAX_FROZEN_CHARS}

    return _cached((str(workspace.root), commit, "frozen", *config.target.frozen), read)


def _cached(key: tuple, read: Callable[[], dict[str, str]]) -> dict[str, str]:
    """A commit's files read once: a commit never changes (a copy each time: callers may edit)."""
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
            return dict(cached)
    files = read()
    with _CACHE_LOCK:
        _CACHE[key] = dict(files)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return files


_CACHE: OrderedDict[tuple, dict[str, str]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def build_context(
    config: Config,
    workspace: Workspace,
    ledger: Ledger,
    tag: str,
    incumbent: ExperimentRow,
    experiments_left: int | None = None,
    seconds_left: float | None = None,
) -> Context:
    """The context of a proposal against ``incumbent``, the best code so far."""
    if incumbent.commit is None:
        raise ValueError(f"experiment #{incumbent.id} has no commit and cannot be the incumbent")
    program = workspace.root / PROGRAM_FILE
    noise = noise_floor(ledger.replicate_groups(tag))
    return Context(
        files=editable_texts(config, workspace, incumbent.commit),
        history=ledger.history(tag),
        metric_name=config.metric.name,
        direction=config.metric.direction,
        best=incumbent.metric_mean,
        noise=noise.sd if noise else None,
        program=program.read_text() if program.is_file() else "",
        frozen_files=frozen_texts(config, workspace, incumbent.commit),
        experiments_left=experiments_left,
        seconds_left=seconds_left,
        incumbent_commit=incumbent.commit,
        editable=list(config.target.editable),
        frozen=list(config.target.frozen),
    )
