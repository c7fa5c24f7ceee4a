"""When the data directory cannot be written: a full disk (or quota), a read-only or failing one.

Two foreign errors say so — ``OSError`` from a file write (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EIO``) and
``sqlite3.OperationalError`` from the history (``SQLITE_FULL``, ``SQLITE_IOERR_*``: SQLite reports a WAL or
journal it cannot grow as a "disk I/O error") — and both are mapped here, once, to ``StorageError``:
``StorageFull`` (the panel's 507 Insufficient Storage) when there is no room, ``StorageError`` (503)
otherwise. The message names the place that could not be written and the space left on its file system,
so the owner knows what to free. ``StorageError`` is an ``OSError``: code that already survives a failed
optional write (a thumbnail, the report) keeps doing so.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from mikubot.errors import MikubotError

NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
UNWRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EIO})
SQLITE_FULL = 13  # sqlite3.h: "Insertion failed because database is full"
SQLITE_IOERR = 10  # sqlite3.h: "Some kind of disk I/O error occurred" (extended codes keep it in the low byte)
LOW_SPACE_BYTES = 1 << 20  # an I/O error with less than this free is taken for a full disk


class StorageError(MikubotError, OSError):
    """The data directory (or the file system under it) cannot be written; ``where`` is what failed."""

    status_code = 503

    def __init__(self, where: Path, reason: str, code: int = errno.EIO) -> None:
        self.where = where
        self.reason = reason
        super().__init__(code, f"cannot write {where}: {reason}")

    def __str__(self) -> str:
        return self.strerror or self.reason


class StorageFull(StorageError):
    """No space left (or over quota) where the data directory lives."""

    status_code = 507


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent); None if unknown."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _describe_free(path: Path) -> str:
    free = free_bytes(path)
    return "" if free is None else f" ({free / 1024:.0f} KiB free on its file system)"


def _full(where: Path) -> StorageFull:
    return StorageFull(where, f"the disk is full{_describe_free(where)}; free some space there", errno.ENOSPC)


def from_os_error(exc: OSError, where: Path) -> StorageError | None:
    """The ``StorageError`` an ``OSError`` from writing ``where`` stands for, or None for any other error."""
    if isinstance(exc, StorageError):
        return exc
    if exc.errno in NO_ROOM_ERRNOS:
        return _full(where)
    if exc.errno in UNWRITABLE_ERRNOS:
        return StorageError(where, f"{exc.strerror or exc}{_describe_free(where)}", exc.errno)
    return None


def from_sqlite_error(exc: sqlite3.Error, where: Path) -> StorageError | None:
    """The ``StorageError`` an SQLite error on the database ``where`` stands for, or None."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    if code & 0xFF == SQLITE_FULL:
        return _full(where)
    if code & 0xFF == SQLITE_IOERR:
        free = free_bytes(where)
        if free is not None and free < LOW_SPACE_BYTES:
            return _full(where)
        return StorageError(where, f"SQLite: {exc}{_describe_free(where)}")
    return None
