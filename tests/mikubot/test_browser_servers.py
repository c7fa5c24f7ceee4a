"""The panel's server cards in a real browser (Playwright driving Debian's Chromium): with MIKU_GUILD_LOOKS
and MIKU_BANNER, Actions → Profile Picture shows one profile card per configured server, laid out as
Discord's profile card (the same geometry as the global card), with that server's latest avatar and
banner. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from panel_helpers import panel_server, panel_settings
from test_banner import composed
from browsers import launched, need_chromium
from test_browser import shot, until
from test_browser_banner import assert_discord_layout, layout

from mikubot.pipeline import AvatarPipeline
from mikubot.record import ChangeRecord

pytestmark = pytest.mark.browser


def test_each_configured_server_has_its_profile_card(art_dir: Path, tmp_path: Path) -> None:
    need_chromium()
    art = composed(art_dir, tmp_path / "art")
    shutil.copy(art_dir / "lucy happy.png", art / "lucy happy.png")
    settings = panel_settings(tmp_path / "data", art, banner=True,
                              guild_looks={"99": {"character_name": "Lucy"}, "100": {}})

    async def server_change() -> ChangeRecord:
        async with AvatarPipeline(settings) as p:
            return await p.change(guild_id=99, source=f"file:{art}/eileen at uni.png")

    record = asyncio.run(server_change())
    assert record.status == "dry-run" and record.banner_path and record.guild_id == 99, record.error

    with panel_server(settings) as base, launched() as browser:
        page = browser.new_page(base_url=base, viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto("/actions/profile-picture")
        card = "#server-looks figure[data-guild='99']"
        until(page, f"[...document.querySelectorAll(\"{card} img\")].every(i => i.complete && i.naturalWidth > 0)")
        assert page.get_attribute(f"{card} img.banner", "src") == f"/avatars/{record.id}/banner.png"
        assert page.get_attribute(f"{card} .card-ring img", "src") == f"/avatars/{record.id}.png"
        assert_discord_layout(layout(page, card))
        assert "Lucy" in page.inner_text(card) and "server 99" in page.inner_text(card)
        empty = "#server-looks figure[data-guild='100']"
        assert page.locator(f"{empty} img").count() == 0 and "no change yet" in page.inner_text(empty)
        assert page.locator("#profile-card").is_hidden()  # no global change yet: no global card
        page.locator("#server-looks").screenshot(path=str(shot(page, "panel-server-looks-page.png").with_name(
            "panel-server-looks.png")))
        assert problems == []
