"""`nightlab serve`'s application: who may read, who may control, what the responses carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import edit, git, make_workspace, nightlab

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from nightlab.report.dashboard import control  # noqa: E402
from nightlab.report.dashboard.data import View  # noqa: E402
from nightlab.report.dashboard.server import ServeSettings, create_app  # noqa: E402

TOKEN = "server-test-token-0123456789"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_workspace(
        tmp_path_factory.mktemp("serve") / "ws",
        proposals=[edit("LR = 0.1", "LR = 0.3", "LR 0.3"), edit("WIDTH = 64", "WIDTH = 8", "WIDTH 8")],
        evaluate=True,
    )
    toml = (
        (root / "nightlab.toml")
        .read_text()
        .replace('direction = "minimize"', 'direction = "minimize"\nholdout = "holdout_loss"')
    )
    (root / "nightlab.toml").write_text(toml)
    git(root, "commit", "-qam", "holdout")
    assert nightlab("run", str(root), "--plain").returncode == 0
    return root


def _client(ws: Path, token_for_reading: bool = False) -> TestClient:
    from nightlab.report.dashboard.data import LedgerReader

    reader = LedgerReader(ws / ".nightlab" / "ledger.db")
    tag = reader.get_meta("current_tag")
    reader.close()
    settings = ServeSettings(
        state_dir=ws / ".nightlab",
        view=View(tag, "val_loss", holdout=True),
        token=TOKEN,
        token_for_reading=token_for_reading,
        command="python train.py",
        poll_seconds=0.05,
    )
    return TestClient(create_app(settings), base_url="http://127.0.0.1")


def test_loopback_reads_without_the_token_but_holdout_values_need_it(ws: Path) -> None:
    with _client(ws) as client:
        page = client.get("/")
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert '<script src="static/app.js">' in page.text
        assert client.get("/static/app.js").status_code == 200
        public = client.get("/api/state").json()
        assert [r["outcome"] for r in public["experiments"]] == ["baseline", "kept", "discarded"]
        assert all("holdout" not in r for r in public["experiments"])
        assert public["overview"]["holdout_shown"] is False
        assert public["overview"]["holdout_checks"] == [{"id": 2, "overfit": False}]
        full = client.get("/api/state", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert all(isinstance(r["holdout"], float) for r in full["experiments"])
        assert full["overview"]["holdout_checks"][0]["holdout_delta"] is not None
        d = client.get("/api/experiments/2").json()
        assert "+LR = 0.3" in d["diff"] and d["runs"][0]["seed"] == 2000 and "holdout" not in d["runs"][0]
        d = client.get("/api/experiments/2", headers={"X-Nightlab-Token": TOKEN}).json()
        assert isinstance(d["runs"][0]["holdout"], float)
        assert client.get("/api/experiments/99").status_code == 404


def test_control_needs_the_token_in_a_header(ws: Path) -> None:
    state = ws / ".nightlab"
    with _client(ws) as client:
        for headers, url in (
            ({}, "/api/control"),
            ({"Authorization": "Bearer wrong-token-0123456789"}, "/api/control"),
            ({}, f"/api/control?token={TOKEN}"),  # an address can be forged by another page: not enough
            ({"Cookie": f"token={TOKEN}"}, "/api/control"),
        ):
            res = client.post(url, json={"action": "pause"}, headers=headers)
            assert res.status_code == 403, (headers, url)
            assert control.requested(state) is None
        res = client.post(
            "/api/control", json={"action": "jump"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert res.status_code == 400
        res = client.post(
            "/api/control", json={"action": "pause"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert res.status_code == 200 and res.json()["requested"] == "pause"
        assert control.requested(state) == "pause"
        assert json.loads((state / control.CONTROL_FILE).read_text())["action"] == "pause"
        assert client.post("/api/token", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {
            "token": True
        }
        assert client.post("/api/token").json() == {"token": False}
    (state / control.CONTROL_FILE).unlink()


def test_a_foreign_host_header_is_refused_on_loopback(ws: Path) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1."""
    with _client(ws) as client:
        assert client.get("/api/state", headers={"Host": "evil.example:8765"}).status_code == 400
        assert client.get("/api/state", headers={"Host": "localhost:8765"}).status_code == 200


def test_beyond_loopback_reading_needs_the_token_too(ws: Path) -> None:
    with _client(ws, token_for_reading=True) as client:
        for path in ("/", "/api/state", "/api/experiments/2", "/api/events"):
            res = client.get(path, headers={"Host": "203.0.113.7:8765"})
            assert res.status_code == 401, path
        assert "token" in client.get("/api/state").json()["error"]
        assert client.get(f"/api/state?token={TOKEN}").status_code == 200
        assert client.get("/", params={"token": TOKEN}).status_code == 200
        assert (
            client.get("/api/experiments/2", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        )
        assert client.get("/static/app.css").status_code == 200  # the page's own code is no secret


def test_the_hub_pushes_a_numbered_patch_when_the_ledger_changes(ws: Path, tmp_path: Path) -> None:
    import asyncio
    import shutil

    from nightlab.report.dashboard.server import Hub
    from nightlab.store.ledger import Ledger
    from nightlab.workspace.lock import acquire

    root = tmp_path / "copy"
    shutil.copytree(ws, root)
    settings = ServeSettings(root / ".nightlab", View("x"), TOKEN, poll_seconds=0.05)
    harness = acquire(root / ".nightlab")  # the new experiment runs under a live harness
    ledger = Ledger(root / ".nightlab" / "ledger.db")
    settings.view.tag = ledger.get_meta("current_tag")

    async def scenario() -> dict:
        hub = Hub(settings)
        await hub.start()
        try:
            queue = await hub.subscribe()
            before = json.loads(await hub.snapshot(False))
            ledger.add_experiment(kind="candidate", tag=settings.view.tag, description="new one")
            patch = await asyncio.wait_for(queue.get(), timeout=10)
            assert patch["sequence"] > before["sequence"]
            return patch
        finally:
            await hub.stop()

    patch = asyncio.run(scenario())
    ledger.close()
    harness.release()
    assert [r["description"] for r in patch["experiments"]] == ["new one"]
    assert patch["overview"]["counts"]["running"] == 1
