"""Danbooru (``GET /posts.json``): the character's art, filtered client-side, downloaded at a sane size.

Query plan. Anonymous and Member accounts may search only two tags (Gold 6; ``danbooru_tag_limit``).
The first is always the character tag. The second is ``extra_tag`` when one is configured (e.g.
``solo``), else ``order:random`` so each search sees a fresh random sample; ``solo`` follows when the
limit leaves room. The allowed ratings always go to the server (``rating:g`` or ``rating:g,s``): ``rating:``
is one of Danbooru's free metatags, which do not count towards the limit, so the server filters ratings
and no page is wasted on posts we would throw away. Without ``order:random`` the pages are visited in
random order instead. Every filter is applied again client-side whatever the server was asked, since it
is cheap and a mis-tagged post costs a whole change.

Which file. A post offers the original (often 3000-6000 px, up to tens of MB), the ``large_file_url``
sample (850 px wide, JPEG/WebP) and ``media_asset.variants`` (180/360/720 px thumbnails, the sample,
for a static WebP or AVIF original a ``full`` JPEG at its size, the original). We take the largest
variant in a format we read (an AVIF post through its ``full`` JPEG) whose long side is at most ``max_side``
(default 2048), which is the original for most modest posts and the sample for huge ones; an original
over ``max_download_bytes`` is never chosen. The crop around a face in a 2048-px image is usually 500+ px,
enough for a 1024-px avatar within the crop's upscale limit, while a 40 MB original would cost seconds of
download and decode for pixels the avatar throws away.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mikubot.sources.base import IMAGE_EXTS, Candidate, SourceError, normalise_ext
from mikubot.sources.filters import rejection
from mikubot.sources.options import RATING_ORDER, SourceOptions, normalise_rating
from mikubot.sources.paging import collect, download_post_image
from mikubot.sources.report import SearchReport
from mikubot.sources.transfer import Transfer

SAMPLE_WIDTH = 850  # Danbooru's sample size (large_file_url)
# Danbooru's still-picture types (media_asset.rb: jpg png gif webp avif): those we cannot read ourselves
# (AVIF) still come as a variant we can (the JPEG "full" one).
STILL_EXTS = IMAGE_EXTS | {"avif"}
THUMBNAIL_TYPES = frozenset({"preview", "180x180", "360x360"})


@dataclass(frozen=True)
class Variant:
    kind: str
    url: str
    width: int | None
    height: int | None
    ext: str | None

    @property
    def long_side(self) -> int:
        return max(self.width or 0, self.height or 0)


def plan_query(options: SourceOptions) -> tuple[list[str], bool]:
    """The search's tags and whether the server randomises (``order:random``).

    Counted tags fill the account's limit (``danbooru_search_tags``: 2 without a login, whatever
    ``danbooru_tag_limit`` says): the character, then ``extra_tag`` or ``order:random``, then ``solo`` if
    there is room. The rating filter goes on top as ``rating:g,s``: a free metatag, which
    Danbooru has not counted towards the limit for years (``PostQuery::UNLIMITED_METATAGS``)."""
    limit = options.danbooru_search_tags
    counted = [options.character_tag]
    if options.extra_tag:
        counted.append(options.extra_tag)
    if len(counted) > limit:
        raise ValueError(f"{len(counted)} tags do not fit the account's limit of {limit}")
    wishes = ([] if options.extra_tag else ["order:random"]) + (["solo"] if options.require_solo else [])
    for wish in wishes:
        if len(counted) < limit and wish not in counted:
            counted.append(wish)
    free = [] if len(options.ratings) == len(RATING_ORDER) else ["rating:" + ",".join(options.ratings)]
    return counted + free, "order:random" in counted


def _variants(post: dict[str, Any]) -> Iterator[Variant]:
    """Every file a post offers but the thumbnails: its media asset's variants, the original, the sample."""
    width, height = _int(post.get("image_width")), _int(post.get("image_height"))
    for raw in (post.get("media_asset") or {}).get("variants") or []:
        if raw.get("type") not in THUMBNAIL_TYPES:
            yield Variant(str(raw.get("type", "")), str(raw.get("url") or ""), _int(raw.get("width")),
                          _int(raw.get("height")), normalise_ext(raw.get("file_ext")))
    yield Variant("original", str(post.get("file_url") or ""), width, height, normalise_ext(post.get("file_ext")))
    large = str(post.get("large_file_url") or "")
    if width and height and width > SAMPLE_WIDTH:  # the sample is 850 px wide, or the original itself
        width, height = SAMPLE_WIDTH, round(height * SAMPLE_WIDTH / width)
    yield Variant("sample", large, width, height, normalise_ext(large.rsplit(".", 1)[-1]))


def choose_variant(post: dict[str, Any], options: SourceOptions) -> Variant | None:
    """The file to download for ``post`` (see the module docstring for the rule)."""
    file_size = _int(post.get("file_size"))
    original_ok = file_size is None or file_size <= options.max_download_bytes
    found: dict[str, Variant] = {}
    for v in _variants(post):
        if v.url and v.ext in IMAGE_EXTS and (original_ok or v.kind != "original"):
            found.setdefault(v.url, v)  # the first name for a URL wins: a sample that is the original is the original
    if not found:
        return None
    choices = list(found.values())
    fitting = [v for v in choices if v.long_side and v.long_side <= options.max_side]
    # Ties go to the original (the same pixels without another lossy re-encode), then to the "full" JPEG
    # (quality 85) over a same-sized preview (the 720x720 WebP, quality 75).
    rank = {"original": 2, "full": 1}
    if fitting:
        return max(fitting, key=lambda v: (v.long_side, rank.get(v.kind, 0)))
    return min(choices, key=lambda v: (v.long_side or 10**9, -rank.get(v.kind, 0)))


