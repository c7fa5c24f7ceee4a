"""``url:https://...`` - one picture from the web, fetched only if that is safe.

https only; the host's every address must be public (``urlsafety``), checked before the first request,
again on each redirect (at most ``max_redirects``), and against the connected peer before the body is
read. The response must say it is an image (or generic bytes) and is cut off at ``max_download_bytes``
and ``timeout_s``; the bytes must then really be one of the formats the detector reads. The key is ``url:<URL>``.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import httpx

from mikubot.sources.base import Candidate, SourceError, normalise_ext
from mikubot.sources.imagefile import CONTENT_TYPES, sniff
from mikubot.sources.options import SourceOptions
from mikubot.sources.transfer import Transfer, display_url
from mikubot.sources.urlsafety import check_peer, check_url, check_url_syntax

# Some hosts serve images as generic bytes or with no type; the content sniff decides then.
ACCEPTED_TYPES = CONTENT_TYPES + ("image/jpg", "application/octet-stream", "binary/octet-stream", "")


class UrlSource:
    name = "url"

    def __init__(self, url: str, options: SourceOptions):
        self.options = options
        self.url = str(check_url_syntax(url.strip(), options.url_policy))  # refuses http:// etc. at once
        self.transfer = Transfer(options, "the web server")

    async def search(self, limit: int, exclude: set[str]) -> list[Candidate]:
        if limit < 1:
            return []
        key = "url:" + self.url
        if key in exclude:
            return []
        await check_url(self.url, self.options.url_policy)
        name = PurePosixPath(httpx.URL(self.url).path).name or "image"
        ext = normalise_ext(PurePosixPath(name).suffix) or None
        return [Candidate(
            source=self.name, key=key, image_url=self.url, page_url=self.url, artist=None, tags=[],
            rating=None, width=None, height=None, file_ext=ext, filename=name,
        )]

    async def _hop(self, url: str) -> None:
        await check_url(url, self.options.url_policy)

    def _peer(self, response: httpx.Response, url: str) -> None:
        check_peer(response, self.options.url_policy, url=url)

    async def download(self, candidate: Candidate) -> Candidate:
        if not candidate.image_url:
            raise SourceError(f"{candidate.key} has no URL")
        data, final_url, ctype = await self.transfer.download(
            candidate.image_url, what=f"the image at {display_url(candidate.image_url)}",
            check_hop=self._hop, check_response=self._peer, content_types=ACCEPTED_TYPES,
        )
        header = sniff(data, what=f"the file at {display_url(final_url)}")
        candidate.data = data
        candidate.file_ext, candidate.width, candidate.height = header.ext, header.width, header.height
        candidate.extra.update({"downloaded_from": final_url, "content_type": ctype})
        return candidate
