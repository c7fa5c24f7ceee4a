"""Where avatar pictures come from: Danbooru, Safebooru/Gelbooru, a local folder, a URL, a file.

One interface (``Source``: ``search`` then ``download``), one way to pick one (``source_from_spec``, the
syntax of the CLI's ``--source`` and ``MIKU_SOURCE``). See docs/sources.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from mikubot.sources.base import IMAGE_EXTS, Candidate, Source, SourceError
from mikubot.sources.danbooru import DanbooruSource
from mikubot.sources.dapi import DapiSource
from mikubot.sources.file import FileSource
from mikubot.sources.local import LocalFolderSource
from mikubot.sources.options import DEFAULT_USER_AGENT, SourceOptions, SourceSettings
from mikubot.sources.report import SearchReport
from mikubot.sources.url import UrlSource
from mikubot.sources.urlsafety import UnsafeUrl, UrlPolicy, check_url

SPEC_HELP = "danbooru | safebooru | gelbooru | local:DIR | url:https://... | file:PATH"

__all__ = [
    "DEFAULT_USER_AGENT", "IMAGE_EXTS", "SPEC_HELP", "Candidate", "DanbooruSource", "DapiSource", "FileSource",
    "LocalFolderSource", "SearchReport", "Source", "SourceConfigError", "SourceError", "SourceOptions", "SourceSettings",
    "UnsafeUrl", "UrlPolicy", "UrlSource", "check_url", "source_from_spec",
]


class SourceConfigError(SourceError, ValueError):
    """The source spec or an option is wrong: a person must fix the configuration."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


def describe_errors(exc: ValidationError) -> str:
    """pydantic's errors as one line a person can act on (input values left out: they may be secrets)."""
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "options"
        message = "unknown source option" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{name}: {message.removeprefix('Value error, ')}")
    return "; ".join(parts)


def source_from_spec(spec: str, **options: Any) -> Source:
    """Build the source named by ``spec`` (see ``SPEC_HELP``) with ``options`` (see ``SourceOptions``).

    Raises ``SourceConfigError`` for an unknown spec or option, ``UnsafeUrl`` for a URL that is refused
    without needing the network (http://, credentials in it).
    """
    try:
        opts = SourceOptions(**options)
    except ValidationError as exc:
        raise SourceConfigError(describe_errors(exc)) from exc
    spec = (spec or "").strip()
    kind, sep, arg = spec.partition(":")
    kind = kind.lower()
    try:
        if kind == "danbooru" and not sep:
            return DanbooruSource(opts)
        if kind in ("safebooru", "gelbooru") and not sep:
            return DapiSource(kind, opts)
        if kind == "local" and arg.strip():
            return LocalFolderSource(arg.strip(), opts)
        if kind == "file" and arg.strip():
            return FileSource(arg.strip(), opts)
        if kind == "url" and arg.strip():
            return UrlSource(arg.strip(), opts)
    except ValueError as exc:  # a query that cannot fit the tag limit
        raise SourceConfigError(str(exc)) from exc
    if kind in ("local", "file", "url"):
        raise SourceConfigError(f"the source {spec!r} needs a value after the colon: {SPEC_HELP}")
    raise SourceConfigError(f"unknown source {spec!r}; use {SPEC_HELP}")