class DanbooruSource:
    """``danbooru``: see the module docstring. ``last_search`` explains the latest search."""

    name = "danbooru"

    def __init__(self, options: SourceOptions):
        self.options = options
        self.base = options.danbooru_url
        self.transfer = Transfer(options, "Danbooru")
        self.tags, self.server_random = plan_query(options)
        self.last_search = SearchReport()

    async def _page(self, page: int) -> list[dict[str, Any]]:
        params = {"tags": " ".join(self.tags), "limit": self.options.booru_per_page, "page": page}
        body = await self.transfer.get_json(
            f"{self.base}/posts.json", params=params, auth=self.options.auth_login(),
            what=f"the search {params['tags']!r} (page {page})",
        )
        if body is None:
            return []
        if not isinstance(body, list):
            raise SourceError(f"Danbooru answered the search with {type(body).__name__}, not a list of posts",
                              retryable=True)
        return [p for p in body if isinstance(p, dict)]

    def candidate(self, post: dict[str, Any], report: SearchReport | None = None) -> Candidate | None:
        """The post as a candidate, or ``None`` (with the reason counted in ``report``)."""
        tags = str(post.get("tag_string") or "").split()
        rating = normalise_rating(post.get("rating"))
        ext = normalise_ext(post.get("file_ext"))
        width, height = _int(post.get("image_width")), _int(post.get("image_height"))
        has_file = bool(post.get("file_url")) and not post.get("is_deleted") and not post.get("is_banned")
        # For a still picture the file type that counts is the one downloaded (an AVIF original comes as its
        # JPEG "full" variant); an animation or a video is turned away whatever previews it has.
        variant = choose_variant(post, self.options) if has_file and ext in STILL_EXTS else None
        why = rejection(tags=tags, rating=rating, ext=variant.ext if variant is not None else ext, width=width,
                        height=height, has_file=has_file, options=self.options)
        if why is None and variant is None:
            why = f"no downloadable variant within {self.options.max_download_bytes / 1e6:.0f} MB"
        if why is not None or variant is None:
            if report is not None:
                report.reject(why or "unusable")
            return None
        post_id = post["id"]
        return Candidate(
            source=self.name,
            key=f"danbooru:{post_id}",
            image_url=variant.url,
            page_url=f"{self.base}/posts/{post_id}",
            artist=" ".join(str(post.get("tag_string_artist") or "").split()) or None,
            tags=tags,
            rating=rating,
            width=variant.width,
            height=variant.height,
            file_ext=variant.ext,
            filename=f"danbooru_{post_id}.{variant.ext}",
            extra={
                "post_id": post_id,
                "variant": variant.kind,
                "original_url": post.get("file_url"),
                "original_size": [width, height],
                "md5": post.get("md5"),
                "score": post.get("score"),
                "characters": str(post.get("tag_string_character") or "").split(),
                "post_source": post.get("source"),
                "created_at": post.get("created_at"),
            },
        )

    async def search(self, limit: int, exclude: set[str]) -> list[Candidate]:
        report = SearchReport(query=" ".join(self.tags))
        self.last_search = report
        max_pages = self.options.booru_max_pages
        if self.server_random:
            pages = [1] * max_pages  # each request is a fresh random sample
        else:
            pages = list(range(1, max_pages + 1))
            self.options.rng.shuffle(pages)
        return await collect(pages, self._page, self.candidate, prefix="danbooru", limit=limit, exclude=exclude,
                             report=report, per_page=self.options.booru_per_page, resample=self.server_random)

    async def download(self, candidate: Candidate) -> Candidate:
        return await download_post_image(self.transfer, candidate)

    async def probe(self) -> str:
        """Two cheap requests, for ``mikubot doctor``: does the search work, and how many posts match?
        The search itself (``/posts.json``, one post) is what enforces the account's tag limit — Danbooru's
        ``/counts/posts.json`` never does (``counts_controller.rb`` skips ``validate_tag_limit!``), so a
        count alone would say OK to a search that 422s. The count then says how many posts match."""
        query = " ".join(self.tags)
        await self.transfer.get_json(f"{self.base}/posts.json", params={"tags": query, "limit": 1},
                                     auth=self.options.auth_login(), what="a test search")
        body = await self.transfer.get_json(f"{self.base}/counts/posts.json", params={"tags": query},
                                            auth=self.options.auth_login(), what="a test count")
        n = (body.get("counts") or {}).get("posts") if isinstance(body, dict) else None
        login = "as " + str(self.options.danbooru_login) if self.options.auth_login() else "anonymously"
        found = f"{n} posts match {query!r}" if isinstance(n, int) else f"the search {query!r} is accepted"
        return f"Danbooru at {self.base} answers {login}: {found}"


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
