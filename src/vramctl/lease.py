"""The host lease: one holder of the card's room per host, across processes, through the OS.

A coordinator's own lock orders the reservations of one process. Two bots with their own data directories
(or a bot and a `vramctl free` in a shell) are separate processes: each would see the room free and take it.
With `lease_file` set (``MIKU_VRAM_LEASE_FILE``, a path every process of ours on the host can open — a
shared volume between containers), a process takes an exclusive ``flock`` on that file before it makes room
and keeps it while any of its reservations is held; the others wait for it. The kernel drops a flock when
its holder's file descriptor closes — also when the process is killed — so a crashed holder never blocks
the host. The file holds the current holder's pid and note, for the messages of those who wait.

The lease is per process and counted: a process holding the vision reservation may take the detector's
too without waiting for itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path

from .errors import LeaseError


class HostLease:
    """An exclusive flock on `path`, taken by the first reservation of this process and given back by the last."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._count = 0
        self._gate = asyncio.Lock()  # one acquirer of this process polls the file at a time

    @property
    def held(self) -> bool:
        return self._count > 0

    async def acquire(self, timeout_s: float, poll_s: float, note: str = "") -> float:
        """Take the lease (or count one more use of it); the seconds waited. Raises LeaseError after
        `timeout_s`, naming the holder, or when the file cannot be opened."""
        started = time.monotonic()
        async with self._gate:
            if self._count:
                self._count += 1
                return 0.0
            fd = self._open()
            try:
                while not self._try_lock(fd):
                    if time.monotonic() - started >= timeout_s:
                        raise LeaseError(f"the host lease {self.path} is held by {self.holder() or 'another process'}; "
                                         f"not released within {timeout_s:g} s")
                    await asyncio.sleep(poll_s)
            except BaseException:
                os.close(fd)
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}{f' ({note})' if note else ''}\n".encode(), 0)
            self._fd, self._count = fd, 1
        return time.monotonic() - started

    def release(self) -> None:
        """One use less; the last one unlocks the file (closing the descriptor drops the flock)."""
        if not self._count:
            return
        self._count -= 1
        if self._count == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            os.close(fd)

    def holder(self) -> str:
        """Who holds the lease, as the holder wrote it ("pid 123 (note)"); empty when unknown."""
        try:
            return self.path.read_text(errors="replace").strip()
        except OSError:
            return ""

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise LeaseError(f"cannot open the host lease file {self.path}: {exc.strerror}") from exc

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
