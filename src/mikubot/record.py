"""The record of one finished change — one model for the history row, the report file and the API.

``ChangeRecord.to_json()`` is what ``change()`` and ``restore()`` return, what the CLI's ``--json``
prints, what the report file next to the avatar holds and what the panel answers with ``?wait=true``.
``ChangeRecord.history_columns()`` is the same record flattened into the history table's result
columns (see history.py): the credit's fields become ``source``/``post_key``/..., ``timings_ms``
becomes ``timings``, and the change's progress events, which only the row keeps, are added. A row read
back is a ``mikubot.history.HistoryRow`` — a different, flat shape (``source`` there is a name, not a
credit). The nested parts (verification, reservations, candidates, upload) are the models of
``mikubot.record_parts``, the VRAM timeline vramctl's ``TimelineEvent``s; the row reads its JSON columns
back into the same models.

``build_record`` makes the record from a change's state (``mikubot.pipeline.state.ChangeState``): the
credit of the chosen picture (a restore repeats the restored change's), its crop and banner, the
reservations on one clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from mikubot.crop import face_in_circle
from mikubot.record_parts import CandidateSummary, ReservationSummary, UploadOutcome, Verification
from vramctl.timeline import TimelineEvent

if TYPE_CHECKING:  # the pipeline builds records; the record module does not import the pipeline
    from mikubot.events import ProgressEvent
    from mikubot.history import HistoryRow
    from mikubot.pipeline.state import ChangeState, Chosen

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
    verification: Verification | None = None
    description: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    reservations: list[ReservationSummary] = Field(default_factory=list)
    vram_timeline: list[TimelineEvent] = Field(default_factory=list, description="both reservations' steps on one "
                                               "clock: seconds since the first request")
    candidates: list[CandidateSummary] = Field(default_factory=list)
    avatar_path: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict)
    report_path: str | None = None
    uploaded: bool = False
    upload: UploadOutcome | None = Field(None, description="what Discord answered, or why nothing was uploaded")
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

    def history_columns(self, events: list[ProgressEvent]) -> dict[str, Any]:
        """The history row's result columns (``History.finish``'s keyword arguments), as JSON values."""
        credit = self.source
        as_json = self.to_json()
        return {
            "source": credit.name, "post_key": credit.key, "page_url": credit.page_url,
            "image_url": credit.image_url, "artist": credit.artist, "tags": credit.tags, "rating": credit.rating,
            "face_box": self.face_box, "crop_box": self.crop_box, "crop_method": self.crop_method,
            "fallbacks": self.fallbacks, "detector_backend": self.detector_backend,
            "verification": as_json["verification"], "description": self.description, "timings": self.timings_ms,
            "vram_timeline": as_json["vram_timeline"], "candidates": as_json["candidates"],
            "events": [e.to_json() for e in events],
            "avatar_path": self.avatar_path, "report_path": self.report_path, "uploaded": self.uploaded,
            "error": self.error,
            "banner_path": self.banner_path, "banner_box": self.banner_box, "banner_reason": self.banner_reason,
            "banner_size": self.banner_size,
        }


# --- building a record from a change's state -------------------------------------------------------------------
def rounded_box(box: Any) -> list[float] | None:
    """A box as records and events show it (one decimal)."""
    return [round(float(v), 1) for v in box] if box is not None else None


def build_record(state: ChangeState, status: FinalStatus) -> ChangeRecord:
    """The record of a change or restore as it stands (the record stage calls this once it has ended)."""
    chosen = state.chosen
    crop = chosen.crop if chosen else None
    looks = _looks(chosen) if chosen else _earlier_looks(state.earlier)
    return ChangeRecord(
        id=state.id, status=status, dry_run=state.dry_run, guild_id=state.guild_id, source=credit_of(state),
        face_inside_circle=face_in_circle(crop.face.bbox, crop.box)[0] if crop and crop.face else None,
        avatar_size=[crop.image.width, crop.image.height] if crop else None,
        fallbacks=state.fallbacks,
        detector_backend=state.detector_backend or (state.earlier.detector_backend if state.earlier else None),
        verifier=state.verifier, **looks,
        timings_ms={k: round(v, 1) for k, v in state.timings.items()},
        reservations=[r.summary() for r in state.reservations], vram_timeline=_timeline(state),
        candidates=[p.summary() for p in state.picks],
        avatar_path=str(state.kept_avatar) if state.kept_avatar else None, files=state.files,
        report_path=state.files.get("report"), uploaded=state.upload.done, upload=state.upload.result,
        failed_stage=state.failed_stage, error=state.error, insufficient_storage=state.insufficient_storage,
        **_banner_fields(state),
    )


def credit_of(state: ChangeState) -> Credit:
    """Where the avatar's picture came from: the chosen candidate, or (a restore) the restored change's."""
    if state.chosen is None:
        e = state.earlier
        if e is None:
            return Credit(spec=state.spec)
        return Credit(spec=state.spec, name=e.source, key=e.post_key, page_url=e.page_url, image_url=e.image_url,
                      artist=e.artist, tags=e.tags, rating=e.rating)
    pick = state.chosen.pick
    c = pick.candidate
    return Credit(spec=state.spec, name=c.source, key=c.key, page_url=c.page_url, image_url=c.image_url,
                  artist=c.artist, tags=list(c.tags), rating=c.rating, filename=c.filename,
                  size=[pick.image.width, pick.image.height] if pick.image is not None else None)


def _banner_fields(state: ChangeState) -> dict[str, Any]:
    """The record's banner fields: the one made here, or (a restore) the restored change's."""
    b, e = state.banner.made, state.earlier
    restored = e if state.banner.kept is not None and b is None else None
    return {
        "banner_path": str(state.banner.kept) if state.banner.kept else None,
        "banner_box": rounded_box(b.box) if b else (restored.banner_box if restored else None),
        "banner_size": [b.image.width, b.image.height] if b else (restored.banner_size if restored else None),
        "banner_reason": state.banner.reason,
    }


def _looks(chosen: Chosen) -> dict[str, Any]:
    crop, verification = chosen.crop, chosen.pick.verification
    return {"face_box": rounded_box(crop.face.bbox) if crop.face else None, "crop_box": rounded_box(crop.box),
            "crop_method": crop.method, "crop_reason": crop.reason,
            "verification": verification,
            "description": verification.description if verification else None}


def _earlier_looks(earlier: HistoryRow | None) -> dict[str, Any]:
    """A restore repeats the restored change's looks as its row kept them (the crop reason is in its
    report file only)."""
    if earlier is None:
        return {}
    return {"face_box": earlier.face_box, "crop_box": earlier.crop_box, "crop_method": earlier.crop_method,
            "verification": earlier.verification, "description": earlier.description}


def _timeline(state: ChangeState) -> list[TimelineEvent]:
    """Both reservations' events on one clock (seconds since the first request), rounded as vramctl shows them."""
    if not state.reservations:
        return []
    t_zero = min(r.timeline.started for r in state.reservations)
    events = [TimelineEvent(**{**e, "t": round(e["t"] + r.timeline.started - t_zero, 4)})
              for r in state.reservations for e in r.timeline.to_json()]
    return sorted(events, key=lambda e: e.t)
