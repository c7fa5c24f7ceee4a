"""The change history in SQLite: every avatar change, the posts already used, and the avatars to restore.

A change row is written twice: ``start`` inserts it as ``running`` before any work; ``finish`` fills
every result column and the final status in one transaction. A process that dies in between leaves a
``running`` row, which the next ``History`` opened on the file marks ``failed`` (only if the process
that owned it is gone, so a CLI run beside a live bot does not fail the bot's change). There is
never a half-written finished row.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mikubot.redact import scrub, strip_userinfo

SQLITE_MIN, SQLITE_MAX = -(2**63), 2**63 - 1  # the range of an SQLite INTEGER
STATUSES = ("running", "applied", "dry-run", "failed")
FINAL_STATUSES = STATUSES[1:]

# Columns a finished change may set; JSON columns are stored as text and decoded on the way out.
JSON_COLUMNS = ("tags", "fallbacks", "face_box", "crop_box", "verification", "timings", "vram_timeline", "candidates", "events")
RESULT_COLUMNS = (
    "source", "post_key", "page_url", "image_url", "artist", "tags", "rating", "face_box", "crop_box",
    "crop_method", "fallbacks", "detector_backend", "verification", "description", "timings",
    "vram_timeline", "candidates", "events", "avatar_path", "report_path", "uploaded", "error",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    status           TEXT NOT NULL CHECK (status IN ('running', 'applied', 'dry-run', 'failed')),
    started_at       TEXT NOT NULL,
    finished_at      TEXT,
    source_spec      TEXT NOT NULL,
    dry_run          INTEGER NOT NULL,
    restored_from    INTEGER REFERENCES changes(id),
    owner_host       TEXT NOT NULL,
    owner_pid        INTEGER NOT NULL,
    source           TEXT,
    post_key         TEXT,
    page_url         TEXT,
    image_url        TEXT,
    artist           TEXT,
    tags             TEXT,
    rating           TEXT,
    face_box         TEXT,
    crop_box         TEXT,
    crop_method      TEXT,
    fallbacks        TEXT,
    detector_backend TEXT,
    verification     TEXT,
    description      TEXT,
    timings          TEXT,
    vram_timeline    TEXT,
    candidates       TEXT,
    events           TEXT,
    avatar_path      TEXT,
    report_path      TEXT,
    uploaded         INTEGER NOT NULL DEFAULT 0,
    error            TEXT
);
CREATE TABLE IF NOT EXISTS used_posts (
    source    TEXT NOT NULL,
    key       TEXT NOT NULL,
    change_id INTEGER NOT NULL REFERENCES changes(id),
    used_at   TEXT NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX IF NOT EXISTS changes_status ON changes(status);
"""


class HistoryError(Exception):
    """A history operation a person asked for cannot be done (unknown id, nothing to restore)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class History:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as db:
            db.executescript(SCHEMA)
        self.recovered = self.recover()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per operation: safe from any thread, and the bot and the CLI can
        # share the file (WAL lets readers run beside a writer).
        db = sqlite3.connect(self.path, timeout=10.0)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            with db:
                yield db
        finally:
            db.close()

    # --- life of a change --------------------------------------------------------------------------------
    def start(self, source_spec: str, *, dry_run: bool, restored_from: int | None = None) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO changes (status, started_at, source_spec, dry_run, restored_from, owner_host, owner_pid)"
                " VALUES ('running', ?, ?, ?, ?, ?, ?)",
                (_now(), strip_userinfo(source_spec), int(dry_run), restored_from, socket.gethostname(), os.getpid()),
            )
            return int(cur.lastrowid)

    def finish(self, change_id: int, status: str, **fields: Any) -> None:
        """Close a running change with its final ``status`` and results, atomically."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"final status must be one of {FINAL_STATUSES}, not {status!r}")
        unknown = set(fields) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown history columns: {', '.join(sorted(unknown))}")
        fields = scrub(fields)  # no URL credentials are ever stored (see mikubot.redact)
        values = {k: (json.dumps(v) if k in JSON_COLUMNS and v is not None else v) for k, v in fields.items()}
        if "uploaded" in values:
            values["uploaded"] = int(bool(values["uploaded"]))
        if "avatar_path" in values and values["avatar_path"] is not None:
            values["avatar_path"] = str(values["avatar_path"])
        if "report_path" in values and values["report_path"] is not None:
            values["report_path"] = str(values["report_path"])
        assignments = ", ".join(f"{k} = ?" for k in values)
        sql = f"UPDATE changes SET status = ?, finished_at = ?{', ' + assignments if assignments else ''} WHERE id = ? AND status = 'running'"
        with self._tx() as db:
            cur = db.execute(sql, (status, _now(), *values.values(), change_id))
            if cur.rowcount != 1:
                raise HistoryError(f"change {change_id} is not running (already finished or unknown)")

    def recover(self) -> list[int]:
        """Mark changes whose process is gone as failed; returns their ids."""
        host = socket.gethostname()
        with self._tx() as db:
            rows = db.execute("SELECT id, owner_host, owner_pid FROM changes WHERE status = 'running'").fetchall()
            dead = [r["id"] for r in rows if r["owner_host"] != host or not _pid_alive(r["owner_pid"])]
            for cid in dead:
                db.execute(
                    "UPDATE changes SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND status = 'running'",
                    (_now(), "interrupted: the process ended during this change (found at start-up)", cid),
                )
        return dead

    # --- reading -----------------------------------------------------------------------------------------------
    def get(self, change_id: int) -> dict[str, Any] | None:
        if not SQLITE_MIN <= change_id <= SQLITE_MAX:
            return None  # no row can have it (and sqlite3 would raise OverflowError)
        with self._tx() as db:
            row = db.execute("SELECT * FROM changes WHERE id = ?", (change_id,)).fetchone()
        return _decode(row) if row else None

    def list(self, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        limit, offset = max(0, min(limit, SQLITE_MAX)), max(0, min(offset, SQLITE_MAX))
        with self._tx() as db:
            rows = db.execute("SELECT * FROM changes ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [_decode(r) for r in rows]

    def restorable(self, change_id: int) -> Path:
        """The avatar file of an earlier change, or a HistoryError saying why it cannot be restored."""
        row = self.get(change_id)
        if row is None:
            raise HistoryError(f"no change with id {change_id}; see `mikubot pfp history`")
        if not row["avatar_path"]:
            raise HistoryError(f"change {change_id} produced no avatar ({row['status']}: {row['error'] or 'no reason recorded'})")
        path = Path(row["avatar_path"])
        if not path.is_file():
            raise HistoryError(f"the avatar of change {change_id} is gone from {path}")
        return path

    # --- used posts ---------------------------------------------------------------------------------------------
    def mark_used(self, source: str, key: str, change_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO used_posts (source, key, change_id, used_at) VALUES (?, ?, ?, ?)",
                (source, key, change_id, _now()),
            )

    def used_keys(self, source: str) -> set[str]:
        with self._tx() as db:
            rows = db.execute("SELECT key FROM used_posts WHERE source = ?", (source,)).fetchall()
        return {r["key"] for r in rows}


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for k in JSON_COLUMNS:
        if out.get(k) is not None:
            out[k] = json.loads(out[k])
    out["uploaded"] = bool(out["uploaded"])
    out["dry_run"] = bool(out["dry_run"])
    return out
