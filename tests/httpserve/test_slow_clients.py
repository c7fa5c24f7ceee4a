"""Slow and idle clients against the real servers (httpserve's policy): header and body deadlines, the
connection cap that makes room for a normal request, 503 when every connection is busy, and no EMFILE
flood under a low open-file limit — the panel (``make_server``, as ``mikubot web`` runs it) and
``facedetect serve`` as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from httpserve import RepeatFilter, ServeLimits, uvicorn_config
from mikubot.web import make_server
import loopback
from panel_helpers import panel_settings
from servers import free_port, run_command, run_server, venv_bin

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from hostile import accept_queue  # noqa: E402  (bench/hostile.py --slow, the same attack at full size)

PARTIAL = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # the blank line that would end it never comes


def connect(base: str, first: bytes = PARTIAL) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def trickle_until_answered(sock: socket.socket, line: bytes, every_s: float, within_s: float) -> tuple[bytes, float]:
    """Send ``line`` every ``every_s`` until the server answers or closes; (what it sent, seconds taken)."""
    start = time.monotonic()
    sock.settimeout(every_s)
    while time.monotonic() - start < within_s:
        try:
            data = sock.recv(4096)
            return data, time.monotonic() - start
        except TimeoutError:
            with contextlib.suppress(OSError):
                sock.sendall(line)
        except ConnectionResetError:
            return b"", time.monotonic() - start
    raise AssertionError(f"the server neither answered nor closed within {within_s} s")


def answered_or_closed(sock: socket.socket) -> bytes | None:
    """What the server sent (b"" for a plain close) if it has answered or closed, else None; never blocks."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return None
    try:
        return sock.recv(4096)
    except ConnectionResetError:
        return b""


def wait_for(condition, within_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s} s")
        time.sleep(0.02)


# ---- the panel, with short deadlines ----
@pytest.fixture(scope="module")
def quick_panel(tmp_path_factory: pytest.TempPathFactory, art_dir: Path) -> Iterator[str]:
    settings = panel_settings(tmp_path_factory.mktemp("slow-panel"), art_dir, web_header_timeout_s=0.5,
                              web_body_timeout_s=0.5)
    with run_server(make_server(settings, port=free_port(), log_level="warning")) as base:
        yield base


@pytest.fixture()
def capped_panel(tmp_path: Path, art_dir: Path) -> Iterator[str]:
    """Deadlines too long to help within a test: only the cap of 20 connections acts."""
    settings = panel_settings(tmp_path / "data", art_dir, web_header_timeout_s=60,
                              web_max_connections=20)
    with run_server(make_server(settings, port=free_port(), log_level="warning")) as base:
        yield base


