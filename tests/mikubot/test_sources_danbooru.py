"""The Danbooru source against the Danbooru emulator on loopback (real uvicorn, real httpx)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from emulators.danbooru import art_file, counted_terms, create_app, make_post
from PIL import Image
from servers import serve_app

from mikubot.sources import Candidate, SourceError, source_from_spec
from mikubot.sources.danbooru import choose_variant, plan_query
from mikubot.sources.options import DEFAULT_USER_AGENT, SourceOptions

FAST = {"source_backoff_s": 0.01, "http_timeout_s": 5.0, "rng": 7}


@pytest.fixture(scope="module")
def emulator(art_dir: Path) -> Iterator[tuple[str, object]]:
    app = create_app(art_dir=art_dir)
    with serve_app(app) as base:
        yield base, app


@pytest.fixture
def danbooru(emulator):
    base, app = emulator
    app.state.control.reset()
    return base, app.state.control, app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def source(base: str, client: httpx.AsyncClient, **options):
    return source_from_spec("danbooru", danbooru_url=base, http=client, **{**FAST, "min_side": 300, **options})


async def test_search_filters_client_side(danbooru, client):
    base, control, app = danbooru
    src = source(base, client)
    found = await src.search(20, set())
    # Only general-rated, solo, still-image, downloadable posts of the character: Sylvie's four.
    assert sorted(art_file(app, c.extra["post_id"]) for c in found) == [
        "sylvie blue giggle.png", "sylvie blue normal.png", "sylvie blue surprised.png", "sylvie green normal.png",
    ]
    assert all(c.rating == "g" and "solo" in c.tags and c.source == "danbooru" for c in found)
    assert all(c.key == f"danbooru:{c.extra['post_id']}" for c in found)
    assert all(c.page_url == f"{base}/posts/{c.extra['post_id']}" for c in found)
    assert all(c.artist == "renpy_demo_artist" for c in found)
    rejected = src.last_search.rejected
    assert rejected["not solo"] == 3 and rejected["file type zip"] == 1
    assert rejected["no file (deleted, banned or hidden)"] == 1
    # The server filtered the ratings (rating: is a free metatag), so no page carried a post of another rating.
    assert not any(why.startswith("rating") for why in rejected)
    # Two counted tags at most, a descriptive User-Agent, anonymous.
    for r in control.searches():
        assert counted_terms(r.params["tags"].split()) <= 2
        assert r.user_agent == DEFAULT_USER_AGENT
        assert r.login is None
    assert control.searches()[0].params["tags"] == "hatsune_miku order:random rating:g"


async def test_ratings_blacklist_and_exclude(danbooru, client):
    base, _, app = danbooru
    src = source(base, client, ratings=["general", "sensitive"], blacklist=["surprised"])
    found = await src.search(20, {"danbooru:1001"})
    names = sorted(art_file(app, c.extra["post_id"]) for c in found)
    assert names == ["sylvie blue normal.png", "sylvie blue smile.png", "sylvie green normal.png"]
    assert src.last_search.rejected["used before"] == 1
    assert src.last_search.rejected["blacklisted tag surprised"] == 1
    assert len(await src.search(2, set())) == 2
    assert await src.search(0, set()) == []


async def test_min_side_filters_small_originals(danbooru, client):
    base, _, _ = danbooru
    src = source(base, client, min_side=512)
    assert await src.search(5, set()) == []
    assert src.last_search.rejected["smaller than 512 px"] == 4
    assert "smaller than 512 px" in src.last_search.describe()


async def test_download_fills_data_and_true_size(danbooru, client, art_dir):
    base, control, app = danbooru
    src = source(base, client)
    cand = (await src.search(1, set()))[0]
    got = await src.download(cand)
    assert got is cand and got.data is not None
    name = art_file(app, cand.extra["post_id"])
    assert got.data == (art_dir / name).read_bytes()  # the original, since it is small
    assert (got.file_ext, got.extra["variant"]) == ("png", "original")
    assert "data" not in got.to_json() and got.to_json()["size_bytes"] == len(got.data)
    image_requests = [r for r in control.requests if r.path.startswith("/original/")]
    assert image_requests and not any(r.authorization for r in image_requests)


async def test_large_originals_use_the_sample(art_dir, client):
    # The concert CGs are 2400x1530: with max_side 2048 the 850-px sample is fetched, not the original.
    from emulators.danbooru import default_posts

    posts = [p for p in default_posts(art_dir) if p.get("_art", "") and p["_art"].startswith("concert")]
    for p in posts:
        p["tag_string"] += " solo"
    with serve_app(create_app(posts, art_dir=art_dir)) as base:
        found = await source(base, client).search(5, set())
        assert len(found) == 3 and all(c.extra["variant"] == "sample" for c in found)
        assert all((c.width, c.height) == (850, 542) for c in found)
        got = await source(base, client).download(found[0])
        assert (got.file_ext, got.width, got.height) == ("jpg", 850, 542)
        big = await source(base, client, max_side=4096).search(1, set())
        assert big[0].extra["variant"] == "original" and big[0].width == 2400


def test_variant_choice_never_takes_a_huge_original():
    post = {
        "file_url": "https://cdn/original.png", "large_file_url": "https://cdn/sample.jpg", "file_ext": "png",
        "image_width": 6000, "image_height": 8000, "file_size": 40_000_000,
        "media_asset": {"variants": [
            {"type": "360x360", "url": "https://cdn/360.jpg", "width": 270, "height": 360, "file_ext": "jpg"},
            {"type": "720x720", "url": "https://cdn/720.webp", "width": 540, "height": 720, "file_ext": "webp"},
            {"type": "sample", "url": "https://cdn/sample.jpg", "width": 850, "height": 1133, "file_ext": "jpg"},
            {"type": "original", "url": "https://cdn/original.png", "width": 6000, "height": 8000, "file_ext": "png"},
        ]},
    }
    opts = SourceOptions()
    assert choose_variant(post, opts).kind == "sample"
    # Even when no variant fits max_side, an original over the byte limit is never chosen.
    assert choose_variant(post, SourceOptions(max_side=100)).kind == "720x720"
    small = {**post, "file_size": 3_000_000, "image_width": 1500, "image_height": 2000, "media_asset": None}
    assert choose_variant(small, opts).kind == "original"
    video = {"file_url": "https://cdn/x.mp4", "file_ext": "mp4", "image_width": 1920, "image_height": 1080}
    assert choose_variant(video, opts) is None


def test_query_plan_respects_the_tag_limit():
    assert plan_query(SourceOptions()) == (["hatsune_miku", "order:random", "rating:g"], True)
    assert plan_query(SourceOptions(extra_tag="solo")) == (["hatsune_miku", "solo", "rating:g"], False)
    assert plan_query(SourceOptions(ratings="s,g")) == (["hatsune_miku", "order:random", "rating:g,s"], True)
    assert plan_query(SourceOptions(ratings="g,s,q,e")) == (["hatsune_miku", "order:random"], True)
    assert plan_query(SourceOptions(danbooru_tag_limit=1)) == (["hatsune_miku", "rating:g"], False)
    assert plan_query(SourceOptions(danbooru_tag_limit=6))[0] == ["hatsune_miku", "order:random", "rating:g"]
    gold = SourceOptions(danbooru_tag_limit=6, danbooru_login="goldfan", danbooru_api_key="k")
    tags, rnd = plan_query(gold)
    assert tags == ["hatsune_miku", "order:random", "solo", "rating:g"] and rnd
    with pytest.raises(ValueError, match="limit of 1"):
        plan_query(SourceOptions(danbooru_tag_limit=1, extra_tag="solo"))


async def test_ratings_are_filtered_by_the_server(danbooru, client):
    base, control, app = danbooru
    src = source(base, client, ratings=["sensitive", "general"], require_solo=False)
    found = await src.search(20, set())
    assert control.searches()[0].params["tags"] == "hatsune_miku order:random rating:g,s"
    assert {c.rating for c in found} == {"g", "s"} and src.last_search.seen == src.last_search.accepted + sum(
        n for why, n in src.last_search.rejected.items() if not why.startswith("rating"))
    assert not any(why.startswith("rating") for why in src.last_search.rejected)


async def test_page_randomisation_without_order_random(danbooru, client):
    base, control, app = danbooru
    src = source(base, client, extra_tag="solo", booru_per_page=3, booru_max_pages=6)
    found = await src.search(20, set())
    assert len(found) == 4
    pages = [int(r.params["page"]) for r in control.searches()]
    assert all(r.params["tags"] == "hatsune_miku solo rating:g" for r in control.searches())
    assert sorted(set(pages)) == sorted(pages)  # no page asked twice
    assert {1, 2, 3} <= set(pages) and len(pages) <= 6


async def test_login_uses_basic_auth_and_never_leaks_the_key(danbooru, client):
    base, control, _ = danbooru
    control.add_user("mikufan", "s3cret-key", "gold")
    src = source(base, client, danbooru_login="mikufan", danbooru_api_key="s3cret-key", danbooru_tag_limit=6)
    assert len(await src.search(3, set())) == 3
    r = control.searches()[-1]
    assert r.login == "mikufan" and r.authorization and "api_key" not in r.params
    assert r.params["tags"] == "hatsune_miku order:random solo rating:g"  # a Gold account has room for solo
    bad = source(base, client, danbooru_login="mikufan", danbooru_api_key="wrong-key")
    with pytest.raises(SourceError) as info:
        await bad.search(3, set())
    assert not info.value.retryable and "401" in info.value.message and "API key" in info.value.message
    assert "wrong-key" not in str(info.value) and "wrong-key" not in repr(bad.options)
    assert "s3cret" not in await src.probe()


async def test_too_many_tags_is_danbooru_422(danbooru, client):
    base, control, _ = danbooru
    # A tag limit above 2 without a login is not believed: anonymous searches stay within 2.
    src = source(base, client, danbooru_tag_limit=6)
    assert src.tags == ["hatsune_miku", "order:random", "rating:g"] and len(await src.search(3, set())) == 3
    # A Gold account that says it has 6 but is really a Member gets Danbooru's 422, quoted.
    control.add_user("member", "member-key", "member")
    src = source(base, client, danbooru_tag_limit=6, danbooru_login="member", danbooru_api_key="member-key")
    with pytest.raises(SourceError) as info:
        await src.search(3, set())
    assert not info.value.retryable
    assert "cannot search for more than 2 tags" in info.value.message
    raw = await client.get(f"{base}/posts.json", params={"tags": "a b c"})
    assert raw.status_code == 422 and raw.json()["error"] == "PostQuery::TagLimitError"
    assert raw.json()["success"] is False


async def test_danbooru_429_has_no_retry_after_and_is_backed_off(danbooru, client):
    """Danbooru's 429 is RateLimiter::RateLimitError with X-Rate-Limit and no Retry-After: the source waits
    its own exponential backoff (source_backoff_s, then twice that, each times 0.5-1) and tries again."""
    base, control, _ = danbooru
    control.rate_limit(times=1)
    raw = await client.get(f"{base}/posts.json", params={"tags": "hatsune_miku"})
    assert raw.status_code == 429 and "retry-after" not in raw.headers
    assert raw.json()["error"] == "RateLimiter::RateLimitError" and "too fast" in raw.json()["message"]
    limiter = json.loads(raw.headers["x-rate-limit"])
    assert {"action", "cost", "rate", "burst", "minimum_points", "enabled", "limits"} <= set(limiter)
    control.rate_limit(times=2)
    started = time.monotonic()
    found = await source(base, client, source_backoff_s=0.2).search(2, set())
    assert len(found) == 2
    assert len(control.searches()) == 1 + 3  # the raw request above; two 429s, then the answer
    assert time.monotonic() - started >= 0.2 * 0.5 + 0.4 * 0.5  # both backoffs were waited out


async def test_429_that_does_not_pass_fails_retryable(danbooru, client):
    base, control, _ = danbooru
    control.rate_limit(times=10)
    with pytest.raises(SourceError) as info:
        await source(base, client, source_retries=2).search(2, set())
    assert info.value.retryable and not info.value.unreachable
    assert "429" in info.value.message and "3 attempts" in info.value.message
    assert len(control.searches()) == 3


async def test_5xx_is_retried_with_backoff(danbooru, client):
    base, control, _ = danbooru
    control.fail(502, times=2)
    assert len(await source(base, client).search(1, set())) == 1
    control.reset()
    control.fail(503, times=10)
    with pytest.raises(SourceError) as info:
        await source(base, client, source_retries=2).search(1, set())
    assert info.value.retryable and "503" in info.value.message and "3 attempts" in info.value.message
    assert len(control.searches()) == 3


async def test_slow_server_times_out(danbooru, client):
    base, control, _ = danbooru
    control.slow(1.0)
    with pytest.raises(SourceError) as info:
        await source(base, client, http_timeout_s=0.2, source_retries=1).search(1, set())
    assert info.value.retryable and "did not answer" in info.value.message


async def test_download_size_is_bounded(danbooru, client):
    base, _, _ = danbooru
    # Originals over the limit are not chosen: the 720-px WebP variant (~37 kB) is, and it is still too big.
    src = source(base, client, max_download_mib=20_000 / 2**20)
    cand = (await src.search(1, set()))[0]
    assert cand.extra["variant"] == "720x720"
    with pytest.raises(SourceError) as info:
        await src.download(cand)
    assert not info.value.retryable and "download limit" in info.value.message


async def test_download_failure_of_a_vanished_file(danbooru, client):
    base, _, _ = danbooru
    src = source(base, client)
    ghost = Candidate("danbooru", "danbooru:9", f"{base}/original/00/00/0000.png", None, None, [], "g",
                      1, 1, "png", "x.png")
    with pytest.raises(SourceError) as info:
        await src.download(ghost)
    assert "404" in info.value.message and not info.value.retryable


async def test_down_is_a_clear_retryable_error(art_dir, client):
    with serve_app(create_app(art_dir=art_dir)) as base:
        pass  # the server is gone: connection refused
    with pytest.raises(SourceError) as info:
        await source(base, client, source_retries=1).search(1, set())
    assert info.value.retryable and "cannot reach Danbooru" in info.value.message


async def test_own_client_is_used_when_none_given(danbooru):
    base, control, _ = danbooru
    src = source_from_spec("danbooru", danbooru_url=base, min_side=300, **FAST)
    cand = (await src.search(1, set()))[0]
    assert (await src.download(cand)).data
    assert control.searches()[0].user_agent == DEFAULT_USER_AGENT


async def test_emulator_accepts_api_key_as_params(danbooru, client):
    base, control, _ = danbooru
    control.add_user("u", "k")
    ok = await client.get(f"{base}/posts.json", params={"login": "u", "api_key": "k", "limit": 1})
    assert ok.status_code == 200 and len(ok.json()) == 1
    token = base64.b64encode(b"u:bad").decode()
    bad = await client.get(f"{base}/posts.json", headers={"Authorization": f"Basic {token}"})
    assert bad.status_code == 401 and bad.json()["success"] is False
    far = await client.get(f"{base}/posts.json", params={"page": 1001})
    assert far.status_code == 410


async def test_doctor_tells_an_unreachable_site_from_a_busy_one(danbooru, client, tmp_path):
    """A name that does not resolve is this machine's network path (or the URL), not "the site's 429 or
    5xx": doctor says to check DNS/proxy/URL. A rate limit is the site's: doctor says to try again later."""
    from mikubot.config import Settings
    from mikubot.doctor import check_source

    base, control, _ = danbooru
    nowhere = Settings(data_dir=tmp_path, source="danbooru", danbooru_url="http://no-such-host.invalid")
    check = await check_source(nowhere, client)
    assert check.state == "fail" and "cannot reach Danbooru" in check.message
    assert check.fix is not None and "network path to http://no-such-host.invalid" in check.fix
    assert "MIKU_DANBOORU_URL" in check.fix and "try again later" not in check.fix
    control.rate_limit(times=1, path="/")  # whichever endpoint doctor asks
    busy = await check_source(Settings(data_dir=tmp_path, source="danbooru", danbooru_url=base), client)
    assert busy.state == "fail" and "429" in busy.message
    assert busy.fix is not None and busy.fix.startswith("try again later") and "network" not in busy.fix


