"""The panel in a real browser: Playwright driving Debian's Chromium against a real server.

Log in, change the avatar, watch the stages progress live, see the avatar, the candidates and the VRAM
chart, restore an older avatar from History, look at Status. Screenshots go to tests/artifacts/.
Without Chromium these tests fail under CI=true (the CI must install it: scripts/test-deps.sh) and
are skipped otherwise, with the reason.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from browsers import launched, need_chromium
from panel_helpers import TOKEN, bearer, panel_server, panel_settings, sprite_folder

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def base(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need_chromium()
    art = sprite_folder(art_dir, tmp_path_factory.mktemp("art"))
    settings = panel_settings(tmp_path_factory.mktemp("data"), art, candidates=3)
    with panel_server(settings) as url:
        yield url


@pytest.fixture(scope="module")
def browser(base: str) -> Iterator[Any]:
    with launched() as b:
        yield b


@pytest.fixture()
def page(browser: Any, base: str) -> Iterator[Any]:
    """A page in a context of its own (no cookies shared) at this module's ``base``."""
    context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.problems = problems  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


def shot(pg: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    pg.screenshot(path=str(path), full_page=True)
    return path


def until(pg: Any, js: str, timeout_s: float = 30.0) -> None:
    """Poll a JS expression from the test side. (Playwright's wait_for_function evaluates strings with
    eval, which the panel's Content-Security-Policy rightly forbids in the page.)"""
    deadline = time.monotonic() + timeout_s
    while not pg.evaluate(js):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {js}")
        time.sleep(0.05)


def log_in(pg: Any) -> None:
    pg.goto("/actions/profile-picture")
    pg.click("#login-to-change")
    pg.fill("#token", TOKEN)
    pg.click("#login-form button[type=submit]")
    pg.wait_for_url("**/actions/profile-picture")


def test_wrong_token_shows_an_error(page: Any) -> None:
    page.goto("/login")
    page.fill("#token", "not-it")
    page.click("#login-form button[type=submit]")
    assert "not the panel" in page.inner_text("#login-error")
    assert page.locator("#change-now").count() == 0


def test_change_the_avatar_and_watch_it(page: Any, base: str) -> None:
    log_in(page)
    # Record every class change of the stage list as it happens (the page must update live, stage by
    # stage, not all at once at the end).
    page.evaluate("""() => {
        window.__stageLog = [];
        const t0 = performance.now();
        new MutationObserver(ms => ms.forEach(m => window.__stageLog.push(
            [m.target.dataset.stage, m.target.className, performance.now() - t0])))
          .observe(document.getElementById('stages'), {attributes: true, subtree: true, attributeFilter: ['class']});
    }""")
    page.click("#change-now")
    page.wait_for_selector("#stages li[data-stage=record].done", timeout=60_000)
    until(page, "document.body.dataset.lastChange !== undefined")
    log: list[list[Any]] = page.evaluate("window.__stageLog")
    # No vision model here: the heuristic verifier reads the detect stage's faces, so detection comes first.
    order = ["search", "download", "reserve", "detect", "verify", "crop", "upload", "record"]
    first_running = {s: next(t for st, cls, t in log if st == s and cls == "running") for s in order if s != "upload"}
    assert list(first_running) == sorted(first_running, key=first_running.get)  # stages start in pipeline order
    # ms: spread over time, not one burst (detection alone takes a few hundred ms on a sprite)
    assert first_running["crop"] - first_running["search"] > 50
    search_done = next(t for st, cls, t in log if st == "search" and cls == "done")
    record_done = next(t for st, cls, t in log if st == "record" and cls == "done")
    assert record_done - search_done > 100  # ms: the verify/detect work happened between, while we watched
    assert page.get_attribute("#stages li[data-stage=upload]", "class") == "skipped"  # dry run

    until(page, "document.getElementById('avatar').naturalWidth > 0")
    assert "dry-run" in page.inner_text("#avatar-caption")
    assert page.locator("#candidates figure.candidate").count() >= 1
    chosen = page.locator("#candidates figure.candidate.chosen")
    assert chosen.count() == 1
    until(page, "document.querySelector('.candidate.chosen img').naturalWidth > 0")
    assert chosen.locator("svg .face-box").count() >= 1 and chosen.locator("svg .crop-box").count() == 1
    # every candidate shows its picture (not a grey box) with its faces; the others say why they lost
    cards = page.locator("#candidates figure.candidate")
    assert cards.count() >= 2 and page.locator("#candidates .frame.schematic").count() == 0
    until(page, "[...document.querySelectorAll('#candidates .candidate img')].every(i => i.naturalWidth > 0)")
    assert page.locator("#candidates .candidate img").count() == cards.count()
    assert page.locator("#candidates figure.candidate:not(.chosen) svg .face-box").count() >= 1
    assert "not chosen: " in page.inner_text("#candidates")
    # The stage tiles end on the whole change, not on the last candidate processed: detect and verify
    # summarise all three candidates, crop names the one chosen (its caption's first line).
    tile = lambda stage: page.inner_text(f"#stages li[data-stage={stage}] .detail")  # noqa: E731
    faces = [int(m.group(1)) for caption in page.locator("#candidates figcaption").all_inner_texts()
             if (m := re.search(r"^(\d+) face\(s\) via ", caption, re.M))]
    assert len(faces) == 3
    assert tile("detect").startswith(f"faces in {sum(1 for n in faces if n)} of 3 candidates ("), tile("detect")
    assert sorted(int(n) for n in tile("detect").split("(")[1].split(")")[0].split(", ")) == sorted(faces)
    assert tile("verify").startswith("3 of 3 candidates accepted as Hatsune Miku (heuristic)"), tile("verify")
    chosen_name = chosen.locator("figcaption div").first.inner_text()
    assert tile("crop").startswith(f"chose {chosen_name} of 3: "), tile("crop")
    assert page.locator("#vram-chart svg.vram circle.event-dot").count() >= 2
    assert page.locator("#vram-chart table.events tr").count() >= 3
    assert "finished: dry-run" in page.inner_text("#message")
    shot(page, "panel-change.png")
    assert page.problems == []  # type: ignore[attr-defined]  (no script error, no CSP violation)


def test_a_running_change_shows_no_candidates_of_the_previous_one(page: Any, base: str) -> None:
    """While a change runs, the Candidates and VRAM sections say it runs (and whose they will show), instead
    of the previous change's pictures under no name; once it ends they show its own, titled with its id."""
    with httpx.Client(base_url=base, timeout=60) as c:
        previous = c.post("/profile-picture/change", params={"wait": "true"}, headers=bearer()).json()
    log_in(page)
    until(page, "document.querySelectorAll('#candidates figure.candidate').length > 0")
    assert page.inner_text("#candidates-title") == f"— change #{previous['id']}"
    # Snapshot both sections at the first stage event of the new change (the page's own reaction, no timing).
    page.evaluate("""() => {
        window.__whileRunning = null;
        new MutationObserver((ms, obs) => {
            if (window.__whileRunning || !document.querySelector('#stages li.running')) return;
            window.__whileRunning = {
                cards: document.querySelectorAll('#candidates figure.candidate').length,
                text: document.getElementById('candidates').innerText,
                title: document.getElementById('candidates-title').textContent,
                chart: document.getElementById('vram-chart').innerText,
                stagesTitle: document.getElementById('change-title').textContent};
            obs.disconnect();
        }).observe(document.getElementById('stages'), {attributes: true, subtree: true, attributeFilter: ['class']});
    }""")
    page.click("#change-now")
    until(page, "document.body.dataset.lastChange !== undefined", 60)
    new_id = int(page.evaluate("document.body.dataset.lastChange"))
    assert new_id > previous["id"]
    running = page.evaluate("window.__whileRunning")
    assert running["cards"] == 0, running
    assert running["text"] == f"Change #{new_id} is running: its candidates appear when it ends.", running
    assert running["title"] == running["stagesTitle"] == f"— change #{new_id}", running
    assert f"Change #{new_id} is running" in running["chart"], running
    until(page, "document.querySelectorAll('#candidates figure.candidate').length > 0")
    assert page.inner_text("#candidates-title") == page.inner_text("#vram-title") == f"— change #{new_id}"
    assert "is running" not in page.inner_text("#candidates")
    assert page.problems == []  # type: ignore[attr-defined]


def test_restore_an_older_avatar_from_history(page: Any, base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        older = c.post("/profile-picture/change", params={"wait": "true"}, headers=bearer()).json()
        c.post("/profile-picture/change", params={"wait": "true"}, headers=bearer())
    log_in(page)
    page.goto("/history")
    card = page.locator(f"article.change[data-id='{older['id']}']")
    assert card.locator("img.round").count() == 1
    until(page, f"document.querySelector(\"article[data-id='{older['id']}'] img\").naturalWidth > 0")
    shot(page, "panel-history.png")
    with page.expect_navigation(timeout=60_000):
        card.locator("button.restore").click()
    newest = page.locator("article.change").first
    assert f"restore of #{older['id']}" in newest.inner_text()
    assert "dry-run" in newest.inner_text()
    until(page, "document.querySelector('article.change img').naturalWidth > 0")
    with httpx.Client(base_url=base, timeout=60) as c:
        rid = int(newest.get_attribute("data-id"))
        assert c.get(f"/avatars/{rid}.png").content == c.get(f"/avatars/{older['id']}.png").content
    shot(page, "panel-history-restored.png")
    assert page.problems == []  # type: ignore[attr-defined]


def test_upload_a_custom_image_preview_and_apply(page: Any, art_dir: Path) -> None:
    log_in(page)
    page.set_input_files("#upload-file", str(art_dir / "sylvie green giggle.png"))
    page.click("#upload-button")
    page.wait_for_selector("#upload-preview:not([hidden])")
    until(page, "document.getElementById('upload-avatar').naturalWidth > 0")
    assert "face crop" in page.inner_text("#upload-info")
    page.click("#upload-apply")
    page.wait_for_selector("body[data-last-change]", timeout=60_000)  # set when the followed change ends
    assert "sylvie green giggle.png" in page.inner_text("#candidates")
    shot(page, "panel-upload.png")
    assert page.problems == []  # type: ignore[attr-defined]


def test_status_page(page: Any) -> None:
    page.goto("/status")
    assert "in-process animeface" in page.inner_text("#detector")
    assert "not measured" in page.inner_text("#gpu")
    assert page.locator("#consumers tr").count() >= 2
    # The in-process detector's consumer row says what the detector row says (not "external … ?").
    row = page.locator("#consumers tr", has_text="face-detector").inner_text().split("\t")
    assert row[1] == "in-process animeface" and row[4] == "yes", row
    assert "· loaded" in page.inner_text("#detector")
    # The icon every page names (and browsers ask for anyway) is served, drawn by the panel itself.
    assert page.get_attribute("link[rel=icon]", "href") == "/favicon.ico"
    icon = page.request.get("/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon"
    with Image.open(io.BytesIO(icon.body())) as im:
        assert im.format == "ICO" and {(16, 16), (32, 32), (48, 48)} <= set(im.info["sizes"])
    shot(page, "panel-status.png")
    assert page.problems == []  # type: ignore[attr-defined]


def test_logged_out_page_offers_login_not_actions(page: Any) -> None:
    page.goto("/actions/profile-picture")
    assert page.locator("#change-now").count() == 0 and page.locator("#login-to-change").count() == 1
    assert TOKEN not in page.content()


def test_api_docs_render_from_local_files_under_the_csp(page: Any, base: str) -> None:
    """/docs is Swagger UI from this server alone: every request stays on the panel, the page keeps the
    strict Content-Security-Policy, and the operations render (no CSP violation stops the scripts)."""
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    response = page.goto("/docs")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("[data-path='/profile-picture/change']", timeout=30_000)
    assert requests and all(u.startswith(base) for u in requests), requests
    assert not [p for p in problems if "Content Security Policy" in p and "script" in p], problems
