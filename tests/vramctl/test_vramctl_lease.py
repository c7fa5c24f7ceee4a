"""The host lease across real processes: a second process of ours waits while the first holds the card's
room, a holder killed with SIGKILL releases it (the kernel drops its flock), one process never waits for
itself, and a waiter is served before a holder that takes the lease again at once (first come, first
served; a waiter killed in the queue is skipped). Ordering comes from the holders' stdout lines and their
shared log, never from a clock."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vramctl import Coordinator, LeaseError, VramSettings

HOLDER = Path(__file__).resolve().parents[1] / "lease_holder.py"


@contextmanager
def holder(lease: Path, hold_s: float | None = None, *, cycles: int = 1,
           log: Path | None = None) -> Iterator[subprocess.Popen]:
    args = [sys.executable, str(HOLDER), str(lease), "--cycles", str(cycles)]
    args += ([] if hold_s is None else ["--hold-s", str(hold_s)]) + ([] if log is None else ["--log", str(log)])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def next_line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The process's next stdout line; fails if none comes within `timeout`."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from pid {proc.pid} within {timeout:g} s"
    return proc.stdout.readline().strip()


def still_silent(proc: subprocess.Popen, timeout: float) -> bool:
    assert proc.stdout is not None
    return not select.select([proc.stdout], [], [], timeout)[0]


def settings(lease: Path, timeout_s: float = 30.0) -> VramSettings:
    return VramSettings(consumers=[], probe="none", lease_file=lease, poll_s=0.02, timeout_s=timeout_s)


async def test_a_second_process_waits_and_names_the_holder(tmp_path):
    lease = tmp_path / "shared" / "vram.lease"
    with holder(lease) as first:
        assert next_line(first) == f"held {first.pid}"
        async with Coordinator(settings(lease, timeout_s=0.3)) as coord:
            with pytest.raises(LeaseError, match=rf"held by pid {first.pid} \(1 MiB, lease_holder\).*0.3 s"):
                async with coord.reserve_mib(1):
                    pass
            names = coord.timeline.names()
            assert "lease-wait" in names and names[-1] == "failed"


def test_a_killed_holder_releases_the_lease_to_the_waiting_process(tmp_path):
    lease = tmp_path / "vram.lease"
    with holder(lease) as first:
        assert next_line(first) == f"held {first.pid}"
        with holder(lease) as second:
            assert still_silent(second, 0.5)  # a bounded look: it must still be waiting
            os.kill(first.pid, signal.SIGKILL)
            assert next_line(second) == f"held {second.pid}"


def test_a_holder_that_ends_its_reservation_lets_the_next_one_in(tmp_path):
    lease = tmp_path / "vram.lease"
    with holder(lease, hold_s=0.3) as first:
        assert next_line(first) == f"held {first.pid}"
        with holder(lease, hold_s=0) as second:
            assert next_line(first) == "released"
            assert next_line(second) == f"held {second.pid}"
            assert next_line(second) == "released"


def log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def queued_or_held(lease: Path, log: Path, waiter: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """Poll until the waiter's ticket is in the lease's queue, then the number of lines in the log: every hold
    granted up to that moment; None when it held the lease before its ticket was seen."""
    queue, mine = lease.with_name(lease.name + ".queue"), f"held {waiter.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mine in log_lines(log):
            return None
        if queue.is_dir() and any(n.split("-")[1:2] == [str(waiter.pid)] for n in os.listdir(queue) if n[:1].isdigit()):
            return len(log_lines(log))
        assert waiter.poll() is None, f"the waiter exited ({waiter.returncode}) without holding the lease"
        time.sleep(0.005)
    raise AssertionError(f"pid {waiter.pid} neither queued for {lease} nor held it within {timeout:g} s")


def test_a_waiter_is_served_before_a_holder_that_takes_the_lease_again_at_once(tmp_path):
    """A busy holder ends a hold and asks again within microseconds (a bot's changes one after another); a
    flock alone lets it win nearly every time over a waiter that tries now and then. Once the waiter is
    queued, the busy one gets the lease at most once more (a turn it asked for before) and then the waiter
    does. A waiter that comes in a gap of the busy one's turns, before its ticket could be seen, says
    nothing about the order: then another waiter tries (without a queue no ticket is ever seen)."""
    lease, log = tmp_path / "vram.lease", tmp_path / "holds.log"
    with holder(lease, hold_s=0.005, cycles=1_000_000, log=log) as busy:
        assert next_line(busy) == f"held {busy.pid}"
        for _ in range(5):
            with holder(lease, hold_s=0, log=log) as waiter:
                queued_at = queued_or_held(lease, log, waiter)
                assert next_line(waiter) == f"held {waiter.pid}"
                assert next_line(waiter) == "released"
            if queued_at is None:
                continue
            lines = log_lines(log)
            after = lines[queued_at:lines.index(f"held {waiter.pid}")]
            assert after in ([], [f"held {busy.pid}"]), f"the busy holder went first {len(after)} times: {after}"
            break
        else:
            pytest.fail("no waiter was ever seen queued: the lease keeps no queue")
        assert busy.poll() is None  # still taking turns


def test_a_waiter_killed_in_the_queue_does_not_block_the_ones_behind_it(tmp_path):
    lease = tmp_path / "vram.lease"
    log = tmp_path / "holds.log"
    with holder(lease) as first:
        assert next_line(first) == f"held {first.pid}"
        with holder(lease, hold_s=0, log=log) as doomed:
            queued_or_held(lease, log, doomed)
            with holder(lease, hold_s=0, log=log) as third:
                queued_or_held(lease, log, third)
                os.kill(doomed.pid, signal.SIGKILL)
                doomed.wait()
                os.kill(first.pid, signal.SIGKILL)
                assert next_line(third) == f"held {third.pid}"
                assert next_line(third) == "released"


async def test_one_process_takes_the_lease_once_for_nested_reservations(tmp_path):
    lease = tmp_path / "vram.lease"
    async with Coordinator(settings(lease, timeout_s=1)) as coord:
        async with coord.reserve_mib(1, note="vision"):
            async with coord.reserve_mib(2, note="detector"):
                assert coord.lease is not None and coord.lease.held
                assert lease.read_text().startswith(f"pid {os.getpid()}")
        assert not coord.lease.held and lease.read_text() == ""
    with holder(lease, hold_s=0) as other:  # and it was really let go
        assert next_line(other) == f"held {other.pid}"


async def test_an_unusable_lease_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    async with Coordinator(settings(blocker / "vram.lease")) as coord:
        with pytest.raises(LeaseError, match="cannot open the host lease file"):
            async with coord.reserve_mib(1):
                pass
        async with Coordinator(settings(tmp_path / "ok.lease")) as ok:  # nothing leaked
            async with ok.reserve_mib(1):
                pass
