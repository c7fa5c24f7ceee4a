"""Walking a booru's result pages until enough acceptable candidates are found (Danbooru and dapi alike)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mikubot.sources.base import Candidate
from mikubot.sources.report import SearchReport

Post = dict[str, Any]


async def collect(
    pages: list[int],
    fetch: Callable[[int], Awaitable[list[Post]]],
    candidate: Callable[[Post, SearchReport], Candidate | None],
    *,
    prefix: str,
    limit: int,
    exclude: set[str],
    report: SearchReport,
    per_page: int,
    resample: bool = False,
) -> list[Candidate]:
    """Fetch ``pages`` in the order given and turn posts into candidates until ``limit`` are found.

    A post seen twice or used before (``exclude``, keys ``"{prefix}:{id}"``) is skipped. A short page is the
    last one: pages after it are skipped; with ``resample`` (every request is a fresh server-side random
    sample, e.g. Danbooru's ``order:random``) a short page means the whole result set fits in one page, so
    asking again would only reshuffle it and the walk ends.
    """
    found: dict[str, Candidate] = {}
    if limit < 1:
        return []
    last_page = max(pages, default=0)  # pages past this are known to be empty
    for page in pages:
        if page > last_page:
            continue
        posts = await fetch(page)
        report.pages.append(page)
        for post in posts:
            if "id" not in post:
                continue
            key = f"{prefix}:{post['id']}"
            if key in found:
                continue
            report.seen += 1
            if key in exclude:
                report.reject("used before")
                continue
            cand = candidate(post, report)
            if cand is not None:
                found[key] = cand
                if len(found) >= limit:
                    break
        if len(found) >= limit:
            break
        if len(posts) < per_page:
            if resample:
                break
            last_page = min(last_page, page if posts else page - 1)
    report.accepted = len(found)
    return list(found.values())[:limit]
