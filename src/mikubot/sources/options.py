"""Every knob of the sources in one typed place, with the defaults documented in docs/sources.md.

``source_from_spec(spec, **options)`` accepts these as keyword arguments. A few spellings used by
``mikubot.config.Settings`` are accepted too (``min_side``, ``max_download_mib``, ``http_timeout_s``) so
the pipeline can pass its settings straight through.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from mikubot.sources.urlsafety import UrlPolicy

DEFAULT_USER_AGENT = "miku-discord/0.1 (+self-hosted avatar bot)"

# Danbooru's ratings since 2022 are g(eneral), s(ensitive), q(uestionable), e(xplicit). Gelbooru spells
# them out; Safebooru (and pre-2022 Danbooru) call its only rating "safe", which we treat as general.
RATING_NAMES: dict[str, str] = {
    "g": "g", "general": "g", "safe": "g",
    "s": "s", "sensitive": "s",
    "q": "q", "questionable": "q",
    "e": "e", "explicit": "e",
}


def normalise_rating(value: str | None) -> str | None:
    """Any spelling of a rating to Danbooru's letter; unknown spellings to ``None`` (never accepted)."""
    if value is None:
        return None
    return RATING_NAMES.get(str(value).strip().lower())


@dataclass(frozen=True)
class SourceOptions:
    character_tag: str = "hatsune_miku"
    # Danbooru
    danbooru_url: str = "https://danbooru.donmai.us"
    danbooru_login: str | None = None
    danbooru_api_key: SecretStr | None = None
    # Tags one search may use: 2 for anonymous and Member accounts, 6 for Gold, 12 for Platinum.
    danbooru_tag_limit: int = 2
    extra_tag: str | None = None  # a second server-side tag, e.g. "solo"; replaces order:random
    # Safebooru / Gelbooru (dapi)
    safebooru_url: str = "https://safebooru.org"
    gelbooru_url: str = "https://gelbooru.com"
    gelbooru_user_id: str | None = None
    gelbooru_api_key: SecretStr | None = None
    # Client-side filters
    ratings: frozenset[str] = frozenset({"g"})
    blacklist: frozenset[str] = frozenset()
    require_solo: bool = True
    min_size: int = 512  # shortest side of the original, booru sources only
    max_side: int = 2048  # largest image variant worth downloading (long side)
    # Transfers
    max_download_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 30.0
    user_agent: str = DEFAULT_USER_AGENT
    retries: int = 3
    backoff_s: float = 0.5
    max_retry_after_s: float = 60.0
    max_redirects: int = 5
    # Paging
    per_page: int = 50
    max_pages: int = 10
    # URL source: who may be fetched (tests flip allow_private for their loopback server only)
    url_policy: UrlPolicy = field(default_factory=UrlPolicy)
    # Injected in tests: a shared client (never closed by us) and a seeded random generator
    http: httpx.AsyncClient | None = None
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def build(cls, **options: Any) -> SourceOptions:
        """Validate and normalise keyword options; unknown names are a clear ``ValueError``."""
        opts = dict(options)
        if "min_side" in opts:
            opts.setdefault("min_size", opts.pop("min_side"))
        if "max_download_mib" in opts:
            opts.setdefault("max_download_bytes", int(float(opts.pop("max_download_mib")) * 1024 * 1024))
        if "http_timeout_s" in opts:
            opts.setdefault("timeout_s", opts.pop("http_timeout_s"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"unknown source option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        opts = {k: v for k, v in opts.items() if v is not None or k in ("extra_tag", "http")}

        if "ratings" in opts:
            ratings = _as_list(opts["ratings"])
            letters = {normalise_rating(r) for r in ratings}
            if None in letters or not letters:
                raise ValueError(f"ratings must be some of g, s, q, e (or general, sensitive, ...), not {ratings}")
            opts["ratings"] = frozenset(letters)  # type: ignore[arg-type]
        if "blacklist" in opts:
            opts["blacklist"] = frozenset(t.strip().lower() for t in _as_list(opts["blacklist"]) if t.strip())
        for secret in ("danbooru_api_key", "gelbooru_api_key"):
            if secret in opts and not isinstance(opts[secret], SecretStr):
                opts[secret] = SecretStr(str(opts[secret]))
        for url in ("danbooru_url", "safebooru_url", "gelbooru_url"):
            if url in opts:
                if not str(opts[url]).startswith(("http://", "https://")):
                    raise ValueError(f"{url} must be an http(s) URL, not {opts[url]!r}")
                opts[url] = str(opts[url]).rstrip("/")
        if "character_tag" in opts:
            tag = str(opts["character_tag"]).strip().lower().replace(" ", "_")
            if not tag:
                raise ValueError("character_tag is empty")
            opts["character_tag"] = tag
        for positive in ("min_size", "max_side", "max_download_bytes", "per_page", "max_pages", "danbooru_tag_limit"):
            if positive in opts and int(opts[positive]) < 1:
                raise ValueError(f"{positive} must be at least 1, not {opts[positive]}")
        if "timeout_s" in opts and float(opts["timeout_s"]) <= 0:
            raise ValueError("timeout_s must be positive")
        if "retries" in opts and int(opts["retries"]) < 0:
            raise ValueError("retries must be 0 or more")
        if isinstance(opts.get("rng"), int):
            opts["rng"] = random.Random(opts["rng"])
        return cls(**opts)

    def auth_login(self) -> tuple[str, str] | None:
        """Danbooru credentials for HTTP basic auth (never put in a URL, so never in a log line)."""
        if self.danbooru_login and self.danbooru_api_key is not None:
            return self.danbooru_login, self.danbooru_api_key.get_secret_value()
        return None


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [p for p in value.replace(",", " ").split() if p]
    return [str(v) for v in value]
