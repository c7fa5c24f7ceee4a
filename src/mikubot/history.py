"""The change history in SQLite: every avatar change, the posts already used, and the avatars to restore.

A change row is written twice: ``start`` inserts it as ``running`` before any work; ``finish`` fills
every result column and the final status in one transaction. There is never a half-written finished row.

One change at a time per data directory — the one rule, for every caller in this process (CLI, bot,
panel: ``ChangeRunner`` maps the refusal to its "busy") and across processes: ``claim`` (or ``start``
without a claim) takes an exclusive ``flock`` on ``<data dir>/change.lock``, refusing with
``ChangeLocked`` and the running change's id while any change holds it, here or in another process;
``finish`` lets it go; the kernel lets go when a process dies. So a ``running``
row whose lock is free has no live owner: recovery (when a ``History`` opens, and whenever a change
starts) marks it ``failed``. This does not depend on process ids — which say nothing under PID 1 in a
container, or for a process on another host sharing the directory. Each row records its owner's
instance id (random per process) and the machine's boot id, so a process never closes its own rows.

A full (or failing) disk makes every write raise ``mikubot.storage.StorageError`` (``StorageFull`` for no
space), never a bare ``sqlite3`` error. ``finish`` cannot fail that way: a final row that cannot be written
is kept in memory — ``get`` and ``list`` show it finished at once, so its event stream ends — and written
by the next operation on the history once the disk takes writes again (``flush_pending``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sqlite3
import threading
import typing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mikubot import storage
from mikubot.errors import MikubotError
from mikubot.events import ProgressEvent
from mikubot.record_parts import CandidateSummary, Verification
from mikubot.redact import scrub, strip_userinfo
from vramctl.timeline import TimelineEvent

log = logging.getLogger(__name__)

SQLITE_MIN, SQLITE_MAX = -(2**63), 2**63 - 1  # the range of an SQLite INTEGER
STATUSES = ("running", "applied", "dry-run", "failed")
Status = Literal["running", "applied", "dry-run", "failed"]
FINAL_STATUSES = STATUSES[1:]

# Columns a finished change may set.
RESULT_COLUMNS = (
    "source", "post_key", "page_url", "image_url", "artist", "tags", "rating", "face_box", "crop_box",
    "crop_method", "fallbacks", "detector_backend", "verification", "description", "timings",
    "vram_timeline", "candidates", "events", "avatar_path", "report_path", "uploaded", "error",
    "banner_path", "banner_box", "banner_reason", "banner_size",
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


class HistoryRow(BaseModel):
    """One change as the history table holds it, read back (``get``, ``list``). Flat, unlike the
    ``mikubot.record.ChangeRecord`` it was written from: ``source`` is the source's *name* (the record's is
    the whole credit, whose other fields are the columns ``post_key`` ... ``rating``), ``timings`` is the
    record's ``timings_ms``, ``events`` holds the change's progress events, and the record's crop reason,
    reservations and files are in the report file only. Fields in the table's column order (the panel's
    JSON keeps it); JSON columns are decoded into their models (``mikubot.record_parts``, the events'
    ``mikubot.events.ProgressEvent``), which take rows an older version wrote."""

    model_config = ConfigDict(extra="ignore")

    id: int
    status: Status
    started_at: str
    finished_at: str | None = None
    source_spec: str
    dry_run: bool
    restored_from: int | None = None
    owner_host: str | None = None
    owner_pid: int | None = None
    source: str | None = None
    post_key: str | None = None
    page_url: str | None = None
    image_url: str | None = None
    artist: str | None = None
    tags: list[str] | None = None
    rating: str | None = None
    face_box: list[float] | None = None
    crop_box: list[float] | None = None
    crop_method: str | None = None
    fallbacks: list[str] | None = None
    detector_backend: str | None = None
    verification: Verification | None = None
    description: str | None = None
    timings: dict[str, float] | None = None
    vram_timeline: list[TimelineEvent] | None = None
    candidates: list[CandidateSummary] | None = None
    events: list[ProgressEvent] | None = None
    avatar_path: str | None = None
    report_path: str | None = None
    uploaded: bool = False
    error: str | None = None
    owner_instance: str | None = None
    owner_boot: str | None = None
    banner_path: str | None = None
    banner_box: list[float] | None = None
    banner_reason: str | None = None
    banner_size: list[int] | None = None
    guild_id: int | None = None



def _stored_as_json(annotation: Any) -> bool:
    """A list, a dict or a model (``X | None`` too): what a column holds as JSON text."""
    if typing.get_origin(annotation) in (list, dict):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_stored_as_json(a) for a in typing.get_args(annotation) if a is not type(None))


# The columns stored as JSON text and decoded on the way out: the row's list, dict and model fields.
JSON_COLUMNS = tuple(name for name, f in HistoryRow.model_fields.items() if _stored_as_json(f.annotation))


@dataclass
class Claim:
    """One change's hold on the data directory's change lock (``History.claim``); ``change_id`` once its
    row is written."""

    change_id: int | None = None


class HistoryError(MikubotError):
    """A history operation a person asked for cannot be done (unknown id, nothing to restore)."""


class ChangeLocked(HistoryError):
    """Another process runs a change on this data directory; ``running_id`` is its row (when known)."""

    def __init__(self, running_id: int | None, lock_path: Path) -> None:
        self.running_id = running_id
        what = f"change #{running_id}" if running_id is not None else "a change"
        super().__init__(f"another process is running {what} on this data directory (it holds {lock_path}); "
                         "wait for it to finish")


INSTANCE_ID = uuid.uuid4().hex  # this process; rows it owns are never "recovered" by it
LOCK_FILE = "change.lock"
# Columns added after the first schema. ``guild_id``: the server whose own look the change set (NULL: the
# global profile).
MIGRATIONS = {"owner_instance": "TEXT", "owner_boot": "TEXT",  # columns added after the first schema
              "banner_path": "TEXT", "banner_box": "TEXT", "banner_reason": "TEXT", "banner_size": "TEXT",
              "guild_id": "INTEGER"}
ALL_SCOPES = "all"  # ``list``'s default: the global profile's changes and every server's


def boot_id() -> str:
    """The machine's boot id (Linux), or its host name elsewhere: recorded with each row's owner."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class History:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path.parent / LOCK_FILE
        self._lock_fd: int | None = None  # the change lock's descriptor while a change holds it
        self._claim: Claim | None = None  # the one claim holding it
        self._claiming = threading.Lock()  # claims come from worker threads
        # Final rows ``finish`` could not write (the disk was full): id -> the UPDATE's column values.
        self._pending: dict[int, dict[str, Any]] = {}
        self._pending_lock = threading.Lock()
        with self._tx() as db:
            db.executescript(SCHEMA)
            have = {r["name"] for r in db.execute("PRAGMA table_info(changes)")}
            for column, kind in MIGRATIONS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE changes ADD COLUMN {column} {kind}")
        self.recovered = self.recover()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per operation: safe from any thread, and the bot and the CLI can
        # share the file (WAL lets readers run beside a writer).
        try:
            db = sqlite3.connect(self.path, timeout=10.0)
        except sqlite3.Error as exc:
            raise (storage.from_sqlite_error(exc, self.path) or exc) from exc
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            with db:
                yield db
        except sqlite3.Error as exc:
            mapped = storage.from_sqlite_error(exc, self.path)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            db.close()

    # --- life of a change --------------------------------------------------------------------------------
    def claim(self) -> Claim:
        """Take the data directory's change lock for one change (``start`` it with the claim, or
        ``release`` it unused). ``ChangeLocked`` while a change holds it, in this process or another."""
        with self._claiming:
            if self._claim is not None:
                raise ChangeLocked(self._claim.change_id, self.lock_path)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(fd)
                raise ChangeLocked(self._foreign_running_id(), self.lock_path) from exc
            self._lock_fd, self._claim = fd, Claim()
            return self._claim

    def release(self, claim: Claim) -> None:
        """Let go of ``claim`` when it has no running row (a change that ended before its row was written);
        its row's ``finish`` lets go otherwise. Safe to call more than once."""
        with self._claiming:
            if self._claim is claim and claim.change_id is None:
                self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
        self._lock_fd, self._claim = None, None

    def start(self, source_spec: str, *, dry_run: bool, restored_from: int | None = None,
              guild_id: int | None = None, claim: Claim | None = None) -> int:
        """Insert a ``running`` row, holding the data directory's change lock until ``finish``.
        ``guild_id``: the server whose look it changes (None: the global profile). ``claim``: the lock taken
        already (``claim``); without one it is taken here.

        Raises ``ChangeLocked`` when a change runs on this data directory (in this process or another).
        """
        self.flush_pending()
        claim = claim or self.claim()
        try:
            self._recover_rows()  # under the lock: any other running row is an orphan
            with self._tx() as db:
                cur = db.execute(
                    "INSERT INTO changes (status, started_at, source_spec, dry_run, restored_from, owner_host,"
                    " owner_pid, owner_instance, owner_boot, guild_id) VALUES ('running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (_now(), strip_userinfo(source_spec), int(dry_run), restored_from, socket.gethostname(),
                     os.getpid(), INSTANCE_ID, boot_id(), guild_id),
                )
                change_id = int(cur.lastrowid)
            claim.change_id = change_id
            return change_id
        except BaseException:
            self.release(claim)
            raise

    def _foreign_running_id(self) -> int | None:
        with self._tx() as db:
            row = db.execute("SELECT id FROM changes WHERE status = 'running' AND owner_instance IS NOT ?"
                             " ORDER BY id DESC LIMIT 1", (INSTANCE_ID,)).fetchone()
        return int(row["id"]) if row else None

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
        for path_column in ("report_path", "banner_path"):
            if values.get(path_column) is not None:
                values[path_column] = str(values[path_column])
        final = {"status": status, "finished_at": _now(), **values}
        self.flush_pending()
        try:
            if not self._write_final(change_id, final):
                raise HistoryError(f"change {change_id} is not running (already finished or unknown)")
        except storage.StorageError as exc:
            with self._pending_lock:
                self._pending[change_id] = final
            log.warning("change #%s ended %s, but the history cannot be written (%s); it is kept in memory and "
                        "written as soon as the disk takes writes again", change_id, status, exc)
        finally:
            with self._claiming:
                if self._claim is not None and self._claim.change_id == change_id:  # closed (or was): the lock goes
                    self._unlock()

    def _write_final(self, change_id: int, final: dict[str, Any]) -> bool:
        """UPDATE a running row to its final values; False when it was not running (closed elsewhere)."""
        assignments = ", ".join(f"{k} = ?" for k in final)
        with self._tx() as db:
            cur = db.execute(f"UPDATE changes SET {assignments} WHERE id = ? AND status = 'running'",
                             (*final.values(), change_id))
            return cur.rowcount == 1

    @property
    def pending(self) -> list[int]:
        """Ids of finished changes whose final row is still only in memory (the disk was full)."""
        with self._pending_lock:
            return sorted(self._pending)

    def flush_pending(self) -> list[int]:
        """Write the final rows kept in memory; the ids written. Stops at the first one the disk still refuses
        (``StorageError`` is not raised: the rows stay pending)."""
        written: list[int] = []
        with self._pending_lock:
            for change_id, final in list(self._pending.items()):
                try:
                    closed_here = self._write_final(change_id, final)
                except storage.StorageError:
                    break
                del self._pending[change_id]
                if closed_here:  # else another process's recovery closed it meanwhile: its row stands
                    written.append(change_id)
                    log.info("change #%s: its final row is written to the history now", change_id)
        return written

    def _with_pending(self, row: sqlite3.Row) -> HistoryRow:
        """A row as stored, or — a running row whose final values are still in memory — as finished."""
        out = dict(row)
        if out["status"] == "running":
            with self._pending_lock:
                final = self._pending.get(out["id"])
            if final is not None:
                out.update(final)
        return HistoryRow.model_validate(_decode(out))

    def recover(self) -> list[int]:
        """Mark changes whose owner is gone as failed; returns their ids.

        Only when the change lock is free (no process runs a change on this data directory) — then no
        other process's ``running`` row can be alive, whatever its pid or host said.
        """
        self.flush_pending()
        if self._lock_fd is not None:
            return self._recover_rows()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # a change runs elsewhere; its process closes its own row
            return self._recover_rows()
        finally:
            os.close(fd)

    def _recover_rows(self) -> list[int]:
        """Under the change lock: every running row not owned by this process is an orphan."""
        with self._tx() as db:
            rows = db.execute("SELECT id, owner_boot FROM changes WHERE status = 'running' AND owner_instance IS NOT ?",
                              (INSTANCE_ID,)).fetchall()
            for r in rows:
                why = "the machine restarted" if r["owner_boot"] and r["owner_boot"] != boot_id() else "its process ended"
                db.execute(
                    "UPDATE changes SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND status = 'running'",
                    (_now(), f"interrupted: {why} during this change (found later)", r["id"]),
                )
        return [r["id"] for r in rows]

    # --- reading -----------------------------------------------------------------------------------------------
    def get(self, change_id: int) -> HistoryRow | None:
        if not SQLITE_MIN <= change_id <= SQLITE_MAX:
            return None  # no row can have it (and sqlite3 would raise OverflowError)
        self.flush_pending()
        with self._tx() as db:
            row = db.execute("SELECT * FROM changes WHERE id = ?", (change_id,)).fetchone()
        return self._with_pending(row) if row else None

    def list(self, limit: int = 20, offset: int = 0, *, scope: int | None | str = ALL_SCOPES) -> list[HistoryRow]:
        """Newest first. ``scope``: ``"all"``, None (the global profile's changes only) or a server's id."""
        limit, offset = max(0, min(limit, SQLITE_MAX)), max(0, min(offset, SQLITE_MAX))
        where, args = _scope_filter(scope)
        self.flush_pending()
        with self._tx() as db:
            rows = db.execute(f"SELECT * FROM changes{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                              (*args, limit, offset)).fetchall()
        return [self._with_pending(r) for r in rows]

    def restorable(self, change_id: int) -> Path:
        """The avatar file of an earlier change, or a HistoryError saying why it cannot be restored."""
        row = self.get(change_id)
        if row is None:
            raise HistoryError(f"no change with id {change_id}; see `mikubot pfp history`")
        if not row.avatar_path:
            raise HistoryError(f"change {change_id} produced no avatar ({row.status}: {row.error or 'no reason recorded'})")
        path = Path(row.avatar_path)
        if not path.is_file():
            raise HistoryError(f"the avatar of change {change_id} is gone from {path}")
        return path

    # --- used posts ---------------------------------------------------------------------------------------------
    def mark_used(self, source: str, key: str, change_id: int) -> None:
        self.flush_pending()
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO used_posts (source, key, change_id, used_at) VALUES (?, ?, ?, ?)",
                (source, key, change_id, _now()),
            )

    def used_keys(self, source: str) -> set[str]:
        with self._tx() as db:
            rows = db.execute("SELECT key FROM used_posts WHERE source = ?", (source,)).fetchall()
        return {r["key"] for r in rows}


def _scope_filter(scope: int | None | str) -> tuple[str, tuple[Any, ...]]:
    if scope == ALL_SCOPES:
        return "", ()
    if scope is None:
        return " WHERE guild_id IS NULL", ()
    if isinstance(scope, bool) or not isinstance(scope, int) or not SQLITE_MIN <= scope <= SQLITE_MAX:
        raise ValueError(f"scope must be {ALL_SCOPES!r}, None (the global profile) or a server id, not {scope!r}")
    return " WHERE guild_id = ?", (scope,)


def _decode(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for k in JSON_COLUMNS:
        if out.get(k) is not None:
            out[k] = json.loads(out[k])
    out["uploaded"] = bool(out["uploaded"])
    out["dry_run"] = bool(out["dry_run"])
    return out
