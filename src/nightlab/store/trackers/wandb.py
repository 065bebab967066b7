"""The ``wandb`` tracker: each experiment a Weights & Biases run, grouped by research tag.

Through the official client: online with the user's key (``WANDB_API_KEY``, or ``wandb
login``), or offline (``mode = "offline"`` or ``WANDB_MODE=offline``), writing runs under
``.nightlab/wandb/`` for ``wandb sync`` later. W&B has no nested runs, so the research tag is the
runs' group, and one more run per tag (job type ``session``) carries its summary.

Each run's id is derived from the workspace, the tag and the experiment, so a run sent twice is
the same run; which experiments were sent is also kept in ``.nightlab/wandb/exported.json``, since
an offline run cannot be asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from nightlab.errors import UserError
from nightlab.plugins import Kind, Settings
from nightlab.store.trackers.records import ExperimentRecord, SessionRecord
from nightlab.store.trackers.registry import Tracker, TrackerTarget


class WandbSettings(Settings):
    """``[trackers.wandb]``."""

    project: str | None = None  # default: WANDB_PROJECT, else "nightlab"
    entity: str | None = None  # default: WANDB_ENTITY, else the key's default entity
    mode: Literal["online", "offline"] | None = None  # default: WANDB_MODE, else online


def _client_module() -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError("the wandb tracker needs W&B's client: pip install 'nightlab[wandb]'") from None
    return wandb


def _has_credentials() -> bool:
    """A W&B key in the environment or in the netrc file `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return "api.wandb.ai" in netrc.read_text() or "WANDB_BASE_URL" in os.environ
    except OSError:
        return "WANDB_BASE_URL" in os.environ


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, settings: WandbSettings, target: TrackerTarget) -> None:
        self.wandb = _client_module()
        self.target = target
        self.project = settings.project or os.environ.get("WANDB_PROJECT") or "nightlab"
        self.entity = settings.entity or os.environ.get("WANDB_ENTITY") or None
        self.mode = settings.mode or os.environ.get("WANDB_MODE") or "online"
        if self.mode not in ("online", "offline"):
            raise UserError(f"WANDB_MODE={self.mode}: the wandb tracker runs online or offline")
        if self.mode == "online" and not _has_credentials():
            # wandb.init would stop to ask for a key on a terminal: say it now, in one line.
            raise UserError(
                "the wandb tracker runs online but finds no key: set WANDB_API_KEY, run `wandb login`, "
                'or use mode = "offline" ([trackers.wandb] or WANDB_MODE=offline)'
            )
        self.dir = target.state_dir / "wandb"
        self.session: SessionRecord | None = None
        self._prefix = ""
        self._logged = 0  # experiments sent since open_session

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def _ledger_file(self) -> Path:
        return self.dir / "exported.json"

    def _key(self) -> str:
        return f"{self.entity or ''}/{self.project}/{self.session.tag if self.session else ''}"

    def _read_exported(self) -> dict[str, list[int]]:
        try:
            data = json.loads(self._ledger_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _remember(self, experiment_id: int) -> None:
        data = self._read_exported()
        ids = set(data.get(self._key(), []))
        ids.add(experiment_id)
        data[self._key()] = sorted(ids)
        tmp = self._ledger_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._ledger_file)

    def _settings(self) -> Any:
        # No console capture (nightlab's own output stays nightlab's), no system sampling, no
        # code or git snapshot: a run here describes an experiment that already ran.
        return self.wandb.Settings(
            silent=True, console="off", x_disable_stats=True, disable_git=True, save_code=False,
            x_save_requirements=False,
        )  # fmt: skip

    def _init(self, run_id: str, **kwargs: Any) -> Any:
        return self.wandb.init(
            project=self.project,
            entity=self.entity,
            id=run_id,
            dir=str(self.target.state_dir),
            mode=self.mode,
            group=self.session.tag if self.session else None,
            reinit="create_new",
            resume="allow",
            settings=self._settings(),
            **kwargs,
        )

    # -- the interface -----------------------------------------------------------------------
    def open_session(self, session: SessionRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.session = session
        self._logged = 0
        digest = hashlib.sha1(f"{self.target.root.resolve()}:{session.tag}".encode()).hexdigest()[:8]
        # The prefix the tag's runs were first sent under, kept: a workspace moved to another
        # folder sent its later experiments, and a second session run, under new ids.
        self._prefix = self._session_entry().get("prefix") or f"nl-{_safe(session.tag)}-{digest}"

    def exported(self) -> set[int]:
        return set(self._read_exported().get(self._key(), []))

    def log(self, record: ExperimentRecord) -> None:
        name = record.metric_name
        run = self._init(
            f"{self._prefix}-{record.id}",
            name=record.name,
            job_type=record.kind,
            config=dict(record.params),
            tags=[record.decision, record.kind, record.params.get("agent") or "agent"],
            notes=record.tags.get("reason", ""),
        )
        try:
            run.define_metric("replicate")
            run.define_metric(f"{name}/replicate", step_metric="replicate")
            run.define_metric("holdout/replicate", step_metric="replicate")
            run.define_metric("curve/training_seconds")
            run.define_metric("curve/*", step_metric="curve/training_seconds")
            for rep in record.replicates:
                row: dict[str, Any] = {"replicate": rep.replicate, "seed": rep.seed}
                if rep.value is not None:
                    row[f"{name}/replicate"] = rep.value
                if rep.holdout is not None:
                    row["holdout/replicate"] = rep.holdout
                run.log(row)
                for seconds, value, _step in rep.points:
                    run.log({"curve/training_seconds": seconds, f"curve/{name}_r{rep.replicate}": value})
            run.summary.update(record.metrics)
            run.summary.update({k: v for k, v in record.tags.items() if not k.startswith("nightlab.")})
            run.summary.update({"experiment_id": record.id, "tag": record.tag})
            if record.diff:
                artifact = self.wandb.Artifact(f"diff-{_safe(record.tag)}-{record.id}", type="diff")
                with artifact.new_file("diff.patch", encoding="utf-8") as f:
                    f.write(record.diff)
                run.log_artifact(artifact)
        finally:
            run.finish(exit_code=1 if record.failed else 0)
        self._remember(record.id)
        self._logged += 1

    @property
    def _sessions_file(self) -> Path:
        return self.dir / "sessions.json"

    def _session_entry(self) -> dict[str, Any]:
        """What ``sessions.json`` holds for this project and tag: the run-id prefix its runs were
        sent under, and the digest of the summary run last written."""
        try:
            data = json.loads(self._sessions_file.read_text())
        except (OSError, ValueError):
            return {}
        entry = data.get(self._key()) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else {}

    def _remember_session(self, digest: str) -> None:
        try:
            data = json.loads(self._sessions_file.read_text())
        except (OSError, ValueError):
            data = {}
        data = data if isinstance(data, dict) else {}
        data[self._key()] = {"prefix": self._prefix, "digest": digest}
        tmp = self._sessions_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._sessions_file)

    def close(self, session: SessionRecord | None = None) -> None:
        if session is None or self.session is None:
            return
        # Written again only when it changed: offline, every write is one more run folder for
        # `wandb sync` (an export that sent nothing left a new session folder each time).
        digest = hashlib.sha1(json.dumps([self._prefix, asdict(session)], default=str).encode()).hexdigest()
        if not self._logged and self._session_entry().get("digest") == digest:
            return
        run = self._init(f"{self._prefix}-session", name=f"nightlab/{session.tag}", job_type="session",
                         config={"workspace": session.workspace, "metric": session.metric_name,
                                 "direction": session.direction, "start_commit": session.start_commit or ""})  # fmt: skip
        try:
            values = {
                "experiments": session.total,
                "kept": session.kept,
                "best": session.best_metric,
                "baseline": session.baseline_metric,
                "best_experiment": session.best_id,
            }
            run.summary.update({k: v for k, v in values.items() if v is not None})
        finally:
            run.finish()
        self._remember_session(digest)


def _make(settings: WandbSettings, target: TrackerTarget) -> WandbTracker:
    return WandbTracker(settings, target)


KINDS = (Kind("wandb", _make, WandbSettings, "Weights & Biases: a run per experiment, grouped by tag"),)
