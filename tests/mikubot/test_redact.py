"""No password inside a configured URL is ever shown or stored: status pages, change records, progress
events, the history database, `mikubot config show`, `mikubot doctor`."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from cli_runner import run_cli
from mikubot.cli import app as mikubot_app
from mikubot.redact import scrub, strip_userinfo
from panel_helpers import bearer, panel_server, panel_settings, read_sse, sprite_folder
from servers import free_port

SECRET = "pw-Zx81secret"


def closed_url(path: str = "") -> str:
    return f"http://miku:{SECRET}@127.0.0.1:{free_port()}{path}"  # nothing listens: every call fails


def test_strip_userinfo() -> None:
    assert strip_userinfo("http://u:p@h:1/x") == "http://h:1/x"
    assert strip_userinfo("failed: GET https://a%40b:p@ss@host/x?q=http://z@y") == "failed: GET https://host/x?q=http://y"
    assert strip_userinfo("mail miku@example.org, not a URL") == "mail miku@example.org, not a URL"
    assert scrub({"a": ["url:http://u:p@h/x", ("http://u@h",)], "n": 3}) == {"a": ["url:http://h/x", ("http://h",)], "n": 3}


def test_urls_with_passwords_never_leave_the_panel(art_dir: Path, tmp_path: Path) -> None:
    art = sprite_folder(art_dir, tmp_path / "art")
    settings = panel_settings(tmp_path / "data", art, llama_swap_url=closed_url(), face_detector_url=closed_url(),
                              gpu_probe="emulator", gpu_probe_url=closed_url())
    with panel_server(settings) as base, httpx.Client(base_url=base, timeout=120) as c:
        seen = [c.get("/status").text, c.get("/api/status").text]
        r = c.post("/profile-picture/change", headers=bearer())
        assert r.status_code == 202, r.text
        cid = r.json()["change_id"]
        seen.append(str(read_sse(c, f"/profile-picture/changes/{cid}/events")))
        seen.append(c.get(f"/profile-picture/changes/{cid}").text)
        for scheme in ("http", "https"):  # refused as a source (400), and tried and failed (a record)
            r = c.post("/profile-picture/change", headers=bearer(), params={"wait": "true"},
                       json={"source": f"url:{closed_url('/miku.png').replace('http', scheme, 1)}"})
            assert r.status_code in (200, 400), r.text
            seen.append(r.text)
        seen += [c.get("/profile-picture/history").text, c.get("/history").text]
    assert any("127.0.0.1" in text for text in seen)  # the URLs are shown — without their credentials
    for text in seen:
        assert SECRET not in text and "miku:" not in text
    for path in (tmp_path / "data").rglob("*"):  # the database (and its WAL), reports, everything stored
        if path.is_file() and path.name != "web-token":
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("command", [["config", "show"], ["config", "show", "--json"], ["doctor"]])
def test_cli_never_prints_url_credentials(tmp_path: Path, command: list[str]) -> None:
    env = {**os.environ, "MIKU_LLAMA_SWAP_URL": closed_url(), "FACE_DETECTOR_URL": closed_url(),
           "MIKU_GPU_PROBE_URL": closed_url(), "MIKU_DATA_DIR": str(tmp_path), "MIKU_SOURCE": f"url:{closed_url('/a.png')}"}
    out = run_cli(mikubot_app, *command, env=env)
    assert "127.0.0.1" in out.stdout + out.stderr
    assert SECRET not in out.stdout + out.stderr
