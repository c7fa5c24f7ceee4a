"""A full disk, for real: the data directory on a small tmpfs filled to the last byte. Change, upload and
restore answer 507 naming the data directory (never a bare 500); a change whose disk fills while it runs
fails, its stream ends, its final row waits in memory and is written as soon as the disk takes writes
again — without a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import SmallDisk
from panel_helpers import bearer, panel_settings, read_sse, sprite_folder
from servers import serve_app

from mikubot.events import ProgressEvent
from mikubot.history import History
from mikubot.storage import StorageFull
from mikubot.web import create_app


def stored_status(db: Path, change_id: int, *, disk_full: bool = False) -> str:
    """The row's status as the file holds it (a fresh connection: no in-memory view of ours). On a full
    disk SQLite cannot even make its shared-memory file, so the file is read as it stands (``immutable``:
    every connection of the panel is closed, so nothing waits in a WAL)."""
    uri = f"file:{db}?immutable=1" if disk_full else f"file:{db}"
    with sqlite3.connect(uri, uri=True) as conn:
        return conn.execute("SELECT status FROM changes WHERE id = ?", (change_id,)).fetchone()[0]


def test_history_on_a_full_disk(small_disk: SmallDisk) -> None:
    db = small_disk.path / "history.sqlite3"
    history = History(db)
    cid = history.start("local:art", dry_run=True)
    small_disk.fill()
    history.finish(cid, "failed", error="out of space")  # kept in memory, not raised
    assert history.pending == [cid]
    with pytest.raises(StorageFull) as full:  # the next change cannot even write its row
        history.start("local:art", dry_run=True)
    assert str(db) in str(full.value) and "full" in str(full.value)
    assert history.pending == [cid]
    small_disk.free()
    assert history.get(cid).status == "failed"  # the next operation writes it
    assert history.pending == [] and stored_status(db, cid) == "failed"


@pytest.fixture
def panel_on(small_disk: SmallDisk, art_dir: Path, tmp_path: Path) -> Iterator[tuple[str, object, SmallDisk]]:
    art = sprite_folder(art_dir, tmp_path / "art", ("lucy happy.png", "eileen happy.png"))
    data = small_disk.path / "data"
    app = create_app(panel_settings(data, art))
    with serve_app(app) as url:
        yield url, app.state.panel, small_disk


def test_change_upload_and_restore_on_a_full_disk_are_507(panel_on, art_dir: Path) -> None:
    base, state, disk = panel_on
    data_dir = str(state.settings.data_dir)
    with httpx.Client(base_url=base, timeout=60, headers=bearer()) as c:
        first = c.post("/profile-picture/change", params={"wait": "true"})
        assert first.status_code == 200 and first.json()["status"] == "dry-run", first.text
        disk.fill()
        answers = {
            "change": c.post("/profile-picture/change"),
            "change?wait": c.post("/profile-picture/change", params={"wait": "true"}),
            "restore": c.post(f"/profile-picture/restore/{first.json()['id']}"),
            "upload": c.post("/profile-picture/upload", files={
                "file": ("eileen.png", (art_dir / "eileen vhappy.png").read_bytes(), "image/png")}),
        }
        for what, r in answers.items():
            assert r.status_code == 507, (what, r.status_code, r.text)
            assert data_dir in r.json()["detail"] and "full" in r.json()["detail"], (what, r.text)
        assert c.get("/health").json()["change_running"] is False
        disk.free()
        again = c.post("/profile-picture/change", params={"wait": "true"})
        assert again.status_code == 200 and again.json()["status"] == "dry-run", again.text


def test_a_change_whose_disk_fills_fails_and_its_row_is_closed(panel_on) -> None:
    base, state, disk = panel_on
    db = state.settings.history_path

    filled: list[int] = []

    def fill_once_searching(ev: ProgressEvent) -> None:  # the moment the change has its row and starts work
        if (ev.stage, ev.status) == ("search", "start") and not filled:
            filled.append(ev.change_id)
            disk.fill()

    unsubscribe = state.runner.bus.subscribe(fill_once_searching)
    try:
        with httpx.Client(base_url=base, timeout=60, headers=bearer()) as c:
            r = c.post("/profile-picture/change")
            assert r.status_code == 202, r.text
            cid = r.json()["change_id"]
            frames = read_sse(c, r.json()["events_url"])  # ends, whenever it is opened
            end = frames[-1]
            assert end[0] == "end" and end[2]["status"] == "failed" and "full" in end[2]["error"], frames
            assert stored_status(db, cid, disk_full=True) == "running"  # not written yet: the disk is still full
            assert c.get(f"/profile-picture/changes/{cid}").status_code == 507
            disk.free()
            row = c.get(f"/profile-picture/changes/{cid}").json()
            assert row["status"] == "failed" and "full" in row["error"]
            assert stored_status(db, cid) == "failed"  # written for good, no restart needed
            assert c.post("/profile-picture/change", params={"wait": "true"}).json()["status"] == "dry-run"
    finally:
        unsubscribe()


def test_wait_on_a_change_whose_disk_fills_is_507_with_its_record(panel_on) -> None:
    base, state, disk = panel_on

    filled: list[int] = []

    def fill_once_cropping(ev: ProgressEvent) -> None:
        if (ev.stage, ev.status) == ("crop", "start") and not filled:
            filled.append(ev.change_id)
            disk.fill()

    unsubscribe = state.runner.bus.subscribe(fill_once_cropping)
    try:
        with httpx.Client(base_url=base, timeout=60, headers=bearer()) as c:
            r = c.post("/profile-picture/change", params={"wait": "true"})
            assert r.status_code == 507, r.text
            body = r.json()
            assert str(state.settings.data_dir) in body["detail"] and body["record"]["status"] == "failed"
            assert body["record"]["insufficient_storage"].startswith(str(state.settings.data_dir))
            disk.free()
            assert c.get(f"/profile-picture/changes/{body['change_id']}").json()["status"] == "failed"
    finally:
        unsubscribe()
