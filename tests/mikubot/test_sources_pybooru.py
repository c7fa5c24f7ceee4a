"""Conformance: an independent Danbooru client (pybooru, built on requests) against the Danbooru emulator.

The expected answers are written from Danbooru's own source, danbooru/danbooru at
production-2026.08.06.135255-utc-112 (commit 06587d1f, August 2026), not from the emulator:

- ``app/logical/post_query.rb``: ``term_count`` counts unique tags, wildcards and metatags except
  ``UNLIMITED_METATAGS`` (status rating limit is id date age filesize filetype parent child md5 width
  height duration mpixels ratio score upvote downvotes favcount embedded tagcount pixiv_id pixiv);
  ``validate_tag_limit!`` skips an empty search and a single plain tag.
- ``app/models/user.rb`` ``tag_query_limit``: 2 below Gold, 6 for Gold, unlimited for Platinum.
- ``app/controllers/application_controller.rb``: ``PostQuery::TagLimitError`` is a 422 whose message is
  "You cannot search for more than #{limit} tags at a time."; the API error object is
  ``{success, error, message, backtrace}``.
- ``app/controllers/posts_controller.rb``: ``random=true`` redirects to the search plus ``random:<per page>``
  (a counted metatag); ``app/controllers/counts_controller.rb``: ``{"counts": {"posts": N}}``.
- ``app/models/post.rb`` ``rating_matches``: ``rating:g,s`` matches either (first letter of each value).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from emulators.danbooru import create_app
from pybooru import Danbooru
from pybooru.exceptions import PybooruHTTPError
from servers import serve_app

# (search, counted terms) from post_query.rb: order: and random: count, rating:/status:/limit:/score: ... do not.
TAG_COUNTS = [
    ("hatsune_miku order:random rating:g", 2),
    ("hatsune_miku solo rating:g,s status:active limit:5", 2),
    ("hatsune_miku -rating:e score:>5 width:>=512 id:>1000", 1),
    ("hatsune_miku solo order:random", 3),
    ("hatsune_miku solo random:5", 3),
    ("hatsune_miku hatsune_miku rating:g", 1),  # unique terms
    ("hatsune_miku -solo", 2),  # a negated tag is still a tag
]
ANONYMOUS_422 = "You cannot search for more than 2 tags at a time."


@pytest.fixture(scope="module")
def danbooru(art_dir: Path) -> Iterator[tuple[str, object]]:
    app = create_app(art_dir=art_dir)
    app.state.control.add_user("goldfan", "gold-key", "gold")
    with serve_app(app) as base:
        yield base, app


def client(base: str, **account: str) -> Danbooru:
    return Danbooru(site_url=base, **account)


@pytest.mark.parametrize(("tags", "counted"), TAG_COUNTS)
def test_anonymous_tag_limit_counts_like_danbooru(danbooru, tags: str, counted: int) -> None:
    base, _ = danbooru
    if counted <= 2:
        posts = client(base).post_list(tags=tags, limit=5)
        assert isinstance(posts, list)
        return
    with pytest.raises(PybooruHTTPError) as info:
        client(base).post_list(tags=tags, limit=5)
    assert info.value.args[1] == 422


def test_the_422_is_danbooru_s_error_object(danbooru) -> None:
    base, _ = danbooru
    api = client(base)
    with pytest.raises(PybooruHTTPError):
        api.post_list(tags="hatsune_miku solo order:random")
    assert api.last_call["status_code"] == 422
    body = requests.get(  # pybooru does not parse error bodies: read it with its own transport, requests
f"{base}/posts.json", params={"tags": "a b c"}, timeout=10).json()
    assert body["success"] is False and body["error"] == "PostQuery::TagLimitError"
    assert body["message"] == ANONYMOUS_422 and isinstance(body["backtrace"], list)


def test_single_tag_and_empty_search_are_never_limited(danbooru) -> None:
    base, _ = danbooru
    assert client(base).post_list(tags="hatsune_miku", limit=3)
    assert client(base).post_list(limit=3)


def test_gold_account_may_search_six_tags(danbooru) -> None:
    base, _ = danbooru
    gold = client(base, username="goldfan", api_key="gold-key")
    posts = gold.post_list(tags="hatsune_miku solo 1girl smile order:random long_hair rating:g", limit=10)
    assert posts and all(p["rating"] == "g" and "solo" in p["tag_string"].split() for p in posts)
    with pytest.raises(PybooruHTTPError) as info:
        gold.post_list(tags="a b c d e f g")
    assert info.value.args[1] == 422
    with pytest.raises(PybooruHTTPError) as info:
        client(base, username="goldfan", api_key="wrong").post_list(tags="hatsune_miku")
    assert info.value.args[1] == 401


def test_rating_lists_filter_on_the_server(danbooru) -> None:
    base, _ = danbooru
    api = client(base)
    both = api.post_list(tags="hatsune_miku rating:g,s", limit=100)
    assert {p["rating"] for p in both} == {"g", "s"}
    general = api.post_list(tags="hatsune_miku rating:general", limit=100)
    assert general and {p["rating"] for p in general} == {"g"}
    not_general = api.post_list(tags="hatsune_miku -rating:g", limit=100)
    assert not_general and "g" not in {p["rating"] for p in not_general}


def test_random_draws_and_the_random_parameter(danbooru) -> None:
    base, _ = danbooru
    api = client(base)
    drawn = api.post_list(tags="hatsune_miku random:3")
    assert len(drawn) == 3 and all("hatsune_miku" in p["tag_string"].split() for p in drawn)
    # random=true redirects to "<tags> random:<limit>", which counts: one tag plus random fits, two do not.
    assert len(api.post_list(tags="hatsune_miku", random=True, limit=2)) == 2
    assert "random%3A2" in api.last_call["url"] or "random:2" in api.last_call["url"]
    with pytest.raises(PybooruHTTPError) as info:
        api.post_list(tags="hatsune_miku solo", random=True, limit=2)
    assert info.value.args[1] == 422


def test_counts_and_show(danbooru) -> None:
    base, app = danbooru
    api = client(base)
    everything = api.post_list(tags="hatsune_miku rating:g", limit=200)
    assert api.count_posts(tags="hatsune_miku rating:g") == {"counts": {"posts": len(everything)}}
    # As upstream's counts_controller.rb: counting never enforces the tag limit; only the search does.
    assert api.count_posts(tags="hatsune_miku solo smile")["counts"]["posts"] >= 1
    with pytest.raises(PybooruHTTPError) as info:
        api.post_list(tags="hatsune_miku solo smile")
    assert info.value.args[1] == 422
    post = api.post_show(everything[0]["id"])
    assert post["id"] == everything[0]["id"] and post["file_url"].startswith(base)
    for key in ("tag_string_character", "tag_string_artist", "large_file_url", "media_asset", "image_width"):
        assert key in post
