"""History rows as the panel shows them: links to the avatar files, the credit, nothing internal.

Everything here ends up in HTML or JSON served to anyone who can reach the panel, so links are only
ever http(s) (a booru post cannot smuggle a ``javascript:`` link into the page) and credentials inside a
URL are cut out before display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


def annotated_path(avatars_dir: Path, row: dict[str, Any]) -> Path:
    """The annotated source image (faces, crop square, round area) of a change or of what it restored."""
    origin = row.get("restored_from") or row["id"]
    return avatars_dir / f"change-{int(origin):05d}_annotated.jpg"


def change_view(row: dict[str, Any], avatars_dir: Path, *, with_events: bool = True) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in INTERNAL}
    if not with_events:
        out.pop("events", None)
    cid = row["id"]
    out["source_spec"] = redact_spec(row.get("source_spec"))
    out["page_url"] = safe_link(row.get("page_url"))
    out["image_url"] = safe_link(row.get("image_url"))
    has_avatar = bool(row.get("avatar_path")) and inside(Path(row["avatar_path"]), avatars_dir)
    out["avatar_url"] = f"/avatars/{cid}.png" if has_avatar else None
    out["annotated_url"] = f"/avatars/{cid}/annotated.jpg" if inside(annotated_path(avatars_dir, row), avatars_dir) else None
    has_banner = bool(row.get("banner_path")) and inside(Path(row["banner_path"]), avatars_dir)
    out["banner_url"] = f"/avatars/{cid}/banner.png" if has_banner else None
    out["credit"] = {
        "artist": row.get("artist"),
        "source": row.get("source"),
        "link": safe_link(row.get("page_url")) or safe_link(row.get("image_url")),
    }
    return out
