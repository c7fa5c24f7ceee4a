"""Client-side post filters shared by the booru sources.

Anonymous Danbooru searches may carry only two tags, so rating, ``solo``, the blacklist, the minimum
size and the file type are all checked here, on every post a page returns. Each rejection has a short
reason; a search that finds nothing says which filters removed what, so a person can loosen the right one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from mikubot.sources.base import IMAGE_EXTS
from mikubot.sources.options import SourceOptions


def rejection(
    *,
    tags: Iterable[str],
    rating: str | None,
    ext: str | None,
    width: int | None,
    height: int | None,
    has_file: bool,
    options: SourceOptions,
) -> str | None:
    """Why this post is not a candidate, or ``None`` when it is one."""
    if not has_file:
        return "no file (deleted, banned or hidden)"
    if ext not in IMAGE_EXTS:
        return f"file type {ext or 'unknown'}"
    if rating not in options.ratings:
        return f"rating {rating or 'unknown'}"
    tagset = set(tags)
    if options.character_tag not in tagset:
        return f"not tagged {options.character_tag}"
    if options.require_solo and "solo" not in tagset:
        return "not solo"
    banned = sorted(tagset.intersection(options.blacklist))
    if banned:
        return "blacklisted tag " + banned[0]
    if width is not None and height is not None and min(width, height) < options.min_side:
        return f"smaller than {options.min_side} px"
    return None


def summarise(reasons: Counter[str]) -> str:
    """``"3 rating q, 2 not solo"``: what the filters removed, most common first."""
    return ", ".join(f"{n} {why}" for why, n in reasons.most_common()) or "none"
