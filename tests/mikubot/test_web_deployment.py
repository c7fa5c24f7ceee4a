"""The panel in front of the full deployment over loopback: Danbooru emulator → llama-swap emulator (VRAM
ledger, measured free memory) → the real facedetect service → Discord emulator. The change is applied,
its VRAM timeline carries measured free memory (what the chart draws), and Status reports the card,
llama-swap's loaded models and the detector service. The browser then draws that chart."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from panel_helpers import TOKEN, bearer, panel_server, read_sse
from pipeline_rig import YES, posts_for, scaled_art, vision_answers, world

PLAN = {"eileen happy.png": 1.6, "eileen vhappy.png": 1.6}


@pytest.fixture(scope="module")
def deployment(art_dir: Path, face_labels: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    art = scaled_art(art_dir, tmp_path_factory.mktemp("booru-art"), PLAN, face_labels)
    root = art["eileen happy.png"]["path"].parent
    with world(root, posts_for(art), outputs=tmp_path_factory.mktemp("fd-out")) as w:
        w.llama.set_answer("vision", vision_answers(art, {n: YES for n in PLAN}, []))
        w.llama.preload("llama3.1")  # the bot was chatting: the text model holds the card
        settings = w.settings(tmp_path_factory.mktemp("data"), candidates=2, web_token=TOKEN)
        with panel_server(settings) as base:
            yield base, w


@dataclass
class Applied:
    """What the panel showed before the deployment's change, and the change itself (made once)."""

    status: dict[str, Any]  # /api/status before the change
    status_page: str  # /status before the change
    frames: list  # the change's event stream
    row: dict[str, Any]  # its history row
    metrics: str  # /metrics after it


@pytest.fixture(scope="module")
def applied(deployment: tuple[str, Any]) -> Applied:
    """The deployment's change through the panel, with the status read before it. Both tests use it, so
    either passes alone or in any order (the browser draws the chart of this change)."""
    base, _ = deployment
    with httpx.Client(base_url=base, timeout=120) as c:
        status, status_page = c.get("/api/status").json(), c.get("/status").text
        r = c.post("/profile-picture/change", headers=bearer())
        assert r.status_code == 202
        frames = read_sse(c, r.json()["events_url"])
        return Applied(status, status_page, frames, c.get(r.json()["url"]).json(), c.get("/metrics").text)


def test_change_through_the_panel_is_applied_with_a_measured_timeline(applied: Applied) -> None:
    status = applied.status
    assert status["vram"]["gpu"]["total_mib"] == 8192
    servers = status["vram"]["servers"]
    assert any(s.get("kind") == "llama-swap" and [r["model"] for r in s["running"]] == ["llama3.1"] for s in servers.values())
    assert status["detector"]["mode"] == "service" and status["detector"]["ok"] is True
    assert status["llama_swap"]["verifier"] == "vision"
    assert "MiB free of 8192 MiB" in applied.status_page and "llama3.1" in applied.status_page

    frames, row = applied.frames, applied.row
    assert frames[-1][2]["status"] == "applied", frames[-1]
    assert row["uploaded"] is True and row["credit"]["artist"].startswith("artist_")
    assert row["credit"]["link"] and row["credit"]["link"].startswith("http")
    measured = [e for e in row["vram_timeline"] if e["free_mib"] is not None]
    assert len(measured) >= 2
    assert "text" in [e["consumer"] for e in row["vram_timeline"] if e["event"] == "unloaded"]  # freed for vision

    assert 'mikubot_changes_total{status="applied"} 1.0' in applied.metrics
    assert 'vramctl_unloads_total' in applied.metrics


@pytest.mark.browser
def test_browser_draws_the_measured_chart(deployment: tuple[str, Any], applied: Applied) -> None:
    from browsers import launched, need_chromium
    from test_browser import shot, until

    need_chromium()
    base, _ = deployment
    with launched() as b:
        page = b.new_page(base_url=base, viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.goto("/actions/profile-picture")  # the latest (applied) change is shown on load
        page.wait_for_selector("#vram-chart svg.vram path.free-line")
        until(page, "document.getElementById('avatar').naturalWidth > 0")
        assert page.locator("#vram-chart svg circle.event-dot[data-event=unloaded]").count() >= 1
        assert "applied" in page.inner_text("#avatar-caption") and "art by artist_" in page.inner_text("#avatar-caption")
        shot(page, "panel-deployment.png")
        page.goto("/status")
        assert "llama3.1" in page.inner_text("#servers") or "vision" in page.inner_text("#servers")
        shot(page, "panel-deployment-status.png")
        assert problems == []