def test_a_trickled_header_gets_408_at_its_deadline(quick_panel: str) -> None:
    with connect(quick_panel) as sock:
        answer, took = trickle_until_answered(sock, b"X-Slow: 1\r\n", every_s=0.1, within_s=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within 0.5 s" in answer
    assert 0.4 <= took < 5, took  # the bytes that kept coming did not extend the deadline


def test_a_silent_connection_is_closed_at_the_header_deadline(quick_panel: str) -> None:
    with connect(quick_panel, first=b"") as sock:
        sock.settimeout(10)
        start = time.monotonic()
        assert sock.recv(4096) == b""  # closed without a word: it never asked for anything
        assert time.monotonic() - start < 5


def test_a_trickled_body_gets_408_at_its_deadline(quick_panel: str) -> None:
    head = (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 60000\r\n\r\ntoken=")
    with connect(quick_panel, first=head) as sock:
        answer, took = trickle_until_answered(sock, b"a", every_s=0.1, within_s=10)
    assert answer.startswith(b"HTTP/1.1 408") and b"body did not arrive within 0.5 s" in answer, answer
    assert took < 5


def test_keep_alive_serves_several_requests_within_the_deadlines(quick_panel: str) -> None:
    """The deadlines restart with each request: a client that is not slow is never cut."""
    with httpx.Client(base_url=quick_panel) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200


def test_a_normal_request_answers_while_slow_connections_fill_the_cap(capped_panel: str) -> None:
    slow = [connect(capped_panel) for _ in range(40)]
    answers: dict[int, bytes] = {}

    def dropped() -> int:
        for i, s in enumerate(slow):
            if i not in answers and (seen := answered_or_closed(s)) is not None:
                answers[i] = seen
        return len(answers)

    try:
        # The cap is 20: each connection beyond it dropped the one that had waited longest (with a 503 when
        # its bytes had been read by then; a burst of connections may be dropped before that, unanswered).
        wait_for(lambda: dropped() >= 20, 10, "20 slow connections dropped")
        assert sorted(answers) == list(range(20))  # the oldest ones
        assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in answers.values()), answers
        # Without the cap making room, the request would wait for a slow connection's 60 s deadline: the
        # client's 10 s would run out. The bound is far from both and leaves a loaded machine its slow moments.
        start = time.monotonic()
        r = loopback.get(f"{capped_panel}/health", timeout=10)
        took = time.monotonic() - start
        assert r.status_code == 200 and took < 5, took
        # The normal request's connection dropped one more; the other 19 are still held (60 s deadline).
        assert wait_for(lambda: dropped() == 21, 5, "one more dropped") and sorted(answers) == list(range(21))
    finally:
        for s in slow:
            s.close()


def test_a_dropped_slow_connection_is_told_503(capped_panel: str) -> None:
    first = connect(capped_panel)
    # A whole request on another connection after ``first`` sent its bytes: the server has read them.
    assert loopback.get(f"{capped_panel}/health", timeout=5).status_code == 200
    others = [connect(capped_panel) for _ in range(20)]
    try:
        answer = wait_for(lambda: answered_or_closed(first), 10, "the oldest slow connection dropped")
        assert answer.startswith(b"HTTP/1.1 503") and b"limit of 20 connections" in answer, answer
        assert b"retry-after: 1" in answer.lower()
        assert all(answered_or_closed(s) is None for s in others)
    finally:
        for s in [first, *others]:
            s.close()


# ---- every connection busy: the new one is refused ----
def test_when_every_connection_is_being_answered_a_new_one_gets_503() -> None:
    release = asyncio.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    async def held(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["path"] == "/hold":
            loops.append(asyncio.get_running_loop())
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn_config(held, host="127.0.0.1", port=free_port(), limits=ServeLimits(max_connections=3),
                            log_level="warning", lifespan="off")
    with run_server(uvicorn.Server(config)) as base:
        holders = [connect(base, b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") for _ in range(3)]
        try:
            wait_for(lambda: len(loops) == 3, 10, "three requests being answered")
            with connect(base, b"GET /quick HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") as extra:
                extra.settimeout(10)
                answer = extra.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503") and b"limit of 3 connections" in answer, answer
            assert all(answered_or_closed(h) is None for h in holders)  # nothing being answered was dropped
        finally:
            if loops:
                loops[0].call_soon_threadsafe(release.set)
            for h in holders:
                h.close()


# ---- the log stays readable ----
def test_repeated_lines_are_rate_limited() -> None:
    logger = logging.getLogger("httpserve.test-repeat")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(RepeatFilter(interval_s=3600))
    try:
        for _ in range(1000):
            logger.error("socket.accept() out of system resource")
        logger.error("a different line")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["socket.accept() out of system resource", "a different line"]


# ---- a real process under a low open-file limit ----
FILE_LIMIT = 256  # the cap becomes 128 connections; 300 slow ones would take every descriptor


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


def limited_process(args: list[str], env: dict[str, str], url: str, log: Path):
    return run_command(args, url=url, env=env, timeout=120, log=log, preexec_fn=_limit_files)


def _flood_and_probe(base: str, n: int) -> tuple[int, float]:
    """Open ``n`` slow connections as fast as the server accepts them (a full accept queue would make the
    kernel drop SYNs, and the client retry a second later: slow for the test, not for the server), then
    time one normal request. A server out of descriptors would not accept it until a slow connection's 60 s
    deadline (the client's 10 s run out first); asyncio's retry of a failed ``accept()`` a second later is
    seen in the log ("out of system resource"), not guessed from a clock."""
    port = int(base.rsplit(":", 1)[1])
    slow = []
    try:
        for _ in range(n):
            wait_for(lambda: accept_queue(port) < 8, 10, "the server accepting")
            slow.append(connect(base))
        start = time.monotonic()
        status = loopback.get(f"{base}/health", timeout=10).status_code
        return status, time.monotonic() - start
    finally:
        for s in slow:
            s.close()


def test_detector_under_a_low_file_limit_keeps_answering(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = {"FACEDETECT_PRELOAD": "false", "FACEDETECT_OUTPUTS": str(tmp_path / "out"),
           "FACEDETECT_HEADER_TIMEOUT_S": "60"}
    with limited_process([venv_bin("facedetect"), "serve", "--port", str(port)], env, f"{base}/health", log):
        status, took = _flood_and_probe(base, 300)
        assert status == 200 and took < 5, (status, took)
    text = log.read_text(errors="replace")
    assert "Too many open files" not in text and "out of system resource" not in text
    assert len(text.splitlines()) < 30, text[-3000:]  # one warning per kind per 10 s, not one per connection


def test_panel_under_a_low_file_limit_keeps_answering(tmp_path: Path, art_dir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "web.log"
    env = {"MIKU_DATA_DIR": str(tmp_path / "data"), "MIKU_SOURCE": f"local:{art_dir}", "MIKU_DRY_RUN": "true",
           "MIKU_WEB_HEADER_TIMEOUT_S": "60"}
    with limited_process([venv_bin("mikubot"), "web", "--port", str(port)], env, f"{base}/health", log):
        status, took = _flood_and_probe(base, 300)
        assert status == 200 and took < 5, (status, took)
    text = log.read_text(errors="replace")
    assert "Too many open files" not in text and "out of system resource" not in text
    assert len(text.splitlines()) < 30, text[-3000:]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
