"""The host lease: one holder of the card's room per host, across processes, through the OS.

A coordinator's own lock orders the reservations of one process. Two bots with their own data directories
(or a bot and a `vramctl free` in a shell) are separate processes: each would see the room free and take it.
With `lease_file` set (``MIKU_VRAM_LEASE_FILE``, a path every process of ours on the host can open — a
shared volume between containers), a process takes an exclusive ``flock`` on that file before it makes room
and keeps it while any of its reservations is held; the others wait for it. The kernel drops a flock when
its holder's file descriptor closes — also when the process is killed — so a crashed holder never blocks
the host. The file holds the current holder's pid and note, for the messages of those who wait.

**First come, first served.** A flock alone is no queue: a holder that ends a change and starts the next
one takes the lock again within microseconds, while a waiter only tries now and then, so a busy bot would
starve its neighbour. So each waiter first queues a *ticket* in ``<lease_file>.queue/``: a file named by a
host-wide sequence number (counted in ``<lease_file>.queue/seq`` under its own short flock), which its
owner keeps flocked while it waits; only the oldest live ticket may take the lease, and its owner removes
it once granted. A ticket whose flock is free belongs to a process that died waiting: whoever finds it
removes it. A ticket appears under its final name already locked (made under a temporary name, locked,
then renamed), so a live waiter is never taken for a dead one.

The lease is per process and counted: a process holding the vision reservation may take the detector's
too without waiting for itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import time
from pathlib import Path

from .errors import LeaseError

SEQ_FILE = "seq"  # in the queue folder: the next ticket's number
TICKET_DIGITS = 20


class HostLease:
    """An exclusive flock on `path`, taken by the first reservation of this process and given back by the last;
    waiters are served in the order they came (their tickets in `queue`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.queue = self.path.with_name(self.path.name + ".queue")
        self._fd: int | None = None
        self._count = 0
        self._gate = asyncio.Lock()  # one acquirer of this process polls the file at a time

    @property
    def held(self) -> bool:
        return self._count > 0

    async def acquire(self, timeout_s: float, poll_s: float, note: str = "") -> float:
        """Take the lease (or count one more use of it); the seconds waited. Raises LeaseError after
        `timeout_s`, naming the holder, or when the files cannot be opened."""
        started = time.monotonic()
        async with self._gate:
            if self._count:
                self._count += 1
                return 0.0
            fd = self._open()
            try:
                ticket = self._enqueue()
            except BaseException:
                os.close(fd)
                raise
            try:
                while not (self._first_in_line(ticket[1]) and self._try_lock(fd)):
                    if time.monotonic() - started >= timeout_s:
                        raise LeaseError(f"the host lease {self.path} is held by {self.holder() or 'another process'}; "
                                         f"not released within {timeout_s:g} s")
                    await asyncio.sleep(poll_s)
            except BaseException:
                os.close(fd)
                raise
            finally:
                self._dequeue(*ticket)
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

    # --- the queue -------------------------------------------------------------------------------------------
    def _enqueue(self) -> tuple[int, str]:
        """This process's ticket, locked and in place under the next number: (its descriptor, its name)."""
        try:
            self.queue.mkdir(exist_ok=True)
            seq_fd = os.open(self.queue / SEQ_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise LeaseError(f"cannot open the host lease's queue {self.queue}: {exc.strerror}") from exc
        temporary = self.queue / f".new-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            fcntl.flock(seq_fd, fcntl.LOCK_EX)  # held for a few system calls only
            number = int(os.pread(seq_fd, 32, 0) or b"0")
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold it
            name = f"{number:0{TICKET_DIGITS}d}-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(temporary, self.queue / name)  # appears locked: never mistaken for a dead waiter's
            os.ftruncate(seq_fd, 0)
            os.pwrite(seq_fd, str(number + 1).encode(), 0)
        except (OSError, ValueError) as exc:
            temporary.unlink(missing_ok=True)
            raise LeaseError(f"cannot queue for the host lease in {self.queue}: {exc}") from exc
        finally:
            os.close(seq_fd)  # and its flock with it
        return fd, name

    def _dequeue(self, fd: int, name: str) -> None:
        try:
            (self.queue / name).unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _first_in_line(self, mine: str) -> bool:
        """No live ticket older than ours; dead ones met on the way are removed."""
        for name in sorted(self._tickets()):
            if name >= mine:
                return True
            if self._alive(name):
                return False
        return True

    def _tickets(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.queue) if n[:1].isdigit()]
        except FileNotFoundError:
            return []

    def _alive(self, name: str) -> bool:
        """Whether a ticket's owner still waits: it holds the ticket's flock until it leaves the queue."""
        try:
            fd = os.open(self.queue / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # granted or gone since the listing
        try:
            if not self._try_lock(fd):
                return True
            (self.queue / name).unlink(missing_ok=True)  # its owner died waiting
            return False
        finally:
            os.close(fd)

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
