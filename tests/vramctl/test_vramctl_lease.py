"""The host lease across real processes: a second process of ours waits while the first holds the card's
room, a holder killed with SIGKILL releases it (the kernel drops its flock), and one process never waits
for itself. Ordering comes from the holders' stdout lines, never from a clock."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vramctl import Coordinator, LeaseError, VramSettings

HOLDER = Path(__file__).resolve().parents[1] / "lease_holder.py"


@contextmanager
def holder(lease: Path, hold_s: float | None = None) -> Iterator[subprocess.Popen]:
    args = [sys.executable, str(HOLDER), str(lease)] + ([] if hold_s is None else ["--hold-s", str(hold_s)])
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
