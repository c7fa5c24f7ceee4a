"""The record of one finished change — one model for the history row, the report file and the API.

``ChangeRecord.to_json()`` is what ``change()`` and ``restore()`` return, what the CLI's ``--json``
prints, what the report file next to the avatar holds and what the panel answers with ``?wait=true``.
``ChangeRecord.history_columns()`` is the same record flattened into the history table's result
columns (see history.py): the credit's fields become ``source``/``post_key``/..., ``timings_ms``
becomes ``timings``, and the change's progress events, which only the row keeps, are added.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

FinalStatus = Literal["applied", "dry-run", "failed"]


class Credit(BaseModel):
    """Where the avatar's picture came from (a restore repeats the restored change's credit)."""

    spec: str = Field(description="the source as asked for: danbooru, local:DIR, restore:ID, ...")
    name: str | None = Field(None, description="the source that supplied the picture")
    key: str | None = Field(None, description="the post's key in that source (never used twice)")
    page_url: str | None = None
    image_url: str | None = None
    artist: str | None = None
    tags: list[str] | None = None
    rating: str | None = None
    filename: str | None = None
    size: list[int] | None = Field(None, description="the source picture's [width, height]")


class ChangeRecord(BaseModel):
    id: int
    status: FinalStatus
    dry_run: bool
    guild_id: int | None = Field(None, description="the server whose own look this changed; None: the global profile")
    source: Credit
    face_box: list[float] | None = None
    crop_box: list[float] | None = None
    crop_method: str | None = None
    crop_reason: str | None = Field(None, description="which crop path was taken and why (the face chosen, or why none)")
    face_inside_circle: bool | None = None
    avatar_size: list[int] | None = None
    fallbacks: list[str] = Field(default_factory=list, description="stage:fallback, e.g. verify:heuristic")
    detector_backend: str | None = None
    verifier: str | None = None
    verification: dict[str, Any] | None = None
    description: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    reservations: list[dict[str, Any]] = Field(default_factory=list)
    vram_timeline: list[dict[str, Any]] = Field(default_factory=list)
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    avatar_path: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict)
    report_path: str | None = None
    uploaded: bool = False
    upload: dict[str, Any] | None = None
    # The profile banner (MIKU_BANNER): its file, its 5:2 crop in source pixels, why it is framed so (or why
    # there is none) and its [width, height]. All None when banners are off.
    banner_path: str | None = None
    banner_box: list[float] | None = None
    banner_reason: str | None = Field(None, description="how the banner was framed, or why the picture has none")
    banner_size: list[int] | None = None
    failed_stage: str | None = None
    error: str | None = None
    insufficient_storage: str | None = Field(None, description="the file that could not be written for want of "
                                             "disk space, when that is why the change failed")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def history_columns(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """The history row's result columns (``History.finish``'s keyword arguments)."""
        credit = self.source
        return {
            "source": credit.name, "post_key": credit.key, "page_url": credit.page_url,
            "image_url": credit.image_url, "artist": credit.artist, "tags": credit.tags, "rating": credit.rating,
            "face_box": self.face_box, "crop_box": self.crop_box, "crop_method": self.crop_method,
            "fallbacks": self.fallbacks, "detector_backend": self.detector_backend,
            "verification": self.verification, "description": self.description, "timings": self.timings_ms,
            "vram_timeline": self.vram_timeline, "candidates": self.candidates, "events": events,
            "avatar_path": self.avatar_path, "report_path": self.report_path, "uploaded": self.uploaded,
            "error": self.error,
            "banner_path": self.banner_path, "banner_box": self.banner_box, "banner_reason": self.banner_reason,
            "banner_size": self.banner_size,
        }
