"""The detector service against an outsider: the token on /load and /unload, cross-site refusal, the
Host allow-list (DNS rebinding), the loopback default bind and the refusal of any other without a token,
and the admission gate taken before an upload is read."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner
import loopback
from servers import free_port, run_command, serve_app, venv_bin

from facedetect.api import create_app
from facedetect.cli import app as cli_app
from facedetect.settings import FaceDetectSettings
from vramctl.servers import FaceDetectControl

TOKEN = "detector-token-8c1f7a"


def listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[1].split(":")[0] for row in rows if row[3] == "0A" and int(row[1].split(":")[1], 16) == port}


def test_serve_binds_loopback_by_default(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FACEDETECT_HOST"}
    env.update(FACEDETECT_PORT=str(port), FACEDETECT_OUTPUTS=str(tmp_path), FACEDETECT_PRELOAD="false")
    os_env = os.environ.pop("FACEDETECT_HOST", None)
    try:
        with run_command([venv_bin("facedetect"), "serve"], url=f"http://127.0.0.1:{port}/health", env=env):
            assert listening(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0
    finally:
        if os_env is not None:
            os.environ["FACEDETECT_HOST"] = os_env


@pytest.fixture
def guarded(tmp_path) -> Iterator[str]:
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "out", token=TOKEN, preload=False))) as url:
        yield url


@pytest.mark.parametrize("path", ["/load", "/unload"])
def test_load_and_unload_need_the_token_when_one_is_set(guarded, path):
    assert loopback.post(guarded + path).status_code == 401
    r = loopback.post(guarded + path, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "FACEDETECT_TOKEN" in r.json()["detail"] and TOKEN not in r.text
    assert loopback.post(guarded + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).status_code == 200
    assert loopback.get(guarded + "/health").status_code == 200  # reading stays open


async def test_vramctl_sends_the_token(guarded):
    async with httpx.AsyncClient(timeout=60) as http:
        with pytest.raises(Exception, match="401"):
            await FaceDetectControl(guarded, http).unload()
        ctl = FaceDetectControl(guarded, http, token=SecretStr(TOKEN))
        await ctl.load()
        assert await ctl.loaded()
        assert await ctl.unload() == "unload" and not await ctl.loaded()


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}])
def test_cross_site_posts_are_refused_even_without_a_token(tmp_path, eileen_bytes, headers):
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "out", preload=False))) as url:
        for path in ("/unload", "/load"):
            r = loopback.post(url + path, headers=headers)
            assert r.status_code == 403 and "cross-site" in r.json()["detail"]
        r = loopback.post(url + "/detect", headers=headers, files={"file": ("a.png", eileen_bytes, "image/png")})
        assert r.status_code == 403
        # The same request from the service's own origin (its own docs page) is fine.
        assert loopback.post(url + "/unload", headers={"Origin": url}).status_code == 200


def test_a_rebinding_host_gets_400_before_any_route(tmp_path, eileen_bytes):
    """A DNS-rebinding page: its own name in Host, a matching Origin. Without a token the model must stay."""
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "out", preload=False))) as url:
        port = url.rsplit(":", 1)[1]
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        assert loopback.post(url + "/load", timeout=60).status_code == 200
        for path in ("/unload", "/load"):
            r = loopback.post(url + path, headers=rebound)
            assert r.status_code == 400 and "FACEDETECT_ALLOWED_HOSTS" in r.json()["detail"], r.text
        r = loopback.post(url + "/detect", headers=rebound, files={"file": ("a.png", eileen_bytes, "image/png")})
        assert r.status_code == 400
        assert loopback.get(url + "/health", headers={"Host": f"evil.example:{port}"}).status_code == 400
        assert loopback.get(url + "/health").json()["detector_loaded"] is True  # /unload never ran
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"app.localhost:{port}"):
            assert loopback.get(url + "/health", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_admit_the_compose_name(tmp_path):
    settings = FaceDetectSettings(outputs=tmp_path / "out", preload=False, allowed_hosts="anime-face-detector")
    with serve_app(create_app(settings)) as url:
        assert loopback.get(url + "/health", headers={"Host": "anime-face-detector:6078"}).status_code == 200
        assert loopback.get(url + "/health", headers={"Host": "evil.example:6078"}).status_code == 400


# Addresses this machine cannot bind: a server that failed to refuse fails to start instead of listening
# on the network. 0.0.0.0 itself is in test_bind_rule.
@pytest.mark.parametrize("host", ["192.0.2.7", "detector.invalid"])
def test_serve_refuses_a_network_address_without_a_token(monkeypatch, host):
    monkeypatch.delenv("FACEDETECT_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--host", host, "--port", str(free_port())])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert f"refusing to listen on {host}" in out and "FACEDETECT_TOKEN" in out and "--insecure-no-token" in out


@pytest.mark.parametrize(("host", "token", "insecure", "published_on_loopback", "refused"), [
    ("127.0.0.1", None, False, False, False), ("::1", None, False, False, False),
    ("localhost", None, False, False, False), ("0.0.0.0", TOKEN, False, False, False),
    ("0.0.0.0", None, True, False, False), ("0.0.0.0", "  ", False, False, True),
    ("0.0.0.0", None, False, True, False),  # docker-compose.yml: ports published on the host's 127.0.0.1 only
])
def test_bind_rule(host, token, insecure, published_on_loopback, refused):
    from facedetect.cli import bind_refusal

    settings = FaceDetectSettings(host=host, token=token, published_on_loopback=published_on_loopback)
    assert (bind_refusal(settings, insecure) is not None) is refused


def test_an_upload_cut_off_midway_is_no_500(tmp_path):
    """A client that goes away mid-upload (or one the server lets go for being too slow) is a 4xx in the
    metrics and the log, not an "unexpected error (a bug)" 500 with a traceback."""
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "out", preload=False))) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=b\r\nContent-Length: 10000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                         b'name="file"; filename="a.png"\r\n\r\n' + b"x" * 100)
        deadline = time.monotonic() + 10
        while 'endpoint="/detect"' not in (metrics := loopback.get(url + "/metrics").text):
            assert time.monotonic() < deadline, "the cut-off upload was never answered"
            time.sleep(0.05)
        assert 'facedetect_requests_total{endpoint="/detect",status="400"} 1.0' in metrics
        assert 'status="500"' not in metrics


@pytest.fixture
def eileen_bytes(art_dir) -> bytes:
    return (art_dir / "eileen happy.png").read_bytes()


def test_a_full_gate_refuses_before_reading_the_upload(tmp_path, eileen_bytes):
    """One worker, no queue: while one upload holds the only place, a second is refused at once — its body
    never finishes sending, so an API that read uploads before the gate would hang here."""
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        release.wait(60)
        yield eileen_bytes + b"\r\n--b--\r\n"

    settings = FaceDetectSettings(outputs=tmp_path / "out", workers=1, queue=0)
    with serve_app(create_app(settings)) as url:
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        first: dict[str, httpx.Response] = {}
        holder = threading.Thread(target=lambda: first.setdefault(
            "r", loopback.post(url + "/detect", content=slow_body(), headers=headers, timeout=60)))
        holder.start()
        try:
            with httpx.Client(base_url=url, timeout=10) as c:
                while c.get("/health").json()["queue"]["waiting"] + c.get("/health").json()["queue"]["running"] < 1:
                    pass  # the first upload has its place
            # A raw request announcing 19 MB and sending only its first bytes: the answer must come anyway.
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(b"POST /detect HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                             b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 19000000\r\n\r\n"
                             b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.png\"\r\n\r\n")
                answer = sock.recv(65536).decode("latin-1")
            assert answer.startswith("HTTP/1.1 503") and "retry-after:" in answer.lower(), answer
        finally:
            release.set()
            holder.join(60)
        assert first["r"].status_code == 200, first["r"].text


def test_detector_docs_are_served_locally(tmp_path):
    with serve_app(create_app(FaceDetectSettings(outputs=tmp_path / "out", preload=False))) as url:
        page = loopback.get(url + "/docs").text
        assets = [a for a in ("swagger-ui.css", "swagger-ui-bundle.js", "init.js") if f"/docs-assets/{a}" in page]
        assert len(assets) == 3 and "cdn" not in page.lower() and "<script>" not in page
        for a in assets:
            assert loopback.get(f"{url}/docs-assets/{a}").status_code == 200
