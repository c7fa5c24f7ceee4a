"""The SQLite change history: running → finished rows, crash recovery, used posts, restore."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mikubot.history import RESULT_COLUMNS, ChangeLocked, History, HistoryError
from mikubot.record import ChangeRecord, Credit


def test_change_starts_running_and_finishes_atomically(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    cid = h.start("danbooru", dry_run=True)
    row = h.get(cid)
    assert row.status == "running" and row.finished_at is None and row.dry_run is True
    h.finish(cid, "dry-run", source="danbooru", post_key="123", tags=["hatsune_miku", "solo"],
             face_box=[1.0, 2.0, 3.0, 4.0], crop_box=[0, 0, 10, 10], timings={"search": 12.5},
             vram_timeline=[{"t": 0.0, "event": "reserve"}], avatar_path=tmp_path / "a.png", uploaded=False,
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
    columns = record.history_columns(events=[{"stage": "record", "status": "done"}])
    assert set(columns) == set(RESULT_COLUMNS)
    h = History(tmp_path / "h.sqlite3")
    cid = h.start("danbooru", dry_run=False)
    h.finish(cid, record.status, **columns)
    row = h.get(cid)
    assert (row.source, row.post_key, row.tags, row.rating) == ("danbooru", "42", ["solo"], "g")
    assert row.timings == record.timings_ms and row.crop_box == record.crop_box and row.uploaded is True
    assert row.events == [{"stage": "record", "status": "done"}]


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
