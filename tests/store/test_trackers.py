"""Trackers: every experiment exported to MLflow and W&B, read back with each tool's own client.

MLflow goes to a local store (SQLite in .nightlab) and is read with ``MlflowClient``; W&B runs
offline and its run files are read with wandb's own ``wandb leet inspect``. The keys the
clients read from the environment must never reach a training run, a log, or any file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TOY_TRAIN, edit, git, make_workspace, nightlab

WANDB_KEY = "planted-wandb-key-0123456789abcdef0123456789"
MLFLOW_TOKEN = "planted-mlflow-token-0123456789abcdef"
# The toy target, plus what a tracker logs beyond the final value: intermediate points, and a
# dump of its own environment (to prove the tracker keys never reach it).
CURVE_TRAIN = TOY_TRAIN.replace(
    'print("---")',
    """for step in range(3):
    with open(os.path.join(run_dir, "curve.jsonl"), "a") as f:
        f.write(json.dumps({"training_seconds": step + 1.0, "val_loss": loss + (3 - step) * 0.1, "step": step}) + "\\n")
with open(os.path.join(run_dir, "env.txt"), "w") as f:
    f.write("\\n".join(f"{k}={v}" for k, v in sorted(os.environ.items())))
print("---")""",
)
PROPOSALS = [
    edit("LR = 0.1", "LR = 0.3", "LR 0.3 <script>x</script>"),
    edit("WIDTH = 64", "WIDTH = 8", "WIDTH 8"),
    edit("LR = 0.3", "LR = 0.3\nraise SystemExit(3)", "crashes"),
]


def _workspace(root: Path, trackers: str = "") -> Path:
    make_workspace(root, proposals=PROPOSALS, train=CURVE_TRAIN, policy="confirm")
    if trackers:
        (root / "nightlab.toml").write_text((root / "nightlab.toml").read_text() + trackers)
        git(root, "commit", "-qam", "trackers")
    return root


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _workspace(tmp_path_factory.mktemp("trackers") / "ws")
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 0, res.stderr
    return root


def _status(root: Path) -> dict:
    return json.loads(nightlab("status", str(root), "--json").stdout)


def _files_with(root: Path, secret: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            try:
                if secret.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[trackers]\nlive = ["mlfow"]\n',
            "nightlab.toml: [trackers] live: 'mlfow' is not one of mlflow, wandb",
        ),
        ('[trackers.mlflow]\ntracking_url = "x"\n', "unknown key 'tracking_url' in [trackers.mlflow]"),
        (
            '[trackers.wandb]\nmode = "sometimes"\n',
            "[trackers.wandb] mode: Input should be 'online' or 'offline'",
        ),
        ("[trackers]\nproject = 1\n", "unknown key 'project' in [trackers]"),
    ],
)
def test_tracker_settings_are_checked_before_anything_runs(tmp_path: Path, extra: str, message: str) -> None:
    root = _workspace(tmp_path / "ws", extra)
    res = nightlab("run", str(root), "--plain")
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (root / ".nightlab" / "runs").exists()  # nothing ran


def test_export_usage_errors_are_one_line(night: Path, tmp_path: Path) -> None:
    res = nightlab("export", str(night), "--to", "neptune")
    assert res.returncode == 2 and "is not one of mlflow, wandb" in res.stderr
    res = nightlab("export", str(night), "--to", "wandb", "-o", "mode")
    assert res.returncode == 2 and "write KEY=VALUE" in res.stderr
    if "WANDB_API_KEY" not in os.environ:  # online without a key: said before wandb would prompt for one
        res = nightlab(
            "export", str(night), "--to", "wandb", env={"HOME": str(tmp_path), "NETRC": str(tmp_path / "n")}
        )
        assert res.returncode == 2 and "the wandb tracker runs online but finds no key" in res.stderr
    empty = make_workspace(tmp_path / "empty")
    res = nightlab("export", str(empty), "--to", "mlflow")
    assert res.returncode == 2 and "no experiments yet" in res.stderr


@pytest.mark.slow
def test_export_to_mlflow_reads_back_with_mlflow_client(night: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    res = nightlab("export", str(night), "--to", "mlflow")
    assert res.returncode == 0, res.stderr
    status = _status(night)
    assert f"mlflow: {status['total']} experiments of nightlab/{status['tag']} sent" in res.stdout
    client = mlflow.MlflowClient(f"sqlite:///{night / '.nightlab' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"nightlab/{night.name}")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    [parent] = [r for r in runs if r.data.tags.get("nightlab.kind") == "session"]
    assert parent.data.params["metric"] == "val_loss" and parent.info.status == "FINISHED"
    by_id = {
        int(r.data.tags["nightlab.experiment_id"]): r for r in runs if "nightlab.experiment_id" in r.data.tags
    }
    assert sorted(by_id) == [e["id"] for e in status["experiments"]]
    ledger_diffs = {}
    import sqlite3

    conn = sqlite3.connect(night / ".nightlab" / "ledger.db")
    for eid, diff in conn.execute("SELECT id, diff FROM experiments"):
        ledger_diffs[eid] = diff
    conn.close()
    for e in status["experiments"]:
        run = by_id[e["id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["decision"] == e["decision"] and run.data.tags["reason"] == e["reason"]
        assert run.data.params["description"] == e["description"]
        assert run.data.params["seed.0"] == str(1000 * e["id"])
        history = client.get_metric_history(run.info.run_id, "val_loss_replicates")
        if e["metric"] is None:
            assert "val_loss" not in run.data.metrics and run.info.status == "FAILED"
            continue
        assert run.data.metrics["val_loss"] == pytest.approx(e["metric"])
        assert len(history) == e["runs"] and sorted(m.step for m in history) == list(range(e["runs"]))
        curve = client.get_metric_history(run.info.run_id, "val_loss_curve_r0")
        assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [0, 1, 2]
        if e["kind"] == "candidate":
            path = client.download_artifacts(run.info.run_id, "diff.patch")
            assert Path(path).read_text() == ledger_diffs[e["id"]]
    assert by_id[2].data.params["knob.LR"] == "0.3"
    again = nightlab("export", str(night), "--to", "mlflow")
    assert again.returncode == 0 and "mlflow: 0 experiments" in again.stdout


@pytest.mark.slow
def test_export_to_wandb_offline_reads_back_with_wandb_tooling(night: Path) -> None:
    pytest.importorskip("wandb")
    env = {"WANDB_API_KEY": WANDB_KEY}
    res = nightlab("export", str(night), "--to", "wandb", "-o", "mode=offline", env=env)
    assert res.returncode == 0, res.stderr
    status = _status(night)
    folder = night / ".nightlab" / "wandb"
    files = {p.parent.name.rsplit("-", 1)[-1]: p for p in folder.glob("offline-run-*/run-*.wandb")}
    assert sorted(files) == sorted([str(e["id"]) for e in status["experiments"]] + ["session"])
    for e in status["experiments"]:
        summary = _inspect(files[str(e["id"])], "--summary")
        assert summary["config"]["description"] == e["description"]
        assert summary["summary"]["decision"] == e["decision"] and summary["notes"] == e["reason"]
        ran = e["metric"] is not None
        assert (summary["state"], summary["exit_code"]) == (("finished", 0) if ran else ("failed", 1))
        records = _records(files[str(e["id"])])
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        replicate_rows = [h for h in history if "replicate" in h]
        assert [h["seed"] for h in replicate_rows] == [1000 * e["id"] + i for i in range(e["runs"])]
        if e["metric"] is not None:
            assert summary["summary"]["val_loss"] == pytest.approx(e["metric"])
            assert [h["val_loss/replicate"] for h in replicate_rows] == pytest.approx(
                [v for v in _replicate_values(night, e["id"])]
            )
            assert sum(1 for h in history if "curve/val_loss_r0" in h) == 3
        artifacts = [r["artifact"] for r in records if r["type"] == "artifact"]
        if e["kind"] == "candidate":
            assert [a["type"] for a in artifacts] == ["diff"]
            assert artifacts[0]["manifest"]["contents"][0]["path"] == "diff.patch"
    session = _inspect(files["session"], "--summary")
    assert session["summary"]["experiments"] == status["total"] and session["summary"]["kept"] == 1
    assert _files_with(night, WANDB_KEY) == []
    folders = sorted(p.name for p in folder.glob("offline-run-*"))
    again = nightlab("export", str(night), "--to", "wandb", "-o", "mode=offline", env=env)
    assert "wandb: 0 experiments" in again.stdout
    # Nothing new, nothing written: each export wrote one more session run for `wandb sync`.
    assert sorted(p.name for p in folder.glob("offline-run-*")) == folders
    # Synced and moved away, then exported again into a new folder: every run once, under the
    # same ids (the same W&B runs, not copies of them).
    folder.rename(night / ".nightlab" / "wandb-synced")
    fresh = nightlab("export", str(night), "--to", "wandb", "-o", "mode=offline", env=env)
    assert fresh.returncode == 0 and f"wandb: {status['total']} experiments" in fresh.stdout, fresh.stdout
    ids = sorted(name.split("-", 3)[-1] for name in folders)
    assert sorted(p.name.split("-", 3)[-1] for p in folder.glob("offline-run-*")) == ids


def _wandb() -> str:
    return str(Path(sys.executable).parent / "wandb")


def _inspect(path: Path, *flags: str) -> dict:
    out = subprocess.run(
        [_wandb(), "leet", "inspect", *flags, "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _records(path: Path) -> list[dict]:
    out = subprocess.run(
        [_wandb(), "leet", "inspect", "--json", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _replicate_values(root: Path, experiment_id: int) -> list[float]:
    import sqlite3

    conn = sqlite3.connect(root / ".nightlab" / "ledger.db")
    try:
        rows = conn.execute(
            "SELECT metric FROM runs WHERE experiment_id = ? ORDER BY replicate", (experiment_id,)
        )
        return [r[0] for r in rows]
    finally:
        conn.close()


@pytest.mark.slow
def test_live_trackers_get_every_experiment_and_never_the_keys(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    root = _workspace(
        tmp_path / "ws", '[trackers]\nlive = ["mlflow", "wandb"]\n[trackers.wandb]\nmode = "offline"\n'
    )
    env = {"WANDB_API_KEY": WANDB_KEY, "MLFLOW_TRACKING_TOKEN": MLFLOW_TOKEN}
    res = nightlab("run", str(root), "--plain", env=env)
    assert res.returncode == 0, res.stderr
    assert "trackers: every experiment goes to mlflow, wandb as it is decided" in res.stdout
    assert "warning" not in res.stderr, res.stderr
    status = _status(root)
    client = mlflow.MlflowClient(f"sqlite:///{root / '.nightlab' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"nightlab/{root.name}")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    ids = sorted(
        int(r.data.tags["nightlab.experiment_id"]) for r in runs if "nightlab.experiment_id" in r.data.tags
    )
    assert ids == [e["id"] for e in status["experiments"]]
    exported = json.loads((root / ".nightlab" / "wandb" / "exported.json").read_text())
    assert sorted(next(iter(exported.values()))) == ids
    # The keys reached neither the training runs nor anything written in the workspace.
    envs = list((root / ".nightlab" / "runs").rglob("env.txt"))
    assert envs and all(
        "WANDB_API_KEY" not in p.read_text() and "MLFLOW_TRACKING_TOKEN" not in p.read_text() for p in envs
    )
    assert _files_with(root, WANDB_KEY) == [] and _files_with(root, MLFLOW_TOKEN) == []
    assert os.environ.get("WANDB_API_KEY") != WANDB_KEY  # the test's own process was never changed


@pytest.mark.slow
def test_a_moved_workspace_sends_its_later_runs_under_the_same_wandb_ids(tmp_path: Path) -> None:
    """W&B run ids were derived from the workspace's path: moved to another folder, a workspace
    sent its next experiments under a new id prefix, and a second session run for the same tag
    (a duplicate in the project). The prefix first used is kept with the export's records."""
    import shutil

    pytest.importorskip("wandb")
    root = make_workspace(tmp_path / "ws", proposals=[edit("LR = 0.1", "LR = 0.3", "LR up")])
    assert nightlab("run", str(root), "--plain", "--tag", "t").returncode == 0
    env = {"WANDB_MODE": "offline"}
    assert nightlab("export", str(root), "--to", "wandb", env=env).returncode == 0
    folder = root / ".nightlab" / "wandb"
    first = {p.name.split("-", 3)[-1] for p in folder.glob("offline-run-*")}
    assert len(first) == 3  # the baseline, the change, the session

    moved = tmp_path / "elsewhere" / "lab"
    shutil.copytree(root, moved, symlinks=True)
    shutil.rmtree(root)
    records = moved / ".nightlab" / "wandb"
    for path in records.glob("offline-run-*"):  # synced and cleaned up
        shutil.rmtree(path)
    exported = json.loads((records / "exported.json").read_text())
    (key,) = exported
    exported[key] = exported[key][:-1]  # as if the last experiment had finished after the move
    (records / "exported.json").write_text(json.dumps(exported))
    again = nightlab("export", str(moved), "--to", "wandb", env=env)
    assert again.returncode == 0 and "wandb: 1 experiment" in again.stdout, again.stdout + again.stderr
    sent = {p.name.split("-", 3)[-1] for p in records.glob("offline-run-*")}
    assert sent and sent <= first, (sent, first)
