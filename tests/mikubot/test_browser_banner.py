"""The profile-card preview in a real browser (Playwright driving Debian's Chromium): with MIKU_BANNER the
latest change (Actions → Profile Picture) and each history entry with a banner show the avatar circle over
the banner, laid out as Discord's profile card (a 5:2 banner 340 px wide, an 80-px avatar at x 16..96 in a
6-px ring, its centre on the banner's bottom edge). Screenshots go to tests/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from panel_helpers import bearer, panel_server, panel_settings
from PIL import Image
from browsers import need_chromium
from test_browser import browser, log_in, page, shot, until  # noqa: F401  (the fixtures, over this module's `base`)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def base(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need_chromium()
    art = tmp_path_factory.mktemp("art")
    for name, left in (("eileen happy.png", 760), ("eileen vhappy.png", 300)):  # one picture per change
        with Image.open(art_dir / "bg uni.jpg") as bg, Image.open(art_dir / name) as sprite:
            picture, figure = bg.convert("RGB"), sprite.convert("RGBA")
            picture.paste(figure, (left, 0), figure)
        picture.save(art / f"{name[:-4]} at uni.png")
    settings = panel_settings(tmp_path_factory.mktemp("data"), art, banner=True)
    with panel_server(settings) as url:
        yield url


def layout(pg: Any, card: str) -> dict[str, float]:
    """The card's banner and avatar boxes, relative to the card, in CSS px."""
    return pg.evaluate("""(sel) => {
        const card = document.querySelector(sel).getBoundingClientRect();
        const b = document.querySelector(sel + ' img.banner').getBoundingClientRect();
        const a = document.querySelector(sel + ' .card-ring img').getBoundingClientRect();
        return {card_w: card.width, banner_w: b.width, banner_h: b.height, banner_top: b.top - card.top,
                avatar_x1: a.left - card.left, avatar_x2: a.right - card.left, avatar_w: a.width, avatar_h: a.height,
                avatar_cy: (a.top + a.bottom) / 2 - card.top};
    }""", card)


def assert_discord_layout(box: dict[str, float]) -> None:
    scale = box["card_w"] / 340
    assert box["banner_w"] == pytest.approx(box["card_w"], abs=1) and box["banner_h"] == pytest.approx(136 * scale, abs=1)
    assert box["avatar_w"] == pytest.approx(80 * scale, abs=1) and box["avatar_h"] == pytest.approx(box["avatar_w"], abs=0.5)
    assert box["avatar_x1"] == pytest.approx(16 * scale, abs=1) and box["avatar_x2"] == pytest.approx(96 * scale, abs=1)
    assert box["avatar_cy"] == pytest.approx(box["banner_top"] + box["banner_h"], abs=1)  # centred on its bottom edge


def test_the_latest_change_shows_the_profile_card(page: Any, base: str) -> None:
    with httpx.Client(base_url=base, timeout=120) as c:
        record = c.post("/profile-picture/change", params={"wait": "true"}, headers=bearer()).json()
    assert record["status"] == "dry-run" and record["banner_path"], record
    log_in(page)
    until(page, "!document.getElementById('profile-card').hidden")
    width, height = record["banner_size"]
    until(page, f"document.getElementById('card-banner').naturalWidth === {width} && "
                f"document.getElementById('card-banner').naturalHeight === {height} && "
                "document.getElementById('card-avatar').naturalWidth > 0")
    assert page.get_attribute("#card-banner", "src").startswith(f"/avatars/{record['id']}/banner.png")
    assert page.get_attribute("#card-avatar", "src").startswith(f"/avatars/{record['id']}.png")
    assert_discord_layout(layout(page, "#profile-card"))
    # The chosen candidate shows where the banner was cut, and the avatar circle over it.
    chosen = page.locator("#candidates figure.candidate.chosen")
    assert chosen.locator("svg .banner-box").count() == 1 and chosen.locator("svg .banner-circle").count() == 1
    x1, y1, x2, y2 = record["banner_box"]
    assert float(chosen.locator("svg .banner-box").get_attribute("width")) == pytest.approx(x2 - x1)
    page.locator("#profile-card").screenshot(path=str(shot(page, "panel-profile-card-page.png").with_name(
        "panel-profile-card.png")))
    assert page.problems == []  # type: ignore[attr-defined]


def test_a_history_entry_shows_its_profile_card(page: Any, base: str) -> None:
    with httpx.Client(base_url=base, timeout=120) as c:
        record = c.post("/profile-picture/change", params={"wait": "true"}, headers=bearer()).json()
        assert c.get(f"/avatars/{record['id']}/banner.png").status_code == 200
        assert c.get("/avatars/999999/banner.png").status_code == 404
    page.goto("/history")
    card = f"article.change[data-id='{record['id']}'] .profile-card"
    assert page.locator(card).count() == 1
    until(page, f"[...document.querySelectorAll(\"{card} img\")].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator(f"{card} img").count() == 2
    assert_discord_layout(layout(page, card))
    shot(page, "panel-history-cards.png")
    assert page.problems == []  # type: ignore[attr-defined]
