"""Candidate thumbnails (the panel's Candidates view) are kept for the last MIKU_CANDIDATE_PICTURES_KEPT
changes only; the avatars never go. Real changes over a real panel server, and the page in Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from panel_helpers import bearer, panel_server, panel_settings, sprite_folder
from browsers import need_chromium
from test_browser import browser, log_in, page, until  # noqa: F401  (fixtures used by name)

from mikubot.outputs import candidate_picture_path, prune_candidate_pictures


def test_prune_deletes_only_older_changes_thumbnails(tmp_path: Path) -> None:
    keep = ["change-00001.png", "change-00001.json", "change-00001_annotated.jpg", "notes.txt",
            "change-1_candidate-0.jpg", "change-00002_candidate-0.jpg.bak"]
    for name in keep:
        (tmp_path / name).write_bytes(b"x")
    thumbs = {cid: [candidate_picture_path(tmp_path, cid, i) for i in range(3)] for cid in (1, 2, 3, 4)}
    for paths in thumbs.values():
        for p in paths:
            p.write_bytes(b"jpeg")
    removed = prune_candidate_pictures(tmp_path, 4, 2)  # change 4 just ran; keep the thumbnails of 3 and 4
    assert sorted(removed) == sorted(thumbs[1] + thumbs[2])
    assert all(p.exists() for p in thumbs[3] + thumbs[4])
    assert all((tmp_path / name).exists() for name in keep)  # avatars, reports, foreign names: untouched
    assert prune_candidate_pictures(tmp_path, 4, 2) == []  # nothing left to do
    assert sorted(prune_candidate_pictures(tmp_path, 4, 0)) == sorted(thumbs[3] + thumbs[4])  # 0: keep none
    assert prune_candidate_pictures(tmp_path / "missing", 4, 0) == []


@pytest.fixture(scope="module")
def art(art_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sprite_folder(art_dir, tmp_path_factory.mktemp("art"))


def change(c: httpx.Client) -> dict[str, Any]:
    r = c.post("/profile-picture/change", params={"wait": "true"}, headers=bearer())
    assert r.status_code == 200, r.text
    return c.get(f"/profile-picture/changes/{r.json()['id']}").json()


def test_older_changes_lose_their_thumbnails_not_their_avatars(art: Path, tmp_path: Path) -> None:
    with panel_server(panel_settings(tmp_path, art, candidates=2, candidate_pictures_kept=1)) as base, \
            httpx.Client(base_url=base, timeout=60) as c:
        first = change(c)
        assert [x["picture_pruned"] for x in first["candidates"]] == [False, False]
        for x in first["candidates"]:
            r = c.get(x["picture_url"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        second = change(c)
        again = c.get(f"/profile-picture/changes/{first['id']}").json()
        assert [(x["picture_url"], x["picture_pruned"]) for x in again["candidates"]] == [(None, True)] * 2
        assert c.get(f"/avatars/{first['id']}/candidates/0.jpg").status_code == 404
        assert c.get(f"/avatars/{first['id']}.png").status_code == 200  # the avatar itself is kept
        assert c.get(again["annotated_url"]).status_code == 200
        assert all(c.get(x["picture_url"]).status_code == 200 for x in second["candidates"])
        listed = {r["id"]: r for r in c.get("/profile-picture/history").json()["changes"]}
        assert [x["picture_pruned"] for x in listed[first["id"]]["candidates"]] == [True, True]
        assert [x["picture_pruned"] for x in listed[second["id"]]["candidates"]] == [False, False]


@pytest.fixture(scope="module")
def base(art: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """For the browser: no thumbnails kept at all, so the latest change's other candidates show the placeholder."""
    need_chromium()
    settings = panel_settings(tmp_path_factory.mktemp("data"), art, candidates=3, candidate_pictures_kept=0)
    with panel_server(settings) as url:
        yield url


@pytest.mark.browser
def test_the_panel_shows_a_placeholder_for_a_pruned_thumbnail(page: Any, base: str) -> None:  # noqa: F811
    with httpx.Client(base_url=base, timeout=60) as c:
        rec = change(c)
    assert len(rec["candidates"]) >= 2
    log_in(page)
    until(page, "document.querySelectorAll('#candidates figure.candidate').length >= 2")
    others = page.locator("#candidates figure.candidate:not(.chosen)")
    assert others.count() >= 1
    assert page.locator("#candidates figure.candidate:not(.chosen) .frame.pruned").count() == others.count()
    assert page.locator("#candidates figure.candidate:not(.chosen) img").count() == 0  # no broken image
    assert "Picture no longer kept" in others.first.inner_text()
    assert others.first.locator("svg").count() == 1  # its faces still drawn, on a blank of its shape
    until(page, "document.querySelector('.candidate.chosen img').naturalWidth > 0")  # the chosen one keeps its copy
    assert page.problems == []  # type: ignore[attr-defined]
