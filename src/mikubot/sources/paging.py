"""What every booru source does alike (Danbooru and dapi): walk result pages until enough acceptable
candidates are found, and download a chosen one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mikubot.sources.base import Candidate, SourceError
from mikubot.sources.imagefile import sniff
from mikubot.sources.report import SearchReport
from mikubot.sources.transfer import Transfer

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


async def download_post_image(transfer: Transfer, candidate: Candidate) -> Candidate:
    """Fetch ``candidate.image_url`` (without API credentials: images come from the CDN, and credentials
    never leave the API host) and fill data, real type and size from the bytes themselves."""
    if not candidate.image_url:
        raise SourceError(f"{candidate.key} has no image URL")
    data, final_url, _ctype = await transfer.download(candidate.image_url, what=f"the image of {candidate.key}")
    header = sniff(data, what=f"the file of {candidate.key}")
    candidate.data = data
    candidate.file_ext, candidate.width, candidate.height = header.ext, header.width, header.height
    candidate.extra["downloaded_from"] = final_url
    return candidate
