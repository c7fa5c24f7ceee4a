"""History rows as the panel shows them: links to the avatar files, the credit, nothing internal.

Everything here ends up in HTML or JSON served to anyone who can reach the panel, so links are only
ever http(s) (a booru post cannot smuggle a ``javascript:`` link into the page) and credentials inside a
URL are cut out before display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mikubot.history import HistoryRow
from mikubot.outputs import candidate_picture_path
from mikubot.record_parts import CandidateSummary

INTERNAL = ("owner_host", "owner_pid")


def safe_link(url: str | None) -> str | None:
    """``url`` if it is an http(s) URL, without any ``user:password@``; otherwise None."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_spec(spec: str | None) -> str | None:
    """A source spec for display: ``url:https://user:pw@host/x`` loses its credentials."""
    if spec and spec.lower().startswith("url:"):
        return "url:" + (safe_link(spec[4:]) or "(not an http(s) URL)")
    return spec


def inside(path: Path, root: Path) -> bool:
    """``path`` (symlinks resolved) is a file within ``root``: the only files the panel serves."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return resolved.is_relative_to(root.resolve()) and resolved.is_file()


def annotated_path(avatars_dir: Path, row: HistoryRow) -> Path:
    """The annotated source image (faces, crop square, round area) of a change or of what it restored."""
    origin = row.restored_from or row.id
    return avatars_dir / f"change-{origin:05d}_annotated.jpg"


def change_view(row: HistoryRow, avatars_dir: Path, *, with_events: bool = True) -> dict[str, Any]:
    """The row as the panel's JSON and pages show it: its columns but the owner's host and pid, links made
    safe, and the URLs of its files (only those inside the avatars folder)."""
    out = row.model_dump(exclude={*INTERNAL, *(() if with_events else ("events",))})
    cid = row.id
    out["source_spec"] = redact_spec(row.source_spec)
    out["page_url"] = safe_link(row.page_url)
    out["image_url"] = safe_link(row.image_url)
    has_avatar = bool(row.avatar_path) and inside(Path(row.avatar_path or ""), avatars_dir)
    out["avatar_url"] = f"/avatars/{cid}.png" if has_avatar else None
    out["annotated_url"] = f"/avatars/{cid}/annotated.jpg" if inside(annotated_path(avatars_dir, row), avatars_dir) else None
    if row.candidates is not None:
        out["candidates"] = [{**shown, **_picture_links(c, i, cid, avatars_dir)}
                             for i, (c, shown) in enumerate(zip(row.candidates, out["candidates"]))]
    has_banner = bool(row.banner_path) and inside(Path(row.banner_path or ""), avatars_dir)
    out["banner_url"] = f"/avatars/{cid}/banner.png" if has_banner else None
    out["credit"] = {"artist": row.artist, "source": row.source,
                     "link": safe_link(row.page_url) or safe_link(row.image_url)}
    return out


def _picture_links(candidate: CandidateSummary, index: int, change_id: int, avatars_dir: Path) -> dict[str, Any]:
    """A candidate's ``picture_url`` (its thumbnail, while kept) and ``picture_pruned`` (it had one, deleted
    since: thumbnails are kept for the last ``MIKU_CANDIDATE_PICTURES_KEPT`` changes only)."""
    kept = bool(candidate.picture) and inside(candidate_picture_path(avatars_dir, change_id, index), avatars_dir)
    return {"picture_url": f"/avatars/{change_id}/candidates/{index}.jpg" if kept else None,
            "picture_pruned": bool(candidate.picture) and not kept}
