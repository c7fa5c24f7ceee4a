"""Crash recovery and one change at a time per data directory, across processes: a change's row is
closed when its process dies (whatever its pid — PID 1 in a container — or host said), a live change
of another process (even one claiming another host) is never failed, and a second process is refused
with the running change's id instead of running a change beside it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mikubot.config import Settings
from mikubot.history import ChangeLocked, History
from mikubot.pipeline import AvatarPipeline
from mikubot.runner import ChangeBusy, ChangeRunner
from panel_helpers import sprite_folder

HOLDER = textwrap.dedent("""
    import socket, sys
    socket.gethostname = lambda: "another-host"  # a process on another machine sharing the directory
    from mikubot.history import History
    h = History(sys.argv[1])
    cid = h.start("danbooru", dry_run=True)
    print(cid, flush=True)
    if sys.stdin.readline().strip() == "finish":
        h.finish(cid, "dry-run")
        print("finished", flush=True)
""")


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """Another process in the middle of a change on ``tmp_path``'s history."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "history.sqlite3")], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ})
    assert proc.stdout is not None
    cid = int(proc.stdout.readline())
    try:
        yield proc, cid
    finally:
        proc.kill()
        proc.wait(10)


def test_a_live_change_of_another_process_is_never_failed(tmp_path: Path, holder) -> None:
    proc, cid = holder
    h = History(tmp_path / "history.sqlite3")
    assert h.recovered == [] and h.recover() == []
    assert h.get(cid).status == "running" and h.get(cid).owner_host == "another-host"
    proc.stdin.write("finish\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "finished"
    assert h.get(cid).status == "dry-run"


def test_a_second_process_is_refused_with_the_running_id(tmp_path: Path, holder) -> None:
    _, cid = holder
    h = History(tmp_path / "history.sqlite3")
    with pytest.raises(ChangeLocked) as refused:
        h.start("danbooru", dry_run=True)
    assert refused.value.running_id == cid and "another process" in str(refused.value)


async def test_the_runner_answers_busy_with_the_other_process_change(tmp_path: Path, art_dir: Path, holder) -> None:
    _, cid = holder
    art = sprite_folder(art_dir, tmp_path / "art", ("lucy mad.png",))
    settings = Settings(data_dir=tmp_path, source=f"local:{art}", candidates=1, dry_run=True)
    async with AvatarPipeline(settings) as pipeline:
        runner = ChangeRunner(pipeline)
        with pytest.raises(ChangeBusy) as busy:
            await runner.start_change()
        assert busy.value.running_id == cid
        assert [r.id for r in pipeline.history.list()] == [cid]  # nothing was started, no post was picked


def test_a_killed_change_is_closed_by_the_next_opener(tmp_path: Path, holder) -> None:
    proc, cid = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    h = History(tmp_path / "history.sqlite3")
    assert h.recovered == [cid]
    row = h.get(cid)
    assert row.status == "failed" and "interrupted" in row.error


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and PID namespaces (unshare -p -f --mount-proc)")
def test_a_change_that_died_as_pid_1_is_recovered(tmp_path: Path) -> None:
    """In a container the bot is PID 1, and PID 1 is always alive to anyone who checks by pid."""
    db = tmp_path / "history.sqlite3"
    code = textwrap.dedent(f"""
        import os
        from mikubot.history import History
        assert os.getpid() == 1
        print(History({str(db)!r}).start("danbooru", dry_run=False), flush=True)
        os._exit(9)
    """)
    out = subprocess.run(["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    crashed = int(out.stdout.strip())
    h = History(db)
    assert h.get(crashed).owner_pid == 1
    assert h.recovered == [crashed] and h.get(crashed).status == "failed"
