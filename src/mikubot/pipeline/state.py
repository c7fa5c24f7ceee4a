"""One change's state, typed: what the stages have found so far, handed from stage to stage.

A ``ChangeState`` is created by the flow (flow.py) when the ``running`` history row is written and read
by record.py when the record is built. Stages fill it; none of them calls back into the flow or the
pipeline. ``stage()`` is the span every stage runs in (start/done events and its timing);
``fall_back()`` records a step down (vision model → heuristic, detector service → in-process, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mikubot.banner import BannerResult
from mikubot.config import Settings
from mikubot.crop import CropResult
from mikubot.detection import FaceResult
from mikubot.errors import MikubotError
from mikubot.events import ChangeEvents, Detail, Fallback, StageDone
from mikubot.history import HistoryRow
from mikubot.sources import Candidate
from mikubot.record_parts import CandidateSummary, Face, FramingSummary, ReservationSummary, UploadOutcome, Verification


class ChangeFailed(MikubotError):
    """The change cannot produce (or apply) an avatar; ``stage`` says where, the message says why."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage
        self.message = message


@dataclass
class Pick:
    """A candidate as it moves through the stages."""

    candidate: Candidate
    image: Image.Image | None = None
    verification: Verification | None = None
    faces: FaceResult | None = None
    skipped: str | None = None  # why it dropped out, if it did
    lost: str | None = None  # a survivor the crop stage did not choose: why not
    framing: FramingSummary | None = None  # the chosen one: its crop (path taken and why, the faces it chose from)
    picture: str | None = None  # its thumbnail's file name in the avatars folder (the panel's Candidates view)
    # What the verifier prepared for this picture (the vision request's scaled JPEG), made in a worker
    # thread as soon as the picture is decoded, so the K answers follow each other with no encoding between.
    prepared: asyncio.Task[Any] | None = None

    def summary(self) -> CandidateSummary:
        c = self.candidate
        return CandidateSummary(
            source=c.source, key=c.key, page_url=c.page_url, filename=c.filename, verification=self.verification,
            faces=[Face.model_validate(d.to_json()) for d in self.faces.detections] if self.faces else None,
            detected_via=self.faces.via if self.faces else None, skipped=self.skipped, lost=self.lost,
            framing=self.framing, picture=self.picture,
            size=[self.image.width, self.image.height] if self.image is not None else None,
        )


@dataclass
class Chosen:
    """The crop stage's answer: the candidate that becomes the avatar, and how it is cut."""

    pick: Pick
    crop: CropResult


@dataclass
class Reservation:
    """One VRAM reservation as the record shows it (``timeline`` goes into the record's shared clock)."""

    consumer: str
    waited_s: float
    unloaded: list[str]
    timeline: Any  # vramctl's Timeline
    errors: list[str] = field(default_factory=list)

    def summary(self) -> ReservationSummary:
        """The reservation as the record keeps it."""
        return ReservationSummary(consumer=self.consumer, waited_s=round(self.waited_s, 4), unloaded=self.unloaded)


@dataclass
class StageOutcome:
    """What a stage says when it is done (see ``ChangeState.stage``)."""

    summary: str | None = None


@dataclass
class Banner:
    """MIKU_BANNER: the banner made from the chosen picture (None: not made here), how it is framed or
    why there is none, and the kept file (a restore's comes from the restored change)."""

    made: BannerResult | None = None
    reason: str | None = None
    kept: Path | None = None


@dataclass
class Upload:
    """The upload stage's outcome: what Discord answered (or where a dry run wrote the files)."""

    result: UploadOutcome | None = None
    done: bool = False  # Discord took it


@dataclass
class ChangeState:
    """One change (or restore) from its ``running`` row to its finished one."""

    id: int
    spec: str
    settings: Settings  # the global settings, or a server's look applied to them (``Settings.for_guild``)
    events: ChangeEvents
    dry_run: bool
    dry_reason: str | None = None
    guild_id: int | None = None  # None: the global profile
    earlier: HistoryRow | None = None  # a restore: the restored change's history row
    restored_from: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    picks: list[Pick] = field(default_factory=list)
    chosen: Chosen | None = None
    reservations: list[Reservation] = field(default_factory=list)
    verifier: str | None = None
    detector_backend: str | None = None
    files: dict[str, str | None] = field(default_factory=dict)
    kept_avatar: Path | None = None
    banner: Banner = field(default_factory=Banner)
    upload: Upload = field(default_factory=Upload)
    error: str | None = None
    failed_stage: str | None = None
    insufficient_storage: str | None = None  # what could not be written for want of space
    record_started: float = 0.0  # monotonic time the record stage began (its done event's ms)

    @property
    def default_report(self) -> Path:
        return self.settings.avatars_dir / f"change-{self.id:05d}.json"

    @contextlib.contextmanager
    def stage(self, name: str, detail: Detail | None = None) -> Iterator[StageOutcome]:
        """A stage's span: emits start and done, adds its duration (ms) to the timings. The span is the
        ``with`` block wherever it runs — a stage running in its own task overlaps the stages around it.
        The block may set the outcome's ``summary``: the done event carries it, and every view shows it as
        the stage's last word (a stage over K candidates ends on all K, not on the last one processed)."""
        t0 = time.monotonic()
        self.events.emit(name, "start", detail)
        outcome = StageOutcome()
        try:
            yield outcome
        finally:
            ms = (time.monotonic() - t0) * 1000
            self.timings[name] = self.timings.get(name, 0.0) + ms
        done = StageDone(ms=round(ms, 1), summary=outcome.summary) if outcome.summary else StageDone(ms=round(ms, 1))
        self.events.emit(name, "done", done)

    def fall_back(self, stage: str, to: str, reason: str, *, key: str | None = None) -> None:
        """A step down; ``key``: the candidate it concerns, when it concerns one."""
        self.fallbacks.append(f"{stage}:{to}")
        self.events.emit(stage, "fallback", Fallback(to=to, reason=reason, key=key) if key else Fallback(to=to, reason=reason))

    def last_stage(self) -> str:
        """The stage the change was in when it stopped: the last one started and not done (download and
        verify overlap, so the last event alone may name the wrong one)."""
        log = self.events.log
        open_stages: list[str] = []
        for e in log:
            if e.status == "start":
                open_stages.append(e.stage)
            elif e.status in ("done", "fail") and e.stage in open_stages:
                open_stages.remove(e.stage)
        return open_stages[-1] if open_stages else (log[-1].stage if log else "search")


def counted(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")

