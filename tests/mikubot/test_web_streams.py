"""Event streams are bounded: only a login or the token opens one, each client and the panel as a whole
have a cap (429 / 503 with Retry-After past it), a change run by another process is polled once for all
of its streams, and ``Last-Event-ID`` of any shape is read without a 500."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import loopback
from panel_helpers import TOKEN, bearer, panel_settings, read_sse, sprite_folder, until
from servers import serve_app

from mikubot.history import History
from mikubot.web import create_app
from mikubot.web.state import PanelState

PER_CLIENT, TOTAL = 2, 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("streams-data")


@pytest.fixture(scope="module")
def panel(art_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PanelState]]:
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"), ("lucy happy.png",))
    app = create_app(panel_settings(data_dir, art, web_max_streams=TOTAL, web_max_streams_per_client=PER_CLIENT))
    with serve_app(app) as url:
        yield url, app.state.panel


def client_from(base: str, address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x address is this machine)."""
    return httpx.Client(base_url=base, timeout=30, transport=httpx.HTTPTransport(local_address=address))


def test_a_stream_needs_a_login_or_the_token(panel: tuple[str, PanelState], data_dir: Path) -> None:
    base, _ = panel
    history = History(data_dir / "history.sqlite3")
    cid = history.start("local:cli", dry_run=True)
    history.finish(cid, "failed", error="nothing", events=[])
    url = f"{base}/profile-picture/changes/{cid}/events"
    r = loopback.get(url, timeout=30)
    assert r.status_code == 401 and "login" in r.json()["detail"]
    assert loopback.get(url, headers=bearer("wrong"), timeout=30).status_code == 401
    with httpx.Client(base_url=base, timeout=30) as c:
        assert c.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
        frames = read_sse(c, url)  # the session cookie alone, no bearer header
    assert frames[-1] == ("end", None, {"change_id": cid, "status": "failed", "error": "nothing"})


def test_streams_share_one_poll_and_are_capped(panel: tuple[str, PanelState], data_dir: Path) -> None:
    """Four streams on a change of another process (two clients, two each): one polling task, the fifth
    stream refused (429 for a client at its cap, 503 for a new client past the total), /health at once; all
    four end when the change does, and every claim is given back."""
    base, state = panel
    history = History(data_dir / "history.sqlite3")
    cid = history.start("local:cli", dry_run=True)  # owned by a live process: polled, never recovered
    url = f"/profile-picture/changes/{cid}/events"
    results: list[list] = []
    clients = [client_from(base, "127.0.0.1"), client_from(base, "127.0.0.2")]
    readers = [threading.Thread(target=lambda c=c: results.append(read_sse(c, url))) for c in clients for _ in range(2)]
    try:
        for t in readers:
            t.start()
        until(lambda: state.streams.open == TOTAL and state.watch.polling == 1 and state.watch.waiting == TOTAL,
              "four streams on one poll")

        again = clients[0].get(url, headers=bearer())
        assert again.status_code == 429 and int(again.headers["retry-after"]) > 0
        assert "MIKU_WEB_MAX_STREAMS_PER_CLIENT" in again.json()["detail"]
        with client_from(base, "127.0.0.3") as third:
            full = third.get(url, headers=bearer())
            assert full.status_code == 503 and int(full.headers["retry-after"]) > 0
            # Not starved by the four streams: answered (a starved pool would hang until the client's 30 s);
            # the bound leaves a loaded machine its slow moments.
            t0 = time.monotonic()
            assert third.get("/health").status_code == 200
            assert time.monotonic() - t0 < 10

        history.finish(cid, "dry-run", events=[{"change_id": cid, "stage": "record", "status": "done", "t": 0.1,
                                                "detail": {}}])
        for t in readers:
            t.join(timeout=30)
        assert len(results) == TOTAL
        for frames in results:
            assert frames[-1] == ("end", None, {"change_id": cid, "status": "dry-run", "error": None})
        until(lambda: state.streams.open == 0 and state.watch.polling == 0, "every claim given back")
    finally:
        for c in clients:
            c.close()


def test_a_client_that_goes_away_gives_its_stream_back(panel: tuple[str, PanelState], data_dir: Path) -> None:
    base, state = panel
    history = History(data_dir / "history.sqlite3")
    cid = history.start("local:cli", dry_run=True)
    try:
        for _ in range(3):  # more than the per-client cap, one after the other
            with httpx.Client(base_url=base, timeout=30) as c, \
                    c.stream("GET", f"/profile-picture/changes/{cid}/events", headers=bearer()) as r:
                assert r.status_code == 200
                until(lambda: state.streams.open == 1, "the stream to be open")
            until(lambda: state.streams.open == 0 and state.watch.polling == 0, "the claim given back")
    finally:
        history.finish(cid, "failed", error="test over")


@pytest.mark.parametrize("last_event_id, replayed", [
    (b"\xb2", 3),  # "²" as the server reads header bytes (Latin-1): a digit to str.isdigit, not to int()
    (b"9" * 5000, 3), ("١".encode(), 3), (b"-1", 3), (b"1e3", 3), (b"", 3), (b"0", 2), (b"1", 1), (b"99", 0),
])
def test_last_event_id_of_any_shape(panel: tuple[str, PanelState], data_dir: Path, last_event_id: bytes,
                                    replayed: int) -> None:
    """A malformed Last-Event-ID replays everything; a numeric one skips what it names."""
    base, _ = panel
    history = History(data_dir / "history.sqlite3")
    cid = history.start("local:cli", dry_run=True)
    events = [{"change_id": cid, "stage": s, "status": "done", "t": 0.0, "detail": {}} for s in ("search", "crop", "record")]
    history.finish(cid, "dry-run", events=events)
    with httpx.Client(base_url=base, timeout=30) as c:
        frames = read_sse(c, f"/profile-picture/changes/{cid}/events",
                          headers={"Last-Event-ID": last_event_id})  # type: ignore[dict-item]
    assert [d for e, _, d in frames if e == "progress"] == events[len(events) - replayed:]
    assert frames[-1][0] == "end"
