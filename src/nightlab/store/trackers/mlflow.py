"""The ``mlflow`` tracker: each experiment an MLflow run, nested under one run per research tag.

Through the official client (``MlflowClient``), to a tracking server (``tracking_uri =
"http://..."``, or ``MLFLOW_TRACKING_URI``) or, by default, a local store in the workspace
(``.nightlab/mlflow.db`` with artifacts in ``.nightlab/mlartifacts``), which ``mlflow ui
--backend-store-uri sqlite:///.nightlab/mlflow.db`` shows. Credentials come from MLflow's own
variables (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), never from
nightlab.toml.

A run carries its experiment id and tag as tags, so exporting again finds what is there and
sends only what is not.

A tracking server nobody answers costs MLflow's client minutes before it gives up (7 retries
with a backoff factor of 2, about four minutes, each try waiting up to 120 s): so before the
first request, :meth:`MlflowTracker.open_session` opens one TCP connection to the server with a
short timeout (:data:`CONNECT_SECONDS`), then sends one GET to its REST API and waits at most
:data:`REPLY_SECONDS` for any answer (an error status counts: the server is there). A refused
connection, or one accepted and never answered (a hung server, a port forward to nothing, the
wrong service), is one line naming the address and what to fix (:class:`TrackerUnreachable`),
in seconds. ``nightlab export`` also bounds MLflow's retries (:data:`EXPORT_HTTP_LIMITS`) for a
server that answers with errors.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from nightlab.errors import UserError
from nightlab.plugins import Kind, Settings
from nightlab.store.trackers.records import ExperimentRecord, SessionRecord
from nightlab.store.trackers.registry import Tracker, TrackerTarget

BATCH = 100  # MLflow takes at most 100 params, 100 tags and 1000 metrics per log_batch
# Seconds to wait for the tracking server to accept a connection before the first request.
CONNECT_SECONDS = 5.0
# Seconds to wait for the server's first answer to the probe: an MLflow server answers a search
# of one experiment in milliseconds; MLflow's own client would wait 120 s, seven times.
REPLY_SECONDS = 5.0
# What the probe asks: read-only, answered by every MLflow server since 1.x (any status will do).
PROBE_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"
# MLflow's retry variables as ``nightlab export`` sets them where the user has not: a server that
# answers with errors (500, 503, 429) is given up on after seconds (~7 s of backoff), not four
# minutes; exporting again sends what is missing. Not set for ``[trackers] live``: those
# variables would reach the training runs, and the live export runs on its own thread anyway.
EXPORT_HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackerUnreachable(UserError):
    """The tracking server does not accept connections: its address is the user's to fix."""


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
        try:
            self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        except Exception as exc:  # noqa: BLE001 - the client refused the store: one line, not its traceback
            raise _store_refused(self.uri, exc) from None
        self._entities = mlflow.entities
        self.experiment_id = ""
        self.parent_id = ""
        self.tag = ""

    # -- session -------------------------------------------------------------------------
    def open_session(self, session: SessionRecord) -> None:
        check_reachable(self.uri)
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


def check_reachable(uri: str, timeout: float = CONNECT_SECONDS, reply: float = REPLY_SECONDS) -> None:
    """Raise :class:`TrackerUnreachable` when ``uri`` is an http(s) server that refuses a TCP
    connection within ``timeout``, or accepts it and sends no answer to one GET of its REST API
    within ``reply`` seconds. Other stores (sqlite, files, databricks) and a server reached
    through a proxy (``HTTPS_PROXY``...) are left to MLflow's client."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
        return
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # no user:password
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or str(exc)
        raise _unreachable(shown, reason) from None
    if not _answers(shown, reply):
        raise _unreachable(shown, f"it accepts connections but sent no answer within {reply:g} s")


def _answers(uri: str, seconds: float) -> bool:
    """Whether the server at ``uri`` answers one GET within ``seconds``: any HTTP status, or any
    failure that is not a timeout (those are MLflow's client's to report, with its own words).
    No credentials are sent, and a certificate is not checked: only the silence is looked for."""
    request = urllib.request.Request(uri.rstrip("/") + PROBE_PATH, method="GET")
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    opener = urllib.request.build_opener(  # no proxy: check_reachable returned where one applies
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls)
    )
    try:
        with opener.open(request, timeout=seconds):
            return True
    except urllib.error.HTTPError:
        return True  # a status: the server is there
    except urllib.error.URLError as exc:
        return not isinstance(exc.reason, TimeoutError)
    except TimeoutError:
        return False
    except (OSError, ValueError):  # a reset, a server that speaks no HTTP: MLflow's to report
        return True


def _unreachable(shown: str, reason: str) -> TrackerUnreachable:
    return TrackerUnreachable(
        f"mlflow: cannot reach the tracking server {shown} ({reason}): start it, or point "
        "tracking_uri ([trackers.mlflow] in nightlab.toml, -o tracking_uri=..., or "
        "MLFLOW_TRACKING_URI) at one that runs"
    )


def _store_refused(uri: str, exc: Exception) -> UserError:
    """The client would not open ``uri`` (MLflow 3 refuses a ``file:`` store, a scheme it does
    not know, a path it cannot create): its first sentence and what to give instead. The
    traceback it raised ran to a hundred lines."""
    parts = urllib.parse.urlsplit(uri)
    # No user:password; a URI without them shown as given (geturl() turned sqlite://// into sqlite://).
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else uri
    first = " ".join(str(exc).split()).split(". ")[0][:200] or type(exc).__name__
    files = " (or MLFLOW_ALLOW_FILE_STORE=true for a file store)" if parts.scheme in ("", "file") else ""
    return UserError(
        f"mlflow: cannot open the tracking store {shown} ({first}): point tracking_uri at a database "
        f"(sqlite:///PATH/mlflow.db) or a tracking server (http://HOST:5000){files}"
    )


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _make(settings: MlflowSettings, target: TrackerTarget) -> MlflowTracker:
    return MlflowTracker(settings, target)


KINDS = (Kind("mlflow", _make, MlflowSettings, "MLflow: a run per experiment under a run per tag"),)
