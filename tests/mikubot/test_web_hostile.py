"""The panel against an outsider: no body is read before the token check and the size cap, ids past
SQLite's range are 4xx, foreign Host names are refused, token guessing is throttled, and a trusted
TLS proxy's X-Forwarded-Proto makes the session cookie Secure."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import HTTPException
import loopback
from panel_helpers import TOKEN, bearer, panel_server, panel_settings, sprite_folder
from servers import serve_app

from mikubot.web import create_app
from mikubot.web.auth import FREE_ATTEMPTS, AttemptLimiter
from mikubot.web.guard import host_allowed

HUGE = 2**63  # one past SQLite's largest integer


@pytest.fixture(scope="module")
def art(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sprite_folder(art_dir, tmp_path_factory.mktemp("art"))


@pytest.fixture(scope="module")
def base(art: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = panel_settings(tmp_path_factory.mktemp("data"), art, web_allowed_hosts=["panel.lan"])
    with panel_server(settings) as url:
        yield url


def raw(base: str, head: str, body: bytes = b"") -> str:
    """Send a request's head and the first bytes of its body, then read the answer without sending more."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        return sock.recv(65536).decode("latin-1")


def test_an_unauthenticated_huge_body_is_refused_before_it_is_read(base: str) -> None:
    host = base.removeprefix("http://")
    # 60 MB announced, a few bytes sent: the 401 must come anyway (a server reading first would wait).
    answer = raw(base, f"POST /profile-picture/change HTTP/1.1\nHost: {host}\nContent-Type: application/json\n"
                       f"Content-Length: 60000000\n", b'{"source": "')
    assert answer.startswith("HTTP/1.1 401"), answer
    answer = raw(base, f"POST /profile-picture/change HTTP/1.1\nHost: {host}\nContent-Type: application/json\n"
                       f"Transfer-Encoding: chunked\n", b"10\r\n{\"source\": \"aaaa\r\n")
    assert answer.startswith("HTTP/1.1 401"), answer
    answer = raw(base, f"POST /profile-picture/upload HTTP/1.1\nHost: {host}\n"
                       f"Content-Type: multipart/form-data; boundary=b\nContent-Length: 19000000\n", b"--b\r\n")
    assert answer.startswith("HTTP/1.1 401"), answer
    assert loopback.get(f"{base}/health").json()["status"] == "ok"


