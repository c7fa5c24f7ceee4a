"""Every knob of the sources, in one pydantic model: ``SourceSettings``.

``mikubot.config.Settings`` inherits it, so each field is also a setting (``MIKU_GELBOORU_API_KEY`` ...,
environment first, then the ``MIKU_CONFIG`` file) validated once, by pydantic. ``SourceOptions`` adds what
only code can hand over (a shared HTTP client, a seeded random generator, the URL source's address
policy); ``source_from_spec(spec, **options)`` builds one from keyword arguments, and the pipeline from
its ``Settings`` (``SourceOptions.from_settings``). docs/sources.md lists every field.
"""

from __future__ import annotations

import json
import random
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from httpretry import RetryPolicy
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
RATING_ORDER = "gsqe"
ANONYMOUS_TAG_LIMIT = 2  # Danbooru's tag_query_limit below Gold (app/models/user.rb)

# Lists from the environment arrive as text: "a,b,c" or JSON; ``_split`` parses both.
TextList = Annotated[list[str], NoDecode]


def normalise_rating(value: str | None) -> str | None:
    """Any spelling of a rating to Danbooru's letter; unknown spellings to ``None`` (never accepted)."""
    if value is None:
        return None
    return RATING_NAMES.get(str(value).strip().lower())


def _split(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip().startswith("["):
            return json.loads(value)
        return [p for p in value.replace(",", " ").split() if p]
    return value


class SourceSettings(BaseModel):
    """The sources' settings (part of ``Settings``; the field name in upper case after ``MIKU_`` is its
    environment variable). Validators are named ``_source_*``: ``Settings`` inherits them, and a validator
    of the same name there would silently replace one here."""

    # What to look for
    character_tag: str = Field("hatsune_miku", description="the character's booru tag")
    extra_tag: str | None = Field(None, description="one more server-side tag for the boorus, e.g. solo "
                                  "(replaces Danbooru's order:random)")
    ratings: TextList = Field(default_factory=lambda: ["g"], description="allowed ratings (g, s, q, e)")
    blacklist: TextList = Field(default_factory=list, description="posts with any of these tags are skipped")
    require_solo: bool = Field(True, description="booru posts must be tagged solo")
    min_side: int = Field(512, ge=1, description="smallest acceptable image side in pixels (boorus: of the original)")
    max_side: int = Field(2048, ge=1, description="largest image variant worth downloading (long side, pixels)")
    max_download_mib: float = Field(20.0, gt=0, description="largest file downloaded")
    # Danbooru
    danbooru_url: str = "https://danbooru.donmai.us"
    danbooru_login: str | None = Field(None, description="Danbooru account name (with danbooru_api_key)")
    danbooru_api_key: SecretStr | None = None
    danbooru_tag_limit: int = Field(2, ge=1, description="counted tags one search may use: 2 anonymous/Member, "
                                    "6 Gold (never more than 2 without a login); rating: is free")
    # Gelbooru (API credentials required since 2025) and Safebooru
    gelbooru_url: str = "https://gelbooru.com"
    gelbooru_user_id: str | None = Field(None, description="numeric Gelbooru user id (My Account > Options > "
                                         "API Access Credentials)")
    gelbooru_api_key: SecretStr | None = Field(None, description="Gelbooru API key (same page)")
    safebooru_url: str = "https://safebooru.org"
    booru_per_page: int = Field(50, ge=1, le=100, description="posts asked for per search request")
    booru_max_pages: int = Field(10, ge=1, description="search requests per change at most")
    # HTTP
    http_timeout_s: float = Field(30.0, gt=0, description="per request attempt")
    user_agent: str = DEFAULT_USER_AGENT
    source_retries: int = Field(3, ge=0, description="retries after a network error, 429 or 5xx")
    source_backoff_s: float = Field(0.5, ge=0, description="first wait between retries (doubling, jittered)")
    source_max_retry_after_s: float = Field(60.0, ge=0, description="longest Retry-After waited out; a longer one "
                                            "fails the change")
    source_max_redirects: int = Field(5, ge=0)

    @field_validator("ratings", "blacklist", mode="before")
    @classmethod
    def _source_lists(cls, v: Any) -> Any:
        return _split(v)

    @field_validator("ratings")
    @classmethod
    def _source_ratings(cls, v: list[str]) -> list[str]:
        letters = {normalise_rating(r) for r in v}
        if None in letters or not letters:
            raise ValueError(f"ratings must be some of g, s, q, e (or general, sensitive, ...), not {v}")
        return sorted(letters, key=RATING_ORDER.index)  # type: ignore[arg-type]

    @field_validator("blacklist")
    @classmethod
    def _source_blacklist(cls, v: list[str]) -> list[str]:
        return sorted({t.strip().lower() for t in v if t.strip()})

    @field_validator("danbooru_login", "danbooru_api_key", "gelbooru_user_id", "gelbooru_api_key", "extra_tag",
                     mode="before")
    @classmethod
    def _source_empty_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("character_tag")
    @classmethod
    def _source_tag(cls, v: str) -> str:
        tag = v.strip().lower().replace(" ", "_")
        if not tag:
            raise ValueError("character_tag is empty")
        return tag

    @field_validator("extra_tag")
    @classmethod
    def _source_one_tag(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != 1:
            raise ValueError(f"extra_tag must be one tag, not {v!r}")
        return v.strip() if v is not None else None

    @field_validator("gelbooru_user_id", mode="before")
    @classmethod
    def _source_user_id(cls, v: Any) -> Any:
        if v is not None and not str(v).strip().isdigit():
            raise ValueError("gelbooru_user_id is the numeric id shown with the API key (not the user name)")
        return None if v is None else str(v).strip()

    @field_validator("danbooru_url", "gelbooru_url", "safebooru_url")
    @classmethod
    def _source_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    # --- derived --------------------------------------------------------------------------------------------
    @property
    def max_download_bytes(self) -> int:
        return int(self.max_download_mib * 1024 * 1024)

    @property
    def gelbooru_credentials(self) -> tuple[str, str] | None:
        """Gelbooru's ``(user_id, api_key)``, both or nothing."""
        if self.gelbooru_user_id and self.gelbooru_api_key is not None:
            return self.gelbooru_user_id, self.gelbooru_api_key.get_secret_value()
        return None

    @property
    def danbooru_search_tags(self) -> int:
        """Counted tags a Danbooru search may use: ``danbooru_tag_limit`` with a login, never more than an
        anonymous account's 2 without one (whatever the setting says)."""
        return self.danbooru_tag_limit if self.auth_login() else min(self.danbooru_tag_limit, ANONYMOUS_TAG_LIMIT)

    def auth_login(self) -> tuple[str, str] | None:
        """Danbooru credentials for HTTP basic auth (never put in a URL, so never in a log line)."""
        if self.danbooru_login and self.danbooru_api_key is not None:
            return self.danbooru_login, self.danbooru_api_key.get_secret_value()
        return None

    def source_settings(self) -> dict[str, Any]:
        """These fields' values (e.g. out of a ``Settings``), to build ``SourceOptions`` from."""
        return {name: getattr(self, name) for name in SourceSettings.model_fields}


class SourceOptions(SourceSettings):
    """``SourceSettings`` plus what only code hands over. Unknown names are refused (a typo is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    url_policy: UrlPolicy = Field(default_factory=UrlPolicy, description="who the URL source may fetch")
    http: httpx.AsyncClient | None = Field(None, description="a shared client (never closed by the source)")
    rng: random.Random = Field(default_factory=random.Random, description="page order, backoff jitter")

    @field_validator("rng", mode="before")
    @classmethod
    def _seed(cls, v: Any) -> Any:
        return random.Random(v) if isinstance(v, int) else v

    @classmethod
    def from_settings(cls, settings: SourceSettings, **runtime: Any) -> SourceOptions:
        return cls(**{**settings.source_settings(), **runtime})

    @property
    def retry(self) -> RetryPolicy:
        """The sources' retry policy (see ``httpretry``)."""
        return RetryPolicy(attempts=self.source_retries + 1, backoff_s=self.source_backoff_s,
                           max_retry_after_s=self.source_max_retry_after_s, rng=self.rng)