async def test_doctor_sees_the_tag_limit_that_counts_never_enforces(danbooru, client, tmp_path):
    """Danbooru's /counts/posts.json counts any number of tags (counts_controller.rb never calls
    validate_tag_limit!); only /posts.json answers 422. A Member who says MIKU_DANBOORU_TAG_LIMIT=6 gets
    doctor's failure with Danbooru's message, not an OK followed by every search failing."""
    from mikubot.config import Settings
    from mikubot.doctor import check_source

    base, control, _ = danbooru
    counted = await client.get(f"{base}/counts/posts.json", params={"tags": "hatsune_miku solo smile long_hair"})
    assert counted.status_code == 200 and counted.json()["counts"]["posts"] >= 1
    searched = await client.get(f"{base}/posts.json", params={"tags": "hatsune_miku solo smile long_hair"})
    assert searched.status_code == 422 and searched.json()["error"] == "PostQuery::TagLimitError"
    control.add_user("member", "member-key", "member")
    member = Settings(data_dir=tmp_path, source="danbooru", danbooru_url=base, danbooru_login="member",
                      danbooru_api_key="member-key", danbooru_tag_limit=6)
    check = await check_source(member, client)
    assert check.state == "fail" and "cannot search for more than 2 tags" in check.message, check
    control.add_user("gold", "gold-key", "gold")
    gold = await check_source(member.model_copy(update={"danbooru_login": "gold", "danbooru_api_key": "gold-key"}), client)
    assert gold.state == "ok" and "posts match" in gold.message


async def test_an_avif_post_comes_as_its_full_jpeg(tmp_path, art_dir, client):
    """A static AVIF post (a format we do not decode) is not skipped: Danbooru lists a "full" variant, a
    JPEG at the original's size (media_asset.rb), and that is what is downloaded."""
    with Image.open(art_dir / "sylvie blue giggle.png") as im:
        im.convert("RGB").save(tmp_path / "sylvie.avif", format="AVIF", quality=80)
    post = make_post(tmp_path / "sylvie.avif", 4001, characters=["hatsune_miku"], general=["1girl", "solo"])
    assert post["file_ext"] == "avif" and [v["type"] for v in post["media_asset"]["variants"]][-2:] == ["full", "original"]
    with serve_app(create_app([post], art_dir=tmp_path)) as base:
        found = await source(base, client).search(1, set())
        assert len(found) == 1 and found[0].extra["variant"] == "full" and found[0].file_ext == "jpg"
        got = await source(base, client).download(found[0])
    assert got.data is not None and got.data[:3] == b"\xff\xd8\xff" and (got.width, got.height) == (post["image_width"], post["image_height"])
