"""The one retry policy (``httpretry``) and its three users' wiring, over real loopback HTTP.

The peer is a scripted HTTP server (real uvicorn): each request takes the next scripted answer, so a test
says exactly "429 with Retry-After 0.05, then 200" and counts what the client sent.
"""

from __future__ import annotations

import email.utils
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from servers import free_port, serve_app

from facedetect.client import AsyncFaceDetectClient, FaceDetectClient, FaceDetectClientError
from httpretry import BUSY, RetryPolicy, retry_after_seconds, tls_context
from vramctl.errors import ServerError
from vramctl.servers._http import call


class Script:
    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def then(self, status: int, retry_after: str | None = None, times: int = 1) -> Script:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.answers += [(status, headers)] * times
        return self


@pytest.fixture(scope="module")
def peer() -> Iterator[tuple[str, list[Script]]]:
    current: list[Script] = [Script()]
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def answer(path: str, request: Request) -> JSONResponse:
        script = current[0]
        with script.lock:
            script.paths.append("/" + path)
            status, headers = script.answers.pop(0) if script.answers else (200, {})
        body = {"ok": status < 400, "detail": "busy" if status >= 400 else "fine"}
        return JSONResponse(body, status_code=status, headers=headers)

    with serve_app(app, health="/health") as base:
        yield base, current


@pytest.fixture
def script(peer) -> tuple[str, Script]:
    base, current = peer
    current[0] = Script()
    return base, current[0]


def test_retry_after_is_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds("-4") == 0.0
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_seconds(soon) <= 30
    assert retry_after_seconds(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    for junk in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(junk) is None


async def test_429_then_200_waits_as_asked(script) -> None:
    base, s = script
    s.then(429, "0.05", times=2)
    policy = RetryPolicy(attempts=3, backoff_s=30.0)  # the server's Retry-After, not the backoff, sets the wait
    async with httpx.AsyncClient() as http:
        t0 = time.monotonic()
        r = await policy.send(lambda: http.get(f"{base}/x"))
    assert r.status_code == 200 and len(s.paths) == 3 and time.monotonic() - t0 < 10.0  # backoff: >= 45 s


async def test_attempts_run_out_and_the_last_answer_is_returned(script) -> None:
    base, s = script
    s.then(503, "0", times=5)
    async with httpx.AsyncClient() as http:
        r = await RetryPolicy(attempts=2).send(lambda: http.get(f"{base}/x"))
    assert r.status_code == 503 and len(s.paths) == 2


async def test_a_wait_longer_than_accepted_is_not_waited_out(script) -> None:
    base, s = script
    s.then(429, "3600", times=3)
    async with httpx.AsyncClient() as http:
        r = await RetryPolicy(attempts=3, max_retry_after_s=60).send(lambda: http.get(f"{base}/x"))
    assert r.status_code == 429 and len(s.paths) == 1


async def test_busy_only_retries_when_asked(script) -> None:
    base, s = script
    s.then(503).then(500, "0")  # no Retry-After: not "busy"; 500 is not a busy status
    async with httpx.AsyncClient() as http:
        assert (await BUSY.send(lambda: http.get(f"{base}/x"))).status_code == 503
        assert (await BUSY.send(lambda: http.get(f"{base}/x"))).status_code == 500
    assert len(s.paths) == 2
    s.then(503, "0").then(429, "0")
    async with httpx.AsyncClient() as http:
        assert (await BUSY.send(lambda: http.get(f"{base}/x"))).status_code == 200
    assert len(s.paths) == 5


async def test_network_errors_are_retried_with_backoff_only_if_the_policy_says() -> None:
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(str(request.url))

    dead = f"http://127.0.0.1:{free_port()}/x"
    async with httpx.AsyncClient(event_hooks={"request": [count]}) as http:
        with pytest.raises(httpx.ConnectError):
            await RetryPolicy(attempts=3, backoff_s=0.01).send(lambda: http.get(dead))
        assert len(sent) == 3
        with pytest.raises(httpx.ConnectError):
            await BUSY.send(lambda: http.get(dead))
        assert len(sent) == 4


def test_detector_client_waits_for_a_busy_detector(script) -> None:
    base, s = script
    s.then(503, "0.05", times=2)
    with FaceDetectClient(base) as client:
        assert client.health() == {"ok": True, "detail": "fine"}
    assert s.paths == ["/health"] * 3
    s.then(503, "30")  # longer than the detector's policy accepts: reported with the wait at once
    with FaceDetectClient(base) as client, pytest.raises(FaceDetectClientError) as info:
        client.health()
    assert info.value.status_code == 503 and info.value.retry_after == 30.0 and len(s.paths) == 4


async def test_async_detector_client_and_vramctl_share_the_policy(script) -> None:
    base, s = script
    s.then(503, "0", times=2)
    async with AsyncFaceDetectClient(base) as client:
        assert (await client.load())["ok"] is True
    s.then(429, "0")
    async with httpx.AsyncClient() as http:
        r = await call(http, "llama-swap", base, "POST", "/api/models/unload/vision")
        assert r.status_code == 200
        with pytest.raises(ServerError, match="unreachable"):
            await call(http, "llama-swap", f"http://127.0.0.1:{free_port()}", "GET", "/running")
    assert s.paths == ["/load"] * 3 + ["/api/models/unload/vision"] * 2


def test_dependencies_point_one_way() -> None:
    """httpretry sits below facedetect, vramctl and mikubot; facedetect and vramctl never import mikubot."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    forbidden = {"httpretry": {"mikubot", "vramctl", "facedetect"}, "facedetect": {"mikubot", "vramctl"},
                 "vramctl": {"mikubot", "facedetect"}}
    for package, banned in forbidden.items():
        for path in (src / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                assert not {n.split(".")[0] for n in names} & banned, f"{path.relative_to(src)} imports {names}"


def test_one_tls_context_per_setting_trusting_what_httpx_would(tmp_path, monkeypatch):
    import certifi

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    default = tls_context()
    assert tls_context() is default  # made once: httpx would parse the whole bundle for every client
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert len(default.get_ca_certs()) > 50  # certifi's bundle, as httpx's default
    # SSL_CERT_FILE names the only bundle trusted (as httpx reads it), and wins over SSL_CERT_DIR.
    pem = certifi.contents()
    first = pem[:pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    one = tmp_path / "one.pem"
    one.write_text(first[first.index("-----BEGIN CERTIFICATE-----"):] + "\n")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    monkeypatch.setenv("SSL_CERT_FILE", str(one))
    own = tls_context()
    assert own is not default and len(own.get_ca_certs()) == 1
    monkeypatch.delenv("SSL_CERT_FILE")
    assert tls_context() not in (default, own)  # the folder's context (its certificates load when asked for)
    monkeypatch.delenv("SSL_CERT_DIR")
    assert tls_context() is default
