"""The panel's defences: token for every state change, login sessions with CSRF, cross-site refusal,
the bind rule, no secret in any page/response/log, no open redirect, escaped untrusted text."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mikubot.config import Settings
from mikubot.history import History
from mikubot.web import BindRefused, check_bind
from mikubot.web.auth import SESSION_COOKIE
import loopback
from panel_helpers import TOKEN, bearer, panel_server, panel_settings, read_sse, sprite_folder
from servers import free_port, run_command, venv_bin

DISCORD_SECRET = "discord-secret-MTIzNDU2Nzg5.abc.xyz"
DANBOORU_SECRET = "danbooru-key-Qw3rTy"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("panel-sec")


@pytest.fixture(scope="module")
def base(art_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"))
    # Secrets of every kind are configured (dry run keeps Discord out of it): none may ever be shown.
    settings = panel_settings(data_dir, art, discord_token=DISCORD_SECRET, danbooru_login="miku",
                              danbooru_api_key=DANBOORU_SECRET)
    with panel_server(settings) as url:
        yield url


def login(client: httpx.Client, token: str = TOKEN, next_: str = "/actions/profile-picture") -> httpx.Response:
    return client.post("/login", data={"token": token, "next": next_})


def csrf_of(client: httpx.Client, path: str = "/actions/profile-picture") -> str:
    m = re.search(r'<meta name="csrf-token" content="([^"]*)">', client.get(path).text)
    assert m is not None
    return m.group(1)


def test_login_sets_a_strict_httponly_session_and_csrf_guards_it(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        page = c.get("/login")
        assert page.status_code == 200 and 'name="token"' in page.text
        assert csrf_of(c) == ""  # no session, no CSRF token

        bad = login(c, "not-the-token")
        assert bad.status_code == 401 and "not the panel" in bad.text
        assert SESSION_COOKIE not in c.cookies

        ok = login(c)
        assert ok.status_code == 303 and ok.headers["location"] == "/actions/profile-picture"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
        token = csrf_of(c)
        assert len(token) >= 32

        # Logged in, but without the CSRF token: refused. With another site's Origin: refused.
        r = c.post("/profile-picture/change")
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = c.post("/profile-picture/change", headers={"X-CSRF-Token": "forged"})
        assert r.status_code == 403
        r = c.post("/profile-picture/change", headers={"X-CSRF-Token": token, "Origin": "https://evil.example"})
        assert r.status_code == 403 and "cross-site" in r.json()["detail"]
        r = c.post("/profile-picture/change", headers={"X-CSRF-Token": token, "Origin": "null"})
        assert r.status_code == 403

        r = c.post("/profile-picture/change", params={"wait": "true"}, headers={"X-CSRF-Token": token, "Origin": base})
        assert r.status_code == 200 and r.json()["status"] == "dry-run"

        # Log out (a form post with the CSRF field): the session is gone server-side too.
        sid = c.cookies[SESSION_COOKIE]
        out = c.post("/logout", data={"csrf_token": token})
        assert out.status_code == 303
        c.cookies.set(SESSION_COOKIE, sid)  # a stolen copy of the old cookie
        assert c.post("/profile-picture/change", headers={"X-CSRF-Token": token}).status_code == 401


def test_cross_site_login_and_logout_are_refused(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and SESSION_COOKIE not in c.cookies
        login(c)
        assert c.post("/logout", data={"csrf_token": "wrong"}).status_code == 403


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"])
def test_login_never_redirects_off_site(base: str, target: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        r = login(c, next_=target)
        assert r.status_code == 303 and r.headers["location"] == "/actions/profile-picture"


def test_no_secret_is_ever_rendered_or_logged(base: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = (TOKEN, DISCORD_SECRET, DANBOORU_SECRET)
    bodies: list[str] = []
    with httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/profile-picture/change", params={"wait": "true"}, headers=bearer())
        cid = r.json()["id"]
        bodies.append(r.text)
        c.post("/profile-picture/change", headers=bearer("a-wrong-guess"))
        for logged_in in (False, True):
            if logged_in:
                bodies.append(login(c).text)
            for path in ("/actions/profile-picture", "/history", "/status", "/login", "/api/status", "/health",
                         "/metrics", "/openapi.json", "/docs", "/profile-picture/history", f"/profile-picture/changes/{cid}",
                         "/static/panel.js", "/static/change.js"):
                resp = c.get(path)
                assert resp.status_code == 200, path
                bodies.append(resp.text)
        bodies.append(str(read_sse(c, f"/profile-picture/changes/{cid}/events")))
    everything = "\n".join(bodies) + "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert secret not in everything


def test_untrusted_history_text_is_escaped_and_links_are_http_only(base: str, data_dir: Path) -> None:
    history = History(data_dir / "history.sqlite3")
    cid = history.start("url:https://user:hunter2@example.com/a.png", dry_run=True)
    history.finish(cid, "failed", artist="<script>alert('x')</script>", page_url="javascript:alert(1)",
                   description="<img src=x onerror=alert(1)>", error="boom")
    with httpx.Client(base_url=base, timeout=60) as c:
        page = c.get("/history").text
        assert "<script>alert" not in page and "&lt;script&gt;alert" in page
        assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
        assert "javascript:" not in page
        row = c.get(f"/profile-picture/changes/{cid}").json()
        assert "hunter2" not in row["source_spec"]


def test_security_headers(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        r = c.get("/actions/profile-picture")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"


def test_generated_token_when_unset(art_dir: Path, tmp_path: Path) -> None:
    art = sprite_folder(art_dir, tmp_path / "art", ("eileen happy.png",))
    settings = panel_settings(tmp_path / "data", art, web_token=None)
    with panel_server(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        path = tmp_path / "data" / "web-token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert len(token) >= 24
        assert c.post("/profile-picture/change").status_code == 401
        page = c.get("/login").text
        assert str(path) in page and token not in page  # says where, never what
        r = c.post("/profile-picture/change", params={"wait": "true"}, headers=bearer(token))
        assert r.status_code == 200
    # The same token on the next start (bookmarked sessions aside, scripts keep working).
    with panel_server(settings) as url:
        assert loopback.post(f"{url}/profile-picture/change", headers=bearer(token), json={"dry_run": True}).status_code in (202, 200)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "panel.example"])
def test_non_loopback_bind_needs_the_token(host: str, tmp_path: Path) -> None:
    with pytest.raises(BindRefused, match="MIKU_WEB_TOKEN"):
        check_bind(host, Settings(data_dir=tmp_path))
    check_bind(host, Settings(data_dir=tmp_path, web_token="a-long-enough-token-value"))


def test_a_container_published_on_loopback_may_bind_all_with_the_generated_token(tmp_path: Path) -> None:
    # docker-compose.yml publishes the panel on the host's 127.0.0.1 and says so with this setting; the
    # stack test (scripts/stack-test.sh) logs in with the token the container generated in its volume.
    settings = Settings(data_dir=tmp_path, web_published_on_loopback=True)
    check_bind("0.0.0.0", settings)
    assert Settings.model_fields["web_published_on_loopback"].default is False  # the CLI's own default refuses


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "localhost"])
def test_loopback_bind_needs_no_configured_token(host: str, tmp_path: Path) -> None:
    check_bind(host, Settings(data_dir=tmp_path))


def test_mikubot_web_refuses_then_serves(tmp_path: Path, art_dir: Path) -> None:
    full = {**os.environ, "MIKU_DATA_DIR": str(tmp_path), "MIKU_SOURCE": f"local:{art_dir}"}
    full.pop("MIKU_WEB_TOKEN", None)
    refused = subprocess.run([venv_bin("mikubot"), "web", "--host", "0.0.0.0", "--port", str(free_port())],
                             env=full, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "MIKU_WEB_TOKEN" in refused.stderr and "refusing to listen on 0.0.0.0" in " ".join(refused.stderr.split())
    port = free_port()
    with run_command([venv_bin("mikubot"), "web", "--port", str(port)], url=f"http://127.0.0.1:{port}/health",
                     env={"MIKU_DATA_DIR": str(tmp_path), "MIKU_SOURCE": f"local:{art_dir}",
                          "COLUMNS": "300"}) as proc:  # rich folds at 80 columns: the token file's path stays whole
        assert loopback.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
        assert loopback.post(f"http://127.0.0.1:{port}/profile-picture/change").status_code == 401
    out = " ".join((proc.stdout.read() if proc.stdout else "").split())
    token = (tmp_path / "web-token").read_text().strip()
    assert token not in out and "web-token" in out  # where the token is, never the token
