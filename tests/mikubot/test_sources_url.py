"""The URL source: https only, public addresses only (after DNS, on every redirect), bounded, typed.

Refusals are checked without network (literal addresses and names from /etc/hosts). The one fetch that
succeeds goes to a real TLS server on loopback, which the test allows explicitly by its address.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from servers import free_port

from mikubot.sources import SourceError, UnsafeUrl, UrlPolicy, check_url, source_from_spec
from mikubot.sources.transfer import display_url
from mikubot.sources.urlsafety import address_problem

LOOPBACK = UrlPolicy(allowed_addresses=frozenset({"127.0.0.1"}))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/miku.png", "only https"),
        ("ftp://example.com/miku.png", "only https"),
        ("https://127.0.0.1/miku.png", "loopback"),
        ("https://10.1.2.3/miku.png", "private"),
        ("https://192.168.0.10/miku.png", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]/miku.png", "loopback"),
        ("https://[::ffff:127.0.0.1]/miku.png", "loopback"),
        ("https://[fe80::1]/miku.png", "link-local"),
        ("https://0.0.0.0/miku.png", "unspecified"),
        ("https://224.0.0.1/miku.png", "multicast"),
        ("https://100.64.0.1/miku.png", "not a public"),
        ("https://localhost/miku.png", "loopback"),
        ("https://user:pw@example.com/miku.png", "user name or password"),
        ("https:///miku.png", "no host"),
    ],
)
async def test_refusals(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl) as info:
        await check_url(url)
    assert why in info.value.message and not info.value.retryable
    assert "pw" not in info.value.message


def test_public_addresses_pass() -> None:
    import ipaddress

    assert address_problem(ipaddress.ip_address("93.184.216.34")) is None
    assert address_problem(ipaddress.ip_address("2606:4700::6810:85e5")) is None


def test_http_is_refused_when_the_source_is_built() -> None:
    with pytest.raises(UnsafeUrl):
        source_from_spec("url:http://example.com/a.png")


async def test_localhost_url_source_search_is_refused() -> None:
    src = source_from_spec("url:https://localhost:8443/miku.png")
    with pytest.raises(UnsafeUrl):
        await src.search(1, set())


def test_display_url_masks_secrets() -> None:
    shown = display_url("https://u:p@example.com/x?api_key=abc&tags=miku&login=me")
    assert "abc" not in shown and "u:p" not in shown and "me" not in shown.split("?")[1] and "tags=miku" in shown


# --- a real TLS server on loopback ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return key, crt


def image_app(art_dir: Path) -> FastAPI:
    app = FastAPI()
    png = (art_dir / "lucy happy.png").read_bytes()

    @app.get("/miku.png")
    async def miku() -> Response:
        return Response(png, media_type="image/png")

    @app.get("/bytes")
    async def generic() -> Response:
        return Response(png, media_type="application/octet-stream")

    @app.get("/page")
    async def page() -> Response:
        return Response("<!doctype html><p>hi</p>", media_type="text/html")

    @app.get("/lies.png")
    async def lies() -> Response:
        return Response(b"<!doctype html><p>not found</p>", media_type="image/png")

    @app.get("/to-private")
    async def to_private() -> Response:
        return RedirectResponse("https://10.0.0.7/miku.png", status_code=302)

    @app.get("/to-metadata")
    async def to_metadata() -> Response:
        return RedirectResponse("https://169.254.169.254/latest/meta-data/", status_code=301)

    @app.get("/to-http")
    async def to_http() -> Response:
        return RedirectResponse("http://127.0.0.1/miku.png", status_code=302)

    @app.get("/to-self")
    async def to_self() -> Response:
        return RedirectResponse("/miku.png", status_code=307)

    @app.get("/loop")
    async def loop() -> Response:
        return RedirectResponse("/loop", status_code=302)

    return app


@contextlib.contextmanager
def serve_tls(app: FastAPI, key: Path, crt: Path) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_keyfile=str(key), ssl_certfile=str(crt)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "TLS server did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def tls_base(art_dir: Path, cert: tuple[Path, Path]) -> Iterator[str]:
    with serve_tls(image_app(art_dir), *cert) as base:
        yield base


@pytest.fixture
async def tls_client(cert: tuple[Path, Path]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(cert[1])), trust_env=False) as c:
        yield c


def url_source(url: str, client: httpx.AsyncClient, **options):
    return source_from_spec(f"url:{url}", http=client, url_policy=LOOPBACK, source_backoff_s=0.01, http_timeout_s=5,
                            **options)


async def test_fetches_an_image_over_https(tls_base: str, tls_client: httpx.AsyncClient, art_dir: Path) -> None:
    src = url_source(f"{tls_base}/miku.png", tls_client)
    [cand] = await src.search(5, set())
    assert (cand.key, cand.filename, cand.file_ext) == (f"url:{tls_base}/miku.png", "miku.png", "png")
    got = await src.download(cand)
    assert got.data == (art_dir / "lucy happy.png").read_bytes()
    assert (got.width, got.height) == (420, 720)
    assert await src.search(5, {cand.key}) == []


async def test_generic_bytes_are_sniffed_and_redirects_followed(tls_base: str, tls_client: httpx.AsyncClient) -> None:
    for path in ("/bytes", "/to-self"):
        src = url_source(f"{tls_base}{path}", tls_client)
        got = await src.download((await src.search(1, set()))[0])
        assert got.file_ext == "png"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/to-private", "10.0.0.7"),
        ("/to-metadata", "link-local"),
        ("/to-http", "only https"),
        ("/loop", "redirected more than"),
        ("/page", "text/html"),
        ("/lies.png", "web page"),
    ],
)
async def test_download_refusals(tls_base: str, tls_client: httpx.AsyncClient, path: str, why: str) -> None:
    src = url_source(f"{tls_base}{path}", tls_client)
    cand = (await src.search(1, set()))[0]
    with pytest.raises(SourceError) as info:
        await src.download(cand)
    assert why in info.value.message and not info.value.retryable


async def test_size_limit(tls_base: str, tls_client: httpx.AsyncClient) -> None:
    src = url_source(f"{tls_base}/miku.png", tls_client, max_download_mib=10_000 / 2**20)
    with pytest.raises(SourceError) as info:
        await src.download((await src.search(1, set()))[0])
    assert "download limit" in info.value.message


async def test_peer_address_is_checked_after_connecting(tls_base: str, tls_client: httpx.AsyncClient) -> None:
    # allow_private lets the name check pass, allowed_addresses is empty: the connection-time check
    # must still see 127.0.0.1 ... unless allow_private is set, which is the explicit test hook.
    hook = source_from_spec(f"url:{tls_base}/miku.png", http=tls_client, url_policy=UrlPolicy(allow_private=True))
    assert (await hook.download((await hook.search(1, set()))[0])).data

    src = url_source(f"{tls_base}/miku.png", tls_client)
    cand = (await src.search(1, set()))[0]
    src.options = src.options.model_copy(update={"url_policy": UrlPolicy()})
    src.transfer.options = src.options

    async def name_ok(url: str) -> None:  # as if DNS had said "public" and then rebound to loopback
        return None

    src._hop = name_ok  # type: ignore[method-assign]
    with pytest.raises(UnsafeUrl) as info:
        await src.download(cand)
    assert "127.0.0.1" in info.value.message and "loopback" in info.value.message
