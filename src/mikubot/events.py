"""Progress events of an avatar change: ``{change_id, stage, status, t, detail}``.

The pipeline emits; the CLI's live display, the bot's progress message, the panel's event stream and the
tests subscribe. A bus belongs to whoever creates it (one per pipeline, or one shared by a bot process) —
there is no module state, so two changes in one process never see each other's events unless they share
a bus.

Each event's ``detail`` is one of the typed models below, chosen by what happened (``DETAIL_KINDS``:
by stage and status); its JSON holds exactly the keys the emitter gave (``mikubot.wire.Sparse``). Events
read back from a history row are parsed into the same models; a stored detail that fits none of them
(written by an older version) loads as ``OtherDetail`` with its keys as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, \
    field_serializer, field_validator

from mikubot.redact import scrub
from mikubot.wire import Sparse

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("search", "download", "verify", "reserve", "detect", "crop", "upload", "record")
Status = Literal["start", "progress", "done", "skip", "fallback", "fail"]


class Detail(Sparse):
    """What an event says beyond its stage and status (the base of every kind; alone: nothing more)."""


# --- a stage begins -------------------------------------------------------------------------------------------------
class SearchStart(Detail):
    spec: str
    limit: int


class CountStart(Detail):
    """download and verify: how many candidates the stage takes on."""

    count: int


class ReserveStart(Detail):
    consumer: str


class DetectStart(Detail):
    via: str = Field(description="service | in-process")


class UploadStart(Detail):
    dry_run: bool
    banner: bool = False
    guild_id: int | None = None
    restored_from: int | None = None


# --- a stage's findings ---------------------------------------------------------------------------------------------
class Found(Detail):
    """search: the candidates found and what the source left out (its report)."""

    found: int
    keys: list[str] = Field(default_factory=list)
    report: str | None = None


class Downloaded(Detail):
    key: str
    bytes: int | None = None
    size: list[int]


class Reserved(Detail):
    """A VRAM reservation granted (the vision model's in verify, the detector's in reserve)."""

    reserved: str
    waited_s: float
    unloaded: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


class Verdict(Detail):
    """verify: the verifier's answer about one candidate (a skip when it is not the character)."""

    key: str
    method: str
    is_character: bool | None = None
    confidence: float
    description: str = ""


class FacesFound(Detail):
    key: str
    faces: int
    via: str
    backend: str | None = None
    error: str | None = None


class Cropped(Detail):
    """crop: the chosen candidate's square (source pixels), its face and the source's size."""

    key: str
    method: str
    box: list[float]
    face: list[float] | None = None
    size: list[int] | None = None


class BannerFramed(Detail):
    """crop: the banner's 5:2 frame (None: no banner, ``reason`` says why)."""

    key: str
    banner: list[float] | None
    banner_size: list[int] | None = None
    reason: str | None = None


# --- a step down, a skip, the end -----------------------------------------------------------------------------------
class Fallback(Detail):
    to: str
    key: str | None = None
    reason: str


class Skipped(Detail):
    """One candidate dropped out of the stage (download, crop): which and why."""

    key: str
    reason: str


class DryRunSkip(Detail):
    """upload, dry run: why nothing was uploaded and where the files were written instead."""

    reason: str | None
    avatar: str
    banner: str | None = None


class Failure(Detail):
    error: str


class StageDone(Detail):
    ms: float | None = None
    summary: str | None = Field(None, description="the stage's last word, over all of its candidates")


class RecordDone(Detail):
    """The record stage's done: the change's final status (and error); ``ms`` is absent from the copy the
    history row keeps, written before the stage ended."""

    status: str
    error: str | None = None
    ms: float | None = None


class OtherDetail(Detail):
    """A stored detail that fits no kind above (an older version's): kept as it was."""

    model_config = ConfigDict(extra="allow")


