"""The SQLite change history: running → finished rows, crash recovery, used posts, restore."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import httpx
import pytest

from cli_runner import run_cli
from mikubot.cli import app as mikubot_app
from mikubot.events import Downloaded, Fallback, OtherDetail, ProgressEvent, RecordDone, StageDone, Verdict
from mikubot.history import RESULT_COLUMNS, ChangeLocked, History, HistoryError
from mikubot.record import ChangeRecord, Credit
from mikubot.record_parts import DryRunUpload
from panel_helpers import panel_server, panel_settings


def test_change_starts_running_and_finishes_atomically(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    cid = h.start("danbooru", dry_run=True)
    row = h.get(cid)
    assert row.status == "running" and row.finished_at is None and row.dry_run is True
    h.finish(cid, "dry-run", source="danbooru", post_key="123", tags=["hatsune_miku", "solo"],
             face_box=[1.0, 2.0, 3.0, 4.0], crop_box=[0, 0, 10, 10], timings={"search": 12.5},
             vram_timeline=[{"t": 0.0, "event": "request", "consumer": "vision", "free_mib": 7800.0, "detail": ""}], avatar_path=tmp_path / "a.png", uploaded=False,
             fallbacks=["saliency"])
    row = h.get(cid)
    assert row.status == "dry-run" and row.finished_at
    assert row.tags == ["hatsune_miku", "solo"] and row.face_box == [1.0, 2.0, 3.0, 4.0]
    assert row.timings == {"search": 12.5} and row.fallbacks == ["saliency"]
    assert row.avatar_path == str(tmp_path / "a.png")
    with pytest.raises(HistoryError, match="not running"):
        h.finish(cid, "failed", error="twice")
    assert h.get(cid).status == "dry-run"


def test_one_change_at_a_time_in_this_process_too(tmp_path):
    """The change lock is the one "one change at a time": a second claim or start while a change holds it is
    refused, naming the running change once its row exists; an unused claim and a finished row let go."""
    h = History(tmp_path / "h.sqlite3")
    claim = h.claim()
    with pytest.raises(ChangeLocked) as starting:
        h.start("danbooru", dry_run=True)
    assert starting.value.running_id is None  # claimed, its row not written yet
    h.release(claim)
    first = h.start("danbooru", dry_run=True)
    with pytest.raises(ChangeLocked) as refused:
        h.claim()
    assert refused.value.running_id == first
    h.release(claim)  # an old claim: no effect on the running change
    with pytest.raises(ChangeLocked):
        h.start("danbooru", dry_run=True)
    h.finish(first, "dry-run")
    claim = h.claim()
    second = h.start("danbooru", dry_run=True, claim=claim)
    assert second == first + 1
    h.release(claim)  # its row holds it now: only ``finish`` lets go
    with pytest.raises(ChangeLocked):
        h.claim()
    h.finish(second, "failed", error="x")
    h.release(h.claim())


def test_one_record_fills_every_result_column(tmp_path):
    """The record a change returns and the row it leaves are one ChangeRecord: every result column is set
    from it, and reading the row back gives the record's values."""
    record = ChangeRecord(id=1, status="applied", dry_run=False,
                          source=Credit(spec="danbooru", name="danbooru", key="42", tags=["solo"], rating="g"),
                          crop_box=[0.0, 0.0, 10.0, 10.0], fallbacks=["verify:heuristic"], timings_ms={"search": 1.5},
                          avatar_path=str(tmp_path / "a.png"), uploaded=True)
    events = [ProgressEvent(change_id=1, stage="record", status="done", t=0.5, detail=RecordDone(status="applied"))]
    columns = record.history_columns(events=events)
    assert set(columns) == set(RESULT_COLUMNS)
    h = History(tmp_path / "h.sqlite3")
    cid = h.start("danbooru", dry_run=False)
    h.finish(cid, record.status, **columns)
    row = h.get(cid)
    assert (row.source, row.post_key, row.tags, row.rating) == ("danbooru", "42", ["solo"], "g")
    assert row.timings == record.timings_ms and row.crop_box == record.crop_box and row.uploaded is True
    assert row.events == events