def test_an_authenticated_body_over_the_cap_is_413(base: str) -> None:
    host = base.removeprefix("http://")
    answer = raw(base, f"POST /profile-picture/change HTTP/1.1\nHost: {host}\nAuthorization: Bearer {TOKEN}\n"
                       f"Content-Type: application/json\nContent-Length: 60000000\n", b'{"source": "')
    assert answer.startswith("HTTP/1.1 413"), answer

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"source": "'
        for _ in range(40):
            yield b"a" * 65536

    r = loopback.post(f"{base}/profile-picture/change", content=chunks(), timeout=30,
                   headers={**bearer(), "Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


@pytest.mark.parametrize("method, path", [
    ("GET", f"/profile-picture/changes/{HUGE}"),
    ("GET", f"/profile-picture/changes/{HUGE}/events"),
    ("GET", f"/avatars/{HUGE}.png"),
    ("GET", f"/avatars/{HUGE}/annotated.jpg"),
    ("POST", f"/profile-picture/restore/{HUGE}"),
    ("GET", f"/profile-picture/history?offset={HUGE}"),
    ("GET", f"/profile-picture/changes/{-HUGE - 1}"),
])
def test_ids_and_offsets_past_sqlite_are_4xx(base: str, method: str, path: str) -> None:
    r = loopback.request(method, base + path, headers=bearer(), timeout=30)
    assert r.status_code in (404, 422), (r.status_code, r.text)
    assert r.json()["detail"]


def test_history_page_with_a_huge_offset_is_an_empty_page(base: str) -> None:
    r = loopback.get(f"{base}/history", params={"offset": str(HUGE * 4)}, timeout=30)
    assert r.status_code == 200


@pytest.mark.parametrize("host, ok", [
    ("evil.example", False), ("127.0.0.1.evil.example", False), ("localhost.evil.example", False), ("", False),
    ("localhost", True), ("127.0.0.1", True), ("[::1]", True), ("panel.lan", True), ("PANEL.LAN.", True),
    ("miku.localhost", True),
])
def test_only_loopback_and_configured_hosts_are_answered(base: str, host: str, ok: bool) -> None:
    port = base.rsplit(":", 1)[1]
    r = loopback.get(f"{base}/api/status", headers={"Host": f"{host}:{port}" if host else ""}, timeout=30)
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400 and "MIKU_WEB_ALLOWED_HOSTS" in r.json()["detail"]
        assert "running" not in r.text  # nothing of the status leaks


def test_host_allowed_parses_ports_and_brackets() -> None:
    assert host_allowed("[::1]:3939", []) and host_allowed("127.0.0.2:80", [])
    assert not host_allowed("[::2]:3939", []) and host_allowed("[::2]:3939", ["::2"])
    assert host_allowed("anything.example", ["*"])


def test_token_guessing_is_throttled_per_client(art: Path, tmp_path: Path) -> None:
    with panel_server(panel_settings(tmp_path, art)) as url, httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(FREE_ATTEMPTS - 1):
            assert c.post("/profile-picture/change", headers=bearer("wrong")).status_code == 401
        assert c.post("/login", data={"token": "wrong"}).status_code == 401  # the form counts too
        r = c.post("/profile-picture/change", headers=bearer())  # even the right token waits now
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert c.post("/login", data={"token": TOKEN}).status_code == 429
        assert c.get("/health").status_code == 200  # reading is not throttled


def test_backoff_doubles_and_a_right_token_clears_it() -> None:
    now = [0.0]
    limiter = AttemptLimiter(free=3, max_backoff_s=10, clock=lambda: now[0])
    waits: list[str | None] = []
    for _ in range(7):
        limiter.failed("1.2.3.4")
        try:
            limiter.check("1.2.3.4")
            waits.append(None)
        except HTTPException as exc:
            assert exc.status_code == 429 and exc.headers is not None
            waits.append(exc.headers["Retry-After"])
        now[0] += 100  # past any wait: the count, not the clock, sets the next one
    assert waits == [None, None, "1", "2", "4", "8", "10"]
    limiter.check("5.6.7.8")  # another client is not affected
    limiter.succeeded("1.2.3.4")
    limiter.failed("1.2.3.4")
    limiter.check("1.2.3.4")  # a right token started the count afresh


@pytest.mark.parametrize("trusted, secure", [([], False), (["127.0.0.1"], True)])
def test_forwarded_proto_from_a_trusted_proxy_makes_the_cookie_secure(art: Path, tmp_path: Path,
                                                                      trusted: list[str], secure: bool) -> None:
    # Served as `mikubot web` serves it: uvicorn's own proxy-header trust off; only the setting decides.
    app = create_app(panel_settings(tmp_path, art, web_trusted_proxies=trusted))
    with serve_app(app, proxy_headers=False) as url:
        r = loopback.post(f"{url}/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert r.status_code == 303
    assert ("secure" in r.headers["set-cookie"].lower()) is secure


def strict_json(text: str) -> object:
    """JSON as the standard has it: NaN and Infinity are not JSON (Python's json would take them)."""
    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("body", [
    b'{"candidates": NaN}', b'{"candidates": Infinity}', b'{"candidates": -Infinity}', b'{"dry_run": NaN}',
    b'[NaN]', b'{"source": "local:\\ud800"}', b'{"source": "\\udfff"}', b'{"source": "local:a\\u0000b"}',
])
def test_json_that_python_reads_but_json_cannot_carry_is_422(base: str, body: bytes) -> None:
    r = loopback.post(f"{base}/profile-picture/change", content=body, timeout=30,
                   headers={**bearer(), "Content-Type": "application/json"})
    assert r.status_code == 422, (r.status_code, r.text)
    detail = strict_json(r.text)["detail"]  # type: ignore[index]
    assert detail and "Traceback" not in r.text


@pytest.mark.parametrize("query", ["source=local:%00x", "source=file:%00", "candidates=NaN", "candidates=Infinity"])
def test_query_values_no_file_can_have_are_4xx(base: str, query: str) -> None:
    r = loopback.post(f"{base}/profile-picture/change?{query}", headers=bearer(), timeout=30)
    assert r.status_code == 422, (r.status_code, r.text)
    assert strict_json(r.text)["detail"]  # type: ignore[index]
