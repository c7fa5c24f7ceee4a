"""Safebooru and Gelbooru through the Gelbooru-style "dapi" (``index.php?page=dapi&s=post&q=index&json=1``).

Their posts differ from Danbooru's: ``tags`` is one space-separated string, ``rating`` is spelled out
(``general``/``sensitive``/``questionable``/``explicit``; older Safebooru says ``safe``), the uploader is
``owner``, and there are no artist tags in the post (``artist`` stays empty). Gelbooru wraps the list
in ``{"@attributes": ..., "post": [...]}`` and leaves ``post`` out when nothing matched; Safebooru returns
a bare list (with ``file_url``, ``sample_url``, ``rating: "general"`` and a ``score`` that may be null),
or an empty body for no results; older versions omit ``file_url`` (it is then built from ``directory``
and ``image``). Gelbooru answers 401 to API calls without ``user_id`` and ``api_key`` (since mid-2025):
they come from ``MIKU_GELBOORU_USER_ID``/``MIKU_GELBOORU_API_KEY`` and travel in the query, as the API
demands, masked in every message and log line (``transfer.display_url``). Pages are ``pid`` (from 0),
visited in random order; the same client-side filters as Danbooru apply. There is no tag limit: the query
is the character tag, ``extra_tag``, ``solo`` and, on Gelbooru, the ratings (``rating:general``, or
``-rating:questionable -rating:explicit`` for g+s).

Which file: the ``sample_url`` (about 850 px) when the original's long side exceeds ``max_side``,
else the original (``file_url``).
"""

from __future__ import annotations

from typing import Any

from mikubot.sources.base import Candidate, SourceError, normalise_ext
from mikubot.sources.filters import rejection
from mikubot.sources.options import SourceOptions, normalise_rating
from mikubot.sources.paging import collect, download_post_image
from mikubot.sources.report import SearchReport
from mikubot.sources.transfer import Transfer

RATING_WORDS = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}


class DapiSource:
    """``safebooru`` or ``gelbooru``; ``last_search`` explains the latest search."""

    def __init__(self, name: str, options: SourceOptions):
        if name not in ("safebooru", "gelbooru"):
            raise ValueError(f"unknown dapi site {name!r}")
        self.name = name
        self.options = options
        self.base = options.safebooru_url if name == "safebooru" else options.gelbooru_url
        self.transfer = Transfer(options, name.capitalize(), auth_hint=self._auth_hint())
        self.tags = self._plan()
        self.last_search = SearchReport()

    def _auth_hint(self) -> str:
        if self.name != "gelbooru":
            return "this site should not need credentials; check MIKU_SAFEBOORU_URL"
        if self.options.gelbooru_credentials is None:
            return ("Gelbooru's API needs an account's credentials: set MIKU_GELBOORU_USER_ID and "
                    "MIKU_GELBOORU_API_KEY (gelbooru.com: My Account > Options > API Access Credentials)")
        return "check MIKU_GELBOORU_USER_ID (the number, not the name) and MIKU_GELBOORU_API_KEY"

    def _plan(self) -> list[str]:
        tags = [self.options.character_tag]
        if self.options.extra_tag:
            tags.append(self.options.extra_tag.strip())
        if self.name == "gelbooru":
            # Ratings go to the server: one as rating:general, several by excluding the others.
            # (Safebooru has almost only general posts, and its rating words have changed over time.)
            ratings = self.options.ratings
            if len(ratings) == 1:
                tags.append("rating:" + RATING_WORDS[ratings[0]])
            else:
                tags += ["-rating:" + word for letter, word in RATING_WORDS.items() if letter not in ratings]
        if self.options.require_solo and "solo" not in tags:
            tags.append("solo")
        return tags

    def _params(self, pid: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "page": "dapi", "s": "post", "q": "index", "json": 1,
            "tags": " ".join(self.tags), "limit": self.options.booru_per_page, "pid": pid,
        }
        credentials = self.options.gelbooru_credentials
        if self.name == "gelbooru" and credentials is not None:
            params["user_id"], params["api_key"] = credentials
        return params

    async def _page(self, pid: int) -> list[dict[str, Any]]:
        body = await self.transfer.get_json(
            f"{self.base}/index.php", params=self._params(pid), what=f"the search {' '.join(self.tags)!r} (pid {pid})"
        )
        if body is None:
            return []
        if isinstance(body, dict):
            body = body.get("post") or []
            if isinstance(body, dict):  # a single post, as some versions return it
                body = [body]
        if not isinstance(body, list):
            raise SourceError(f"{self.transfer.service} answered the search with something other than posts",
                              retryable=True)
        return [p for p in body if isinstance(p, dict)]

    def _file_url(self, post: dict[str, Any]) -> str | None:
        url = post.get("file_url")
        if url:
            return str(url)
        directory, image = post.get("directory"), post.get("image")
        if directory is not None and image:
            return f"{self.base}/images/{directory}/{image}"
        return None

    def candidate(self, post: dict[str, Any], report: SearchReport | None = None) -> Candidate | None:
        tags = str(post.get("tags") or "").split()
        rating = normalise_rating(post.get("rating"))
        file_url = self._file_url(post)
        image = str(post.get("image") or file_url or "")
        ext = normalise_ext(image.rsplit(".", 1)[-1]) if "." in image else None
        width, height = _int(post.get("width")), _int(post.get("height"))
        status = str(post.get("status") or "active")
        why = rejection(tags=tags, rating=rating, ext=ext, width=width, height=height,
                        has_file=bool(file_url) and status not in ("deleted", "banned"), options=self.options)
        if why is not None:
            if report is not None:
                report.reject(why)
            return None
        url, kind, w, h = file_url, "original", width, height
        sample = post.get("sample_url")
        has_sample = sample and sample != file_url and post.get("sample") not in (0, False, "0")
        if has_sample and max(width or 0, height or 0) > self.options.max_side:
            url, kind = str(sample), "sample"
            w, h = _int(post.get("sample_width")) or None, _int(post.get("sample_height")) or None
            ext = normalise_ext(str(sample).rsplit(".", 1)[-1])
        post_id = post["id"]
        return Candidate(
            source=self.name,
            key=f"{self.name}:{post_id}",
            image_url=url,
            page_url=f"{self.base}/index.php?page=post&s=view&id={post_id}",
            artist=None,
            tags=tags,
            rating=rating,
            width=w,
            height=h,
            file_ext=ext,
            filename=f"{self.name}_{post_id}.{ext}",
            extra={
                "post_id": post_id,
                "variant": kind,
                "original_url": file_url,
                "original_size": [width, height],
                "md5": post.get("md5") or post.get("hash"),
                "score": post.get("score"),
                "owner": post.get("owner"),
                "post_source": post.get("source"),
            },
        )

    async def search(self, limit: int, exclude: set[str]) -> list[Candidate]:
        report = SearchReport(query=" ".join(self.tags))
        self.last_search = report
        pids = list(range(self.options.booru_max_pages))
        self.options.rng.shuffle(pids)
        return await collect(pids, self._page, self.candidate, prefix=self.name, limit=limit, exclude=exclude,
                             report=report, per_page=self.options.booru_per_page)

    async def download(self, candidate: Candidate) -> Candidate:
        return await download_post_image(self.transfer, candidate)

    async def probe(self) -> str:
        posts = await self._page(0)
        return f"{self.transfer.service} at {self.base} answers ({len(posts)} posts on the first page)"


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
