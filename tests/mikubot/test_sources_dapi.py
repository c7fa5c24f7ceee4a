"""Safebooru and Gelbooru (dapi JSON) against the emulator's dapi dialects on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from emulators.danbooru import create_dapi_app
from servers import serve_app

from mikubot.sources import SourceError, source_from_spec

# Gelbooru's API wants an account's numeric user id and API key: the emulator knows this one.
GELBOORU_ACCOUNT = {"gelbooru_user_id": "1234", "gelbooru_api_key": "gel-secret-key"}
SYLVIE_GENERAL = {"sylvie blue giggle.png", "sylvie blue normal.png", "sylvie blue surprised.png", "sylvie green normal.png"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def by_id(app) -> dict[int, str]:
    return {p["id"]: p["_art"] for p in app.state.posts}


def dapi_app(art_dir, flavour: str, posts=None):
    app = create_dapi_app(posts, art_dir=art_dir, flavour=flavour)
    app.state.control.add_user(GELBOORU_ACCOUNT["gelbooru_user_id"], GELBOORU_ACCOUNT["gelbooru_api_key"])
    return app


def dapi_source(flavour: str, base: str, client, **options):
    account = GELBOORU_ACCOUNT if flavour == "gelbooru" else {}
    return source_from_spec(flavour, http=client, **{f"{flavour}_url": base, **account, **options})


@pytest.mark.parametrize("flavour", ["gelbooru", "safebooru"])
async def test_search_and_download(flavour: str, art_dir, client) -> None:
    app = dapi_app(art_dir, flavour)
    with serve_app(app) as base:
        src = dapi_source(flavour, base, client, min_side=300, source_backoff_s=0.01, rng=3)
        found = await src.search(10, set())
        names = {by_id(app)[c.extra["post_id"]] for c in found}
        assert names == SYLVIE_GENERAL
        assert all(c.key == f"{flavour}:{c.extra['post_id']}" and c.rating == "g" for c in found)
        assert all(c.page_url.endswith(f"id={c.extra['post_id']}") for c in found)
        got = await src.download(found[0])
        assert got.data == (art_dir / by_id(app)[found[0].extra["post_id"]]).read_bytes()
        assert src.last_search.rejected["no file (deleted, banned or hidden)"] == 1
        again = await src.search(10, {c.key for c in found[:2]})
        assert len(again) == 2 and src.last_search.rejected["used before"] == 2
        params = app.state.control.searches()[0].params
        assert (params["page"], params["s"], params["q"], params["json"]) == ("dapi", "post", "index", "1")


async def test_gelbooru_takes_the_sample_of_large_images(art_dir, client) -> None:
    from emulators.danbooru import default_posts

    posts = [p for p in default_posts(art_dir) if (p.get("_art") or "").startswith("concert")]
    for p in posts:
        p["tag_string"] += " solo"
    app = dapi_app(art_dir, "gelbooru", posts)
    with serve_app(app) as base:
        src = dapi_source("gelbooru", base, client, max_side=2048)
        found = await src.search(1, set())
        assert found[0].extra["variant"] == "sample" and found[0].width == 850
        got = await src.download(found[0])
        assert (got.file_ext, got.width) == ("jpg", 850)


async def test_empty_results_in_both_dialects(art_dir, client) -> None:
    for flavour in ("gelbooru", "safebooru"):
        with serve_app(dapi_app(art_dir, flavour)) as base:
            src = dapi_source(flavour, base, client, character_tag="kagamine_rin")
            assert await src.search(5, set()) == []
            assert src.last_search.seen == 0


async def test_gelbooru_credentials_are_params_but_masked(art_dir, client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    app = create_dapi_app(art_dir=art_dir, flavour="gelbooru")
    app.state.control.fail(500, times=5, path="/index.php")
    with serve_app(app) as base:
        src = source_from_spec("gelbooru", gelbooru_url=base, http=client, gelbooru_user_id="42",
                               gelbooru_api_key="topsecret", source_retries=1, source_backoff_s=0.01)
        with pytest.raises(SourceError) as info:
            await src.search(1, set())
    assert info.value.retryable and "500" in info.value.message and "topsecret" not in str(info.value)
    assert app.state.control.searches()[0].params["api_key"] == "***"
    assert "HTTP Request" in caplog.text and "api_key=%2A%2A%2A" in caplog.text and "topsecret" not in caplog.text  # it was sent (the emulator masks its log)


async def test_gelbooru_refuses_anonymous_api_calls_and_says_what_to_set(art_dir, client) -> None:
    app = dapi_app(art_dir, "gelbooru")
    with serve_app(app) as base:
        anonymous = source_from_spec("gelbooru", gelbooru_url=base, http=client)
        with pytest.raises(SourceError) as info:
            await anonymous.search(1, set())
        assert not info.value.retryable and "401" in info.value.message
        assert "MIKU_GELBOORU_USER_ID" in info.value.message and "MIKU_GELBOORU_API_KEY" in info.value.message
        wrong = dapi_source("gelbooru", base, client, gelbooru_api_key="not-the-key")
        with pytest.raises(SourceError) as info:
            await wrong.search(1, set())
        assert "401" in info.value.message and "not-the-key" not in info.value.message
        assert "check MIKU_GELBOORU_USER_ID" in info.value.message
        assert len(await dapi_source("gelbooru", base, client, min_side=300).search(1, set())) == 1
    sent = [r.params for r in app.state.control.searches()]
    assert "api_key" not in sent[0] and "user_id" not in sent[0]
    assert sent[-1]["user_id"] == "1234" and sent[-1]["api_key"] == "***"  # sent (the emulator masks its log)


def test_gelbooru_user_id_is_the_number() -> None:
    with pytest.raises(SourceError, match="numeric"):
        source_from_spec("gelbooru", gelbooru_user_id="mikufan", gelbooru_api_key="k")
    assert source_from_spec("gelbooru", gelbooru_user_id=" 42 ", gelbooru_api_key="k").options.gelbooru_credentials == ("42", "k")
    # Half the credentials are none: Gelbooru would refuse them anyway.
    assert source_from_spec("gelbooru", gelbooru_user_id="42").options.gelbooru_credentials is None


async def test_safebooru_current_json(art_dir, client) -> None:
    """Safebooru today: file_url and sample_url given, rating "general", score null."""
    app = dapi_app(art_dir, "safebooru")
    with serve_app(app) as base:
        raw = (await client.get(f"{base}/index.php", params={"page": "dapi", "s": "post", "q": "index", "json": 1,
                                                            "tags": "hatsune_miku solo"})).json()
        assert raw and all(p["score"] is None and p["rating"] in ("general", "questionable") for p in raw)
        assert all(p["file_url"].startswith(base) and p["sample_url"] for p in raw if p["image"])
        found = await dapi_source("safebooru", base, client, min_side=300).search(10, set())
    assert {c.rating for c in found} == {"g"} and all(c.extra["score"] is None for c in found)
    assert all(c.image_url == c.extra["original_url"] and c.extra["variant"] == "original" for c in found)


async def test_gelbooru_filters_ratings_on_the_server(art_dir, client) -> None:
    app = dapi_app(art_dir, "gelbooru")
    with serve_app(app) as base:
        one = dapi_source("gelbooru", base, client, min_side=300, require_solo=False)
        assert {c.rating for c in await one.search(20, set())} == {"g"}
        two = dapi_source("gelbooru", base, client, min_side=300, ratings="g,s")
        assert {c.rating for c in await two.search(20, set())} == {"g", "s"}
    tags = [r.params["tags"] for r in app.state.control.searches()]
    assert tags[0] == "hatsune_miku rating:general"
    assert tags[-1] == "hatsune_miku -rating:questionable -rating:explicit solo"
    assert not any(why.startswith("rating") for why in {**one.last_search.rejected, **two.last_search.rejected})


async def test_safebooru_legacy_json_without_urls(art_dir, client) -> None:
    app = create_dapi_app(art_dir=art_dir, flavour="safebooru", legacy=True)
    with serve_app(app) as base:
        assert not any("file_url" in p for p in app.state.posts)
        src = dapi_source("safebooru", base, client, min_side=300)
        found = await src.search(10, set())
        assert {by_id(app)[c.extra["post_id"]] for c in found} == SYLVIE_GENERAL and {c.rating for c in found} == {"g"}
        assert all(c.image_url == f"{base}/images/{p['directory']}/{p['image']}" for c in found
                   for p in app.state.posts if p["id"] == c.extra["post_id"])
        got = await src.download(found[0])
    assert got.data == (art_dir / by_id(app)[found[0].extra["post_id"]]).read_bytes()
