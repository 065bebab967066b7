"""The ``mlflow`` tracker: each experiment an MLflow run, nested under one run per research tag.

Through the official client (``MlflowClient``), to a tracking server (``tracking_uri =
"http://..."``, or ``MLFLOW_TRACKING_URI``) or, by default, a local store in the workspace
(``.nightlab/mlflow.db`` with artifacts in ``.nightlab/mlartifacts``), which ``mlflow ui
--backend-store-uri sqlite:///.nightlab/mlflow.db`` shows. Credentials come from MLflow's own
variables (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), never from
nightlab.toml.

A run carries its experiment id and tag as tags, so exporting again finds what is there and
sends only what is not.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from nightlab.errors import UserError
from nightlab.plugins import Kind, Settings
from nightlab.store.trackers.records import ExperimentRecord, SessionRecord
from nightlab.store.trackers.registry import Tracker, TrackerTarget

BATCH = 100  # MLflow takes at most 100 params, 100 tags and 1000 metrics per log_batch


class MlflowSettings(Settings):
    """``[trackers.mlflow]``."""

    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else .nightlab/mlflow.db
    experiment: str | None = None  # the MLflow experiment; default "nightlab/<workspace folder>"


def _client_module() -> Any:
    try:
        import mlflow
    except ImportError:
        raise UserError("the mlflow tracker needs MLflow's client: pip install 'nightlab[mlflow]'") from None
    for name in ("mlflow", "alembic", "sqlalchemy"):  # table creation and store notes, not ours to print
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, settings: MlflowSettings, target: TrackerTarget) -> None:
        mlflow = _client_module()
        self.target = target
        self.uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.artifacts: str | None = None
        if not self.uri:  # the local store, inside the git-ignored state folder
            target.state_dir.mkdir(parents=True, exist_ok=True)
            self.uri = f"sqlite:///{target.state_dir / 'mlflow.db'}"
            self.artifacts = (target.state_dir / "mlartifacts").as_uri()
        self.experiment_name = settings.experiment or f"nightlab/{target.root.name}"
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        self._entities = mlflow.entities
        self.experiment_id = ""
        self.parent_id = ""
        self.tag = ""

    # -- session -------------------------------------------------------------------------
    def open_session(self, session: SessionRecord) -> None:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is None:
            self.experiment_id = self.client.create_experiment(
                self.experiment_name,
                artifact_location=self.artifacts,
                tags={"nightlab.workspace": session.workspace},
            )
        else:
            self.experiment_id = found.experiment_id
        self.tag = session.tag
        parents = self._search(f"tags.`nightlab.session` = '{_quote(session.tag)}'")
        if parents:  # the tag's run from an earlier export or night: it goes on
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"nightlab/{session.tag}",
            tags={"nightlab.session": session.tag, "nightlab.tag": session.tag, "nightlab.kind": "session"},
        )
        self.parent_id = run.info.run_id
        self.client.log_batch(
            self.parent_id,
            params=[
                self._entities.Param(k, str(v))
                for k, v in {
                    "workspace": session.workspace,
                    "metric": session.metric_name,
                    "direction": session.direction,
                    "start_commit": session.start_commit or "",
                }.items()
            ],
        )

    def exported(self) -> set[int]:
        runs = self._search(
            f"tags.`nightlab.tag` = '{_quote(self.tag)}' and tags.`nightlab.kind` != 'session'"
        )
        return {
            int(r.data.tags["nightlab.experiment_id"])
            for r in runs
            if "nightlab.experiment_id" in r.data.tags
        }

    def _search(self, query: str) -> list:
        found, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=query, max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    # -- one experiment --------------------------------------------------------------------
    def log(self, record: ExperimentRecord) -> None:
        E = self._entities
        tags = {**record.tags, "mlflow.parentRunId": self.parent_id}
        run = self.client.create_run(
            self.experiment_id, start_time=record.started_ms, tags=tags, run_name=record.name
        )
        run_id = run.info.run_id
        stamp = record.finished_ms or record.started_ms or 0
        metrics = [E.Metric(k, v, stamp, 0) for k, v in record.metrics.items()]
        name = record.metric_name
        for rep in record.replicates:  # each replicate's value at step = replicate
            if rep.value is not None:
                metrics.append(E.Metric(f"{name}_replicates", rep.value, stamp, rep.replicate))
            if rep.holdout is not None:
                metrics.append(E.Metric("holdout_replicates", rep.holdout, stamp, rep.replicate))
            for i, (seconds, value, step) in enumerate(rep.points):  # its intermediate points
                when = (record.started_ms or 0) + int(seconds * 1000)
                at = int(step) if step is not None else i
                metrics.append(E.Metric(f"{name}_curve_r{rep.replicate}", value, when, at))
        params = [E.Param(k, v) for k, v in record.params.items()]
        for start in range(0, max(len(params), len(metrics), 1), BATCH):
            self.client.log_batch(
                run_id, metrics=metrics[start : start + BATCH], params=params[start : start + BATCH]
            )
        if record.diff:
            self.client.log_text(run_id, record.diff, "diff.patch")
        self.client.set_terminated(
            run_id, status="FAILED" if record.failed else "FINISHED", end_time=record.finished_ms
        )

    def close(self, session: SessionRecord | None = None) -> None:
        if not self.parent_id or session is None:
            return
        E = self._entities
        stamp = 0
        values = {
            "experiments": float(session.total),
            "kept": float(session.kept),
            "best": session.best_metric,
            "baseline": session.baseline_metric,
        }
        metrics = [E.Metric(k, float(v), stamp, session.total) for k, v in values.items() if v is not None]
        tags = [E.RunTag("best_experiment", str(session.best_id or ""))]
        self.client.log_batch(self.parent_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.parent_id, status="FINISHED")


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _make(settings: MlflowSettings, target: TrackerTarget) -> MlflowTracker:
    return MlflowTracker(settings, target)


KINDS = (Kind("mlflow", _make, MlflowSettings, "MLflow: a run per experiment under a run per tag"),)