def test_finish_refuses_unknown_columns_and_statuses(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    cid = h.start("local:x", dry_run=True)
    with pytest.raises(ValueError, match="unknown history columns"):
        h.finish(cid, "failed", nonsense=1)
    with pytest.raises(ValueError, match="final status"):
        h.finish(cid, "running")
    assert h.get(cid).status == "running"


def test_rows_left_running_by_a_crash_are_failed_at_start_up(tmp_path):
    db = tmp_path / "h.sqlite3"
    History(db)
    code = textwrap.dedent(f"""
        import os
        from mikubot.history import History
        h = History({str(db)!r})
        print(h.start("danbooru", dry_run=False), flush=True)
        os._exit(9)  # dies mid-change, as a crash or OOM kill would
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    crashed = int(out.stdout.strip())
    h = History(db)
    assert h.recovered == [crashed]
    live = h.start("danbooru", dry_run=False)  # this process is alive: reopening must leave it running
    assert History(db).recovered == []
    row = h.get(crashed)
    assert row.status == "failed" and "interrupted" in row.error and row.finished_at
    assert h.get(live).status == "running"


def test_used_posts_per_source(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    cid = h.start("danbooru", dry_run=True)
    h.mark_used("danbooru", "101", cid)
    h.mark_used("danbooru", "101", cid)  # idempotent
    h.mark_used("safebooru", "7", cid)
    assert h.used_keys("danbooru") == {"101"}
    assert h.used_keys("safebooru") == {"7"}
    assert h.used_keys("gelbooru") == set()


def test_restorable_explains_why_not(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    with pytest.raises(HistoryError, match="no change with id 99"):
        h.restorable(99)
    failed = h.start("danbooru", dry_run=True)
    h.finish(failed, "failed", error="no candidates")
    with pytest.raises(HistoryError, match="no avatar.*no candidates"):
        h.restorable(failed)
    gone = h.start("danbooru", dry_run=True)
    h.finish(gone, "dry-run", avatar_path=tmp_path / "missing.png")
    with pytest.raises(HistoryError, match="gone"):
        h.restorable(gone)
    ok = h.start("danbooru", dry_run=True)
    (tmp_path / "ok.png").write_bytes(b"x")
    h.finish(ok, "dry-run", avatar_path=tmp_path / "ok.png")
    assert h.restorable(ok) == tmp_path / "ok.png"
    assert [r.id for r in h.list()] == [ok, gone, failed]


# A finished row as the history held it before records and events were typed: every JSON column written
# from plain dicts, some with a key no model declares (an older version's) and one event of no known kind.
VERDICT = {"is_character": True, "confidence": 0.85, "description": "teal twin tails", "method": "heuristic",
           "raw": None, "evidence": {"hair": "teal"}, "duration_s": 0.0123}
CHOICE = {"rank": 0, "bbox": [10.0, 10.0, 60.0, 60.0], "confidence": 0.9, "score": 0.8, "hair": "teal",
          "hair_detector": None, "hair_distance": 3.5, "hair_match": True, "chosen": True}
OLD_COLUMNS = {
    "source": "local", "post_key": "a.png", "description": "teal twin tails", "crop_method": "face",
    "verification": VERDICT,
    "vram_timeline": [{"t": 0.0, "event": "request", "consumer": "face-detector", "free_mib": 7800.0,
                       "detail": "animeface needs no VRAM"}],
    "candidates": [{"source": "local", "key": "a.png", "page_url": None, "filename": "a.png", "verification": VERDICT,
                    "faces": [{"bbox": [10.0, 10.0, 60.0, 60.0], "confidence": 0.9, "keypoints": []}],
                    "detected_via": "in-process", "skipped": None, "lost": None, "picture": "change-00001_c0.jpg",
                    "framing": {"method": "face", "box": [0, 0, 80, 80], "size": [256, 256], "upscale": 3.2,
                                "score": 0.8, "face": None, "face_inside": True, "face_share": 0.6, "padded": False,
                                "reason": "the only usable face", "choice": [CHOICE]},
                    "size": [120, 200], "thumbnail_px": 96}],
    "events": [
        {"change_id": 1, "stage": "search", "status": "start", "t": 0.0, "detail": {"spec": "local:x", "limit": 1}},
        {"change_id": 1, "stage": "download", "status": "progress", "t": 0.1,
         "detail": {"key": "a.png", "bytes": 2048, "size": [120, 200]}},
        {"change_id": 1, "stage": "verify", "status": "progress", "t": 0.2, "detail": {
            "key": "a.png", "method": "heuristic", "is_character": True, "confidence": 0.85, "description": "teal"}},
        {"change_id": 1, "stage": "detect", "status": "fallback", "t": 0.3, "detail": {"to": "in-process", "reason": "down"}},
        {"change_id": 1, "stage": "detect", "status": "progress", "t": 0.4, "detail": {"faces": 1, "engine": "old"}},
        {"change_id": 1, "stage": "crop", "status": "done", "t": 0.5, "detail": {"ms": 12.5, "summary": "a.png: face"}},
        {"change_id": 1, "stage": "record", "status": "done", "t": 0.6, "detail": {"status": "dry-run"}},
    ],
}


def test_a_row_written_before_the_typed_models_loads_and_shows(tmp_path, art_dir):
    """Rows outlive the code that wrote them: a row of plain dicts reads back into the typed models (unknown
    keys ignored, an event of no known kind kept as it was) and shows in the CLI's history and the panel."""
    data = tmp_path / "data"
    h = History(data / "history.sqlite3")
    cid = h.start("local:x", dry_run=True)
    h.finish(cid, "dry-run", **OLD_COLUMNS)
    row = h.get(cid)
    assert row.verification.method == "heuristic" and row.vram_timeline[0].consumer == "face-detector"
    (candidate,) = row.candidates
    assert candidate.framing.choice[0].chosen and candidate.faces[0].bbox == [10.0, 10.0, 60.0, 60.0]
    details = [e.detail for e in row.events]
    assert [type(d) for d in details] == [type(details[0]), Downloaded, Verdict, Fallback, OtherDetail, StageDone,
                                          RecordDone]
    assert details[1].size == [120, 200] and details[3].to == "in-process" and details[5].summary == "a.png: face"
    assert [e.to_json() for e in row.events] == OLD_COLUMNS["events"]  # the same JSON out as went in

    env = {"MIKU_DATA_DIR": str(data), "COLUMNS": "200"}
    shown = run_cli(mikubot_app, "pfp", "history", env=env, cwd=tmp_path)
    assert shown.returncode == 0 and "teal twin tails" in shown.stdout and "dry-run" in shown.stdout, shown.stderr
    listed = run_cli(mikubot_app, "pfp", "history", "--json", env=env, cwd=tmp_path)
    assert json.loads(listed.stdout)[0]["verification"] == VERDICT

    with panel_server(panel_settings(data, art_dir)) as base, httpx.Client(base_url=base, timeout=30) as client:
        view = client.get(f"/profile-picture/changes/{cid}").json()
        assert view["events"] == OLD_COLUMNS["events"] and view["verification"] == VERDICT
        (shown_candidate,) = view["candidates"]
        stored = {k: v for k, v in OLD_COLUMNS["candidates"][0].items() if k != "thumbnail_px"}
        assert shown_candidate == {**stored, "picture_url": None, "picture_pruned": True}
        page = client.get("/history")
        assert page.status_code == 200 and "teal twin tails" in page.text


def test_a_dry_run_upload_keeps_its_keys():
    """The record's parts dump the keys their producer gave: no null padding in the record's JSON."""
    upload = DryRunUpload(skipped="MIKU_DRY_RUN", written="/x/a.png")
    assert ChangeRecord(id=1, status="dry-run", dry_run=True, source=Credit(spec="x"),
                        upload=upload).to_json()["upload"] == {"skipped": "MIKU_DRY_RUN", "written": "/x/a.png"}