# The kinds of detail an event of (stage, status) may carry, in the order a stored one is tried; a pair
# not listed takes its status's kind (DETAIL_BY_STATUS).
DETAIL_KINDS: dict[tuple[str, str], tuple[type[Detail], ...]] = {
    ("search", "start"): (SearchStart,), ("download", "start"): (CountStart,), ("verify", "start"): (CountStart,),
    ("reserve", "start"): (ReserveStart,), ("detect", "start"): (DetectStart,), ("upload", "start"): (UploadStart,),
    ("search", "progress"): (Found,), ("download", "progress"): (Downloaded,),
    ("verify", "progress"): (Verdict, Reserved), ("reserve", "progress"): (Reserved,),
    ("detect", "progress"): (FacesFound,), ("crop", "progress"): (Cropped, BannerFramed),
    ("verify", "skip"): (Verdict,), ("upload", "skip"): (DryRunSkip,), ("record", "done"): (RecordDone,),
}
DETAIL_BY_STATUS: dict[str, type[Detail]] = {
    "start": Detail, "progress": Detail, "done": StageDone, "skip": Skipped, "fallback": Fallback, "fail": Failure,
}


def parse_detail(stage: str, status: str, data: dict[str, Any]) -> Detail:
    """A detail as JSON (a history row's) into its model: the first kind its keys fit."""
    kinds = DETAIL_KINDS.get((stage, status)) or (DETAIL_BY_STATUS.get(status, Detail),)
    for kind in kinds:
        try:
            parsed = kind.model_validate(data)
        except ValidationError:
            continue
        if set(data) <= parsed.model_fields_set:  # every key has its home in the kind
            return parsed
    return OtherDetail.model_validate(data)


class ProgressEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    change_id: int
    stage: str
    status: Status
    t: float = Field(description="seconds since the change started (monotonic clock)")
    detail: SerializeAsAny[Detail] = Field(default_factory=Detail)

    @field_validator("detail", mode="before")
    @classmethod
    def _typed_detail(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, Detail) or not isinstance(value, dict):
            return value
        return parse_detail(info.data.get("stage", ""), info.data.get("status", ""), value)

    @field_serializer("t")
    def _rounded(self, t: float) -> float:
        return round(t, 3)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


Subscriber = Callable[[ProgressEvent], None]


class EventBus:
    """Synchronous fan-out to subscribers. A subscriber that raises is logged and skipped: a broken
    progress display must never break an avatar change."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add ``fn``; returns a function that removes it again."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def queue(self, maxsize: int = 1000) -> tuple[asyncio.Queue[ProgressEvent], Callable[[], None]]:
        """An asyncio queue fed with every event (for streaming to a web client) and its unsubscribe.
        Call from the event loop that will read the queue; a full queue drops the oldest event."""
        q: asyncio.Queue[ProgressEvent] = asyncio.Queue(maxsize=maxsize)

        def put(ev: ProgressEvent) -> None:
            if q.full():
                q.get_nowait()
            q.put_nowait(ev)

        return q, self.subscribe(put)

    def emit(self, event: ProgressEvent) -> None:
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - see class docstring
                log.exception("progress subscriber %r failed", fn)


class ChangeEvents:
    """The emitter one change uses: stamps the change id and the time since the change began."""

    def __init__(self, bus: EventBus, change_id: int) -> None:
        self.bus = bus
        self.change_id = change_id
        self.t0 = time.monotonic()
        self.log: list[ProgressEvent] = []

    def emit(self, stage: str, status: Status, detail: Detail | None = None, /) -> ProgressEvent:
        given = detail if detail is not None else Detail()
        # No URL credentials in any event (``mikubot.redact``): a reason may quote a source's URL.
        clean = type(given).model_validate(scrub(given.model_dump()))
        ev = ProgressEvent(change_id=self.change_id, stage=stage, status=status, t=time.monotonic() - self.t0,
                           detail=clean)
        self.log.append(ev)
        self.bus.emit(ev)
        return ev
