"""Shared by the panel's tests: the embedded default (in-process detector, local folder of test art,
dry run) served by a real uvicorn server on loopback."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from mikubot.config import Settings
from mikubot.web import create_app
from servers import serve_app

TOKEN = "panel-test-token-5b2f0c9e1d"
SPRITES = ("eileen happy.png", "eileen vhappy.png", "lucy happy.png", "lucy mad.png", "sylvie blue smile.png",
           "sylvie green smile.png", "sylvie blue normal.png", "sylvie green normal.png", "eileen concerned.png")


def sprite_folder(art_dir: Path, dest: Path, names: tuple[str, ...] = SPRITES) -> Path:
    """A folder with only the small sprites: changes stay fast and never run out of unused art."""
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copyfile(art_dir / n, dest / n)
    return dest


def panel_settings(data_dir: Path, art: Path, **overrides: Any) -> Settings:
    # 256-px avatars: these tests are about the panel (tests/mikubot/test_crop.py checks the full size).
    values: dict[str, Any] = {"data_dir": data_dir, "source": f"local:{art}", "candidates": 1, "web_token": TOKEN,
                              "dry_run": True, "output_size": 256}
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def panel_server(settings: Settings) -> Iterator[str]:
    with serve_app(create_app(settings)) as base:
        yield base


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read_sse(client: httpx.Client, url: str, headers: dict[str, str] | None = None,
             opened: threading.Event | None = None) -> list[tuple[str, str | None, dict[str, Any]]]:
    """Every (event, id, data) of a Server-Sent Events stream until the server closes it. Streams need the
    token (or a login): ``bearer()`` is sent unless ``headers`` say otherwise (or the client has a session).
    ``opened`` is set once the stream's headers have come (a reader in a thread tells the test it is open)."""
    out: list[tuple[str, str | None, dict[str, Any]]] = []
    event, ident, data = "message", None, []
    sent = {**({} if "miku_session" in client.cookies else bearer()), **(headers or {})}
    with client.stream("GET", url, headers=sent) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        if opened is not None:
            opened.set()
        for line in r.iter_lines():
            if line == "":
                if data:
                    out.append((event, ident, json.loads("\n".join(data))))
                event, ident, data = "message", None, []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
    return out


def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for a server-side state a test cannot be told about (a count in the app's state): checked every
    10 ms, a failure naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
