"""One avatar change: search → download → verify → reserve → detect → crop → upload → record.

Data flows one way through the stages and every stage reports progress events. The VRAM discipline is
the point of the design: the vision model is reserved ONCE around all K verifications, then the face
detector ONCE around all detections (vramctl frees the vision model in between and *measures* that it
is gone) — K candidates cost one swap, not K.

Each external part can fail without making the change inconsistent:
vision model down → heuristic verifier; detector service down → in-process detection → saliency crop;
Discord refusing → the avatar is kept and the row says why. Every change ends in exactly one finished
history row ("applied", "dry-run" or "failed"), whatever happened in between.

``AvatarPipeline`` is the long-lived part (settings, HTTP client, VRAM coordinator, history); each change
or restore is one ``Change``, whose stages are methods that return what the next stage needs and whose
``conclude`` is the one way any of them ends (see record.py for the record it writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from facedetect.errors import FaceDetectError
from facedetect.imageio import load_image
from facedetect.types import Detection
from mikubot.banner import BannerResult, NoBanner, banner_png, crop_banner
from mikubot.config import Settings
from mikubot.crop import (
    CropError,
    CropResult,
    FaceTooSmall,
    avatar_png,
    crop_avatar,
    colour_matches,
    face_in_circle,
    hair_of,
    rank_faces,
)
from mikubot.detection import FaceFinder, FaceResult, InProcessDetector
from mikubot.discord_rest import DiscordError
from mikubot.events import ChangeEvents, EventBus
from mikubot.guild_profile import set_guild_look
from mikubot.history import History
from mikubot.outputs import (candidate_thumbnail, ChangeFiles, annotated_source, prune_candidate_pictures,
                             write_change_files, write_report)
from mikubot.record import ChangeRecord, Credit
from mikubot.redact import scrub
from mikubot.sources import Candidate, Source, SourceError, source_from_spec
from mikubot.storage import StorageError, StorageFull
from mikubot.upload import set_avatar
from mikubot.verify import HeuristicVerifier, Verification, Verifier, VisionUnavailable, VisionVerifier
from mikubot.vram import CPU_BACKENDS, DETECTOR, VISION, vram_settings
from vramctl.coordinator import Coordinator
from vramctl.errors import VramError

log = logging.getLogger(__name__)

DOWNLOADS_AT_ONCE = 3  # polite to a booru's CDN, and enough to overlap the round trips


class ChangeFailed(Exception):
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
    framing: dict[str, Any] | None = None  # the chosen one: its crop (path taken and why, the faces it chose from)
    picture: str | None = None  # its thumbnail's file name in the avatars folder (the panel's Candidates view)
    # The vision request's body (a scaled JPEG data URI), encoded in a worker thread as soon as the picture
    # is decoded, so the K answers follow each other with no encoding in between.
    body: asyncio.Task[dict[str, Any]] | None = None

    def summary(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "source": c.source, "key": c.key, "page_url": c.page_url, "filename": c.filename,
            "verification": self.verification.to_json() if self.verification else None,
            "faces": [d.to_json() for d in self.faces.detections] if self.faces else None,
            "detected_via": self.faces.via if self.faces else None,
            "skipped": self.skipped,
            "lost": self.lost,
            "framing": self.framing,
            "picture": self.picture,
            "size": [self.image.width, self.image.height] if self.image is not None else None,
        }


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

    def to_json(self) -> dict[str, Any]:
        return {"consumer": self.consumer, "waited_s": round(self.waited_s, 4), "unloaded": self.unloaded}


def _last_stage(ev: ChangeEvents) -> str:
    """The stage a change was in when it stopped (for a deadline's failure): the last one started and
    not done (download and verify overlap, so the last event alone may name the wrong one)."""
    open_stages: list[str] = []
    for e in ev.log:
        if e.status == "start":
            open_stages.append(e.stage)
        elif e.status in ("done", "fail") and e.stage in open_stages:
            open_stages.remove(e.stage)
    return open_stages[-1] if open_stages else (ev.log[-1].stage if ev.log else "search")


@dataclass
class StageOutcome:
    """What a stage says when it is done (see ``Change.stage``)."""

    summary: str | None = None


def _counted(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _box(box: Any) -> list[float] | None:
    return [round(float(v), 1) for v in box] if box is not None else None


def _faces_summary(picks: list[Pick]) -> str:
    """The detect stage's last word: the faces in every candidate, not only the last one's."""
    counts = [len(p.faces.detections) if p.faces else 0 for p in picks]
    via = sorted({p.faces.via for p in picks if p.faces})
    with_faces = sum(1 for n in counts if n)
    return (f"faces in {with_faces} of {_counted(len(picks), 'candidate')} ({', '.join(map(str, counts))})"
            + (f" via {', '.join(via)}" if via else ""))


def _chosen_summary(chosen: Chosen, among: int) -> str:
    """The crop stage's last word: which candidate became the avatar, what it showed and how it is cut."""
    pick, crop = chosen.pick, chosen.crop
    name = pick.candidate.filename or pick.candidate.key
    faces = _counted(len(pick.faces.detections), "face") if pick.faces else "no detection"
    best = f" (best {crop.face.confidence:.2f})" if crop.face is not None else ""
    v = pick.verification
    verdict = f", {v.method} {v.confidence:.2f}" if v else ""
    return f"chose {name} of {among}: {faces}{best}{verdict}; {crop.method} crop {_box(crop.box)}"


class NoRoomForDetector(Exception):
    """The face detector's VRAM cannot be had, and the in-process backend needs VRAM too."""


@dataclass
class Picture:
    """What the crop choice needs to know of one picture."""

    image: Image.Image
    detections: list[Detection]
    confidence: float  # how sure the verifier is that it shows the character (1.0: the owner chose it)


@dataclass
class Framing:
    """Which picture becomes the avatar and how it is cut; the faces that were too small, and why."""

    index: int
    crop: CropResult
    refused: list[tuple[int, str]] = field(default_factory=list)
    without_face: bool = False  # no usable face in any picture: cropped by saliency (then top-centre)
    lost: dict[int, str] = field(default_factory=dict)  # every other picture: why it was not chosen


def frame_best(pictures: list[Picture], *, output_size: int, max_upscale: float,
               hair_colours: list[str] | None = None, hair_tolerance: float = 100.0) -> Framing:
    """The crop stage's choice — for a change's survivors and the panel's upload preview alike: the best
    face (the character's hair colour first, then the face score weighted by the verifier's confidence)
    that can be framed at the output floor; if none can, the most confidently verified picture cropped
    without a face. Framing first: a picture with a usable face is never passed over for a fallback crop.
    ``CropError`` if even that fails."""

    def rank(i: int) -> tuple[bool, float, float]:
        p = pictures[i]
        faces = rank_faces(p.detections, p.image.size, hair_colours, hair_tolerance)
        match = bool(faces) and _matches(faces[0][1], hair_colours, hair_tolerance)
        return match, (faces[0][0] if faces else 0.0) * (0.5 + 0.5 * p.confidence), p.confidence

    refused: list[tuple[int, str]] = []
    order = sorted(range(len(pictures)), key=rank, reverse=True)
    for i in order:
        p = pictures[i]
        if not rank_faces(p.detections, p.image.size):
            continue
        try:
            crop = crop_avatar(p.image, p.detections, output_size=output_size, max_upscale=max_upscale,
                               allow_fallback=False, hair_colours=hair_colours, hair_tolerance=hair_tolerance)
        except FaceTooSmall as exc:
            refused.append((i, str(exc)))
            continue
        return Framing(i, crop, refused, lost=_lost(pictures, i, refused, "ranked below the chosen picture "
                                                    "(hair colour, then face score x verification confidence)"))
    best = max(range(len(pictures)), key=lambda i: pictures[i].confidence)
    crop = crop_avatar(pictures[best].image, [], output_size=output_size, max_upscale=max_upscale, allow_fallback=True)
    return Framing(best, crop, refused, without_face=True,
                   lost=_lost(pictures, best, refused, "verified less confidently than the chosen picture"))


def _matches(face: Detection, hair_colours: list[str] | None, tolerance: float) -> bool:
    return colour_matches(hair_of(face), hair_colours, tolerance)


def _lost(pictures: list[Picture], chosen: int, refused: list[tuple[int, str]], otherwise: str) -> dict[int, str]:
    why = dict(refused)
    for i, p in enumerate(pictures):
        if i != chosen and i not in why:
            why[i] = otherwise if rank_faces(p.detections, p.image.size) else (
                f"no usable face among {len(p.detections)} detection(s)")
    return why


class AvatarPipeline:
    """Runs avatar changes. Build one per process (it owns the in-process detector and the coordinator)
    and call ``await change()`` as often as needed; ``aclose()`` when done."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: EventBus | None = None,
        history: History | None = None,
        coordinator: Coordinator | None = None,
        http: httpx.AsyncClient | None = None,
        source_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus or EventBus()
        self.history = history or History(settings.history_path)
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=settings.http_timeout_s)
        self._own_coordinator = coordinator is None
        self.coordinator = coordinator or Coordinator(vram_settings(settings), http=self.http)
        self.local_detector = InProcessDetector(settings.detector_backend, settings.detector_model_path)
        self._hair_detector = InProcessDetector("animeface")
        self.source_options = source_options or {}
        self._lock = asyncio.Lock()  # one change at a time: Discord allows few avatar changes anyway

    async def aclose(self) -> None:
        if self._own_coordinator:
            await self.coordinator.aclose()
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> "AvatarPipeline":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- construction helpers ------------------------------------------------------------------------------
    def make_source(self, spec: str, settings: Settings | None = None) -> Source:
        # Every source setting, straight from Settings (they share one model), plus the shared client.
        # ``settings``: a server's look (``Settings.for_guild``); by default the global ones.
        s = settings or self.settings
        return source_from_spec(spec, **{**s.source_settings(), "http": self.http, **self.source_options})

    def make_verifier(self, settings: Settings | None = None) -> Verifier:
        s = settings or self.settings
        if s.llama_swap_url:
            key = s.llama_swap_api_key.get_secret_value() if s.llama_swap_api_key else None
            return VisionVerifier(s.llama_swap_url, s.vision_model, s.character_name, http=self.http,
                                  timeout_s=s.vision_timeout_s, api_key=key)
        return self.heuristic(s)

    def heuristic(self, settings: Settings | None = None) -> HeuristicVerifier:
        s = settings or self.settings
        return HeuristicVerifier(s.character_name, s.character_tag, s.hair_colours, self._hair_detector.get(),
                                 tolerance=s.hair_tolerance)

    async def reserve_detector(self, room: AsyncExitStack, note: str,
                               on_fallback: Callable[[str, str], None]) -> tuple[str | None, Reservation | None]:
        """Enter the face detector's reservation on ``room``; returns the detector service's URL to use (None:
        detect in-process) and the reservation. Without the reservation only a backend that needs no VRAM
        (``vram.CPU_BACKENDS``) may run, in-process; ``NoRoomForDetector`` otherwise. Used by a change's
        reserve stage and by the panel's upload preview."""
        try:
            res = await room.enter_async_context(self.coordinator.reserve(DETECTOR, note=note))
        except VramError as exc:
            backend = self.local_detector.backend
            if backend not in CPU_BACKENDS:
                raise NoRoomForDetector(f"cannot make room for the face detector: {exc}") from None
            on_fallback("in-process", f"cannot reserve the detector service ({exc}); "
                        f"detecting in-process with {backend} (no VRAM)")
            return None, None
        return self.settings.detector_service_url, Reservation(DETECTOR, res.waited_s, res.unloaded, res.timeline, res.errors)

    def face_finder(self, service: str | None, on_fallback: Callable[[str, str], None]) -> FaceFinder:
        """The detector chain for one change or preview; through llama-swap it carries llama-swap's key."""
        return FaceFinder(service, self.local_detector, on_fallback, api_key=self.settings.detector_api_key)

    def _dry_run(self, asked: bool | None) -> tuple[bool, str | None]:
        """Whether this change stays off Discord, and why (``Settings.dry_run_for``: settings are final)."""
        return self.settings.dry_run_for(asked)

    async def _within_deadline(self, change: "Change", work: Awaitable[None]) -> None:
        """``work`` under the change's one deadline (MIKU_CHANGE_TIMEOUT_S): past it every stage is
        cancelled — so its reservations are released — and the change fails at the stage it was in."""
        deadline = asyncio.timeout(self.settings.change_timeout_s)
        try:
            async with deadline:
                await work
        except TimeoutError:
            if not deadline.expired():
                raise
            raise ChangeFailed(change.failed_stage or _last_stage(change.events),
                               f"the change did not finish within {self.settings.change_timeout_s:g} s "
                               "(MIKU_CHANGE_TIMEOUT_S); it was stopped") from None

    # --- the two kinds of change ------------------------------------------------------------------------------
    async def change(
        self,
        *,
        source: str | None = None,
        candidates: int | None = None,
        dry_run: bool | None = None,
        out: Path | None = None,
        guild_id: int | None = None,
    ) -> dict[str, Any]:
        """Run one change; returns its record (see record.py). Never raises for a failed change — the
        record's ``status`` is "failed" and ``error`` says why — only for bugs and cancellation.
        ``guild_id``: change that server's own look (its configured source and character; the bot's
        member there), not the global profile."""
        async with self._lock:
            spec = source or self.settings.for_guild(guild_id).source
            change = Change.begin(self, spec, dry_run, guild_id=guild_id)
            work = change.find_and_apply(candidates or self.settings.candidates, out)
            return await change.conclude(self._within_deadline(change, work))

    async def restore(self, change_id: int, *, dry_run: bool | None = None) -> dict[str, Any]:
        """Apply the avatar of an earlier change again; a new history row records it."""
        async with self._lock:
            path = self.history.restorable(change_id)
            earlier = self.history.get(change_id) or {}
            change = Change.begin(self, f"restore:{change_id}", dry_run, restored_from=change_id, credit=earlier,
                                  guild_id=earlier.get("guild_id"))  # a server's look goes back to that server
            return await change.conclude(change.reapply(path, change_id, *self._restorable_banner(earlier)))

    def _restorable_banner(self, earlier: dict[str, Any]) -> tuple[Path | None, str | None]:
        """The banner a restore applies with the avatar (only when the restored change had one and
        MIKU_BANNER is on), and the reason recorded when it applies none."""
        if not earlier.get("banner_path"):
            return None, None
        if not self.settings.banner:
            return None, f"change {earlier['id']} had a banner; MIKU_BANNER is off, so the avatar alone is restored"
        path = Path(earlier["banner_path"])
        if not path.is_file():
            return None, f"the banner of change {earlier['id']} is gone from {path}; the avatar alone is restored"
        return path, earlier.get("banner_reason")


class Change:
    """One change (or restore) from its ``running`` row to its finished one: the stages, what they found,
    and the one way it ends (``conclude``)."""

    def __init__(self, pipeline: AvatarPipeline, change_id: int, spec: str, dry_run: bool, dry_reason: str | None,
                 credit: dict[str, Any] | None = None, guild_id: int | None = None) -> None:
        self.pipeline = pipeline
        self.guild_id = guild_id  # None: the global profile
        self.settings = pipeline.settings.for_guild(guild_id)
        self.id = change_id
        self.spec = spec
        self.dry_run, self.dry_reason = dry_run, dry_reason
        self.events = ChangeEvents(pipeline.bus, change_id)
        self.earlier = credit or {}  # a restore repeats the restored change's credit and crop
        self.timings: dict[str, float] = {}
        self.fallbacks: list[str] = []
        self.picks: list[Pick] = []
        self.chosen: Chosen | None = None
        self.reservations: list[Reservation] = []
        self.verifier: str | None = None
        self.detector_backend: str | None = None
        self.files: dict[str, str | None] = {}
        self.kept_avatar: Path | None = None
        self.banner: BannerResult | None = None  # MIKU_BANNER: the banner made from the chosen picture
        self.banner_reason: str | None = None  # how it is framed, or why there is none
        self.kept_banner: Path | None = None
        self.upload: dict[str, Any] | None = None
        self.uploaded = False
        self.error: str | None = None
        self.failed_stage: str | None = None
        self.insufficient_storage: str | None = None  # what could not be written for want of space

    @classmethod
    def begin(cls, pipeline: AvatarPipeline, spec: str, dry_run: bool | None, *, restored_from: int | None = None,
              credit: dict[str, Any] | None = None, guild_id: int | None = None) -> Change:
        """Write the ``running`` row; from here on, ``conclude`` must finish it."""
        dry, why = pipeline._dry_run(dry_run)
        change_id = pipeline.history.start(spec, dry_run=dry, restored_from=restored_from, guild_id=guild_id)
        return cls(pipeline, change_id, spec, dry, why, credit, guild_id)

    @property
    def default_report(self) -> Path:
        return self.settings.avatars_dir / f"change-{self.id:05d}.json"

    @contextlib.contextmanager
    def stage(self, name: str, **detail: Any) -> Iterator[StageOutcome]:
        """A stage's span: emits start and done, adds its duration (ms) to the timings. The span is the
        ``with`` block wherever it runs — a stage running in its own task overlaps the stages around it.
        The block may set the outcome's ``summary``: the done event carries it, and every view shows it as
        the stage's last word (a stage over K candidates ends on all K, not on the last one processed)."""
        t0 = time.monotonic()
        self.events.emit(name, "start", **detail)
        outcome = StageOutcome()
        try:
            yield outcome
        finally:
            ms = (time.monotonic() - t0) * 1000
            self.timings[name] = self.timings.get(name, 0.0) + ms
        self.events.emit(name, "done", ms=round(ms, 1), **({"summary": outcome.summary} if outcome.summary else {}))

    def fall_back(self, stage: str, to: str, reason: str, **detail: Any) -> None:
        self.fallbacks.append(f"{stage}:{to}")
        self.events.emit(stage, "fallback", to=to, **detail, reason=reason)

    # --- the one way a change ends ------------------------------------------------------------------------------
    async def conclude(self, work: Awaitable[None]) -> dict[str, Any]:
        """Await the change's work and finish its row, whatever happened: a ``ChangeFailed`` becomes a
        failed record; a bug or a cancellation finishes the row as failed and then goes on."""
        try:
            await work
        except ChangeFailed as exc:
            self.error, self.failed_stage = exc.message, exc.stage
            self.events.emit(exc.stage, "fail", error=exc.message)
        except StorageError as exc:  # a full or failing disk: the change fails, saying where to make room
            self.error, self.failed_stage = str(exc), self.failed_stage or _last_stage(self.events)
            if isinstance(exc, StorageFull):
                self.insufficient_storage = str(exc.where)
            self.events.emit(self.failed_stage, "fail", error=self.error)
        except BaseException as exc:
            self.error = f"internal error: {type(exc).__name__}: {exc}"
            self.failed_stage = self.failed_stage or "internal"
            self.record()
            raise
        return self.record()

    def record(self) -> dict[str, Any]:
        """The record stage: the report file, then the finished history row, from one ``ChangeRecord``."""
        self.events.emit("record", "start")
        t0 = time.monotonic()
        status = "failed" if self.error else ("dry-run" if self.dry_run else "applied")
        self.files["report"] = self.files.get("report") or str(self.default_report)
        self.timings["record"] = (time.monotonic() - t0) * 1000
        record = self.record_model(status)
        try:
            write_report(Path(self.files["report"]), scrub(record.to_json()))  # type: ignore[arg-type]
        except OSError as exc:
            log.warning("cannot write the report %s: %s", self.files["report"], exc)
            record.report_path = None
        events = [e.to_json() for e in self.events.log] + [
            {"change_id": self.id, "stage": "record", "status": "done",
             "t": round(time.monotonic() - self.events.t0, 3), "detail": {"status": status}}]
        self.pipeline.history.finish(self.id, status, **record.history_columns(events))
        self.events.emit("record", "done", status=status, error=self.error, ms=round((time.monotonic() - t0) * 1000, 1))
        return scrub(record.to_json())  # no URL credentials in any record (see mikubot.redact)

    def record_model(self, status: str) -> ChangeRecord:
        chosen = self.chosen
        crop = chosen.crop if chosen else None
        looks = self._looks(chosen) if chosen else {k: self.earlier.get(k) for k in _LOOKS}
        return ChangeRecord(
            id=self.id, status=status, dry_run=self.dry_run, guild_id=self.guild_id, source=self._credit(),
            face_inside_circle=face_in_circle(crop.face.bbox, crop.box)[0] if crop and crop.face else None,
            avatar_size=[crop.image.width, crop.image.height] if crop else None,
            fallbacks=self.fallbacks, detector_backend=self.detector_backend or self.earlier.get("detector_backend"),
            verifier=self.verifier, **looks,
            timings_ms={k: round(v, 1) for k, v in self.timings.items()},
            reservations=[r.to_json() for r in self.reservations], vram_timeline=self._timeline(),
            candidates=[p.summary() for p in self.picks],
            avatar_path=str(self.kept_avatar) if self.kept_avatar else None, files=self.files,
            report_path=self.files["report"], uploaded=self.uploaded, upload=self.upload,
            failed_stage=self.failed_stage, error=self.error, insufficient_storage=self.insufficient_storage,
            **self._banner_fields(),
        )

    def _banner_fields(self) -> dict[str, Any]:
        """The record's banner fields: the one made here, or (a restore) the restored change's."""
        b = self.banner
        restored = self.kept_banner is not None and b is None
        return {
            "banner_path": str(self.kept_banner) if self.kept_banner else None,
            "banner_box": _box(b.box) if b else (self.earlier.get("banner_box") if restored else None),
            "banner_size": [b.image.width, b.image.height] if b else (self.earlier.get("banner_size") if restored else None),
            "banner_reason": self.banner_reason,
        }

    def _credit(self) -> Credit:
        if self.chosen is None:
            e = self.earlier
            return Credit(spec=self.spec, name=e.get("source"), key=e.get("post_key"), page_url=e.get("page_url"),
                          image_url=e.get("image_url"), artist=e.get("artist"), tags=e.get("tags"),
                          rating=e.get("rating"))
        pick = self.chosen.pick
        c = pick.candidate
        return Credit(spec=self.spec, name=c.source, key=c.key, page_url=c.page_url, image_url=c.image_url,
                      artist=c.artist, tags=list(c.tags), rating=c.rating, filename=c.filename,
                      size=[pick.image.width, pick.image.height] if pick.image is not None else None)

    @staticmethod
    def _looks(chosen: Chosen) -> dict[str, Any]:
        """The record's fields that describe the chosen picture and its crop."""
        crop, verification = chosen.crop, chosen.pick.verification
        return {"face_box": _box(crop.face.bbox) if crop.face else None, "crop_box": _box(crop.box),
                "crop_method": crop.method, "crop_reason": crop.reason, "verification": verification.to_json() if verification else None,
                "description": verification.description if verification else None}

    def _timeline(self) -> list[dict[str, Any]]:
        """Both reservations' events on one clock (seconds since the first request)."""
        if not self.reservations:
            return []
        t_zero = min(r.timeline.started for r in self.reservations)
        events = [{**e, "t": round(e["t"] + r.timeline.started - t_zero, 4)}
                  for r in self.reservations for e in r.timeline.to_json()]
        return sorted(events, key=lambda e: e["t"])

    # --- a change: the stages in order ----------------------------------------------------------------------------
    async def find_and_apply(self, k: int, out: Path | None) -> None:
        src, found = await self.search(self.spec, k)
        survivors = await self.download_and_verify(src, found)
        if any(p.faces is None for p in survivors):  # the heuristic verifier's path has detected already
            await self.detect(survivors)
        with self.stage("crop") as outcome:
            self.chosen = chosen = self.crop(survivors)
            outcome.summary = _chosen_summary(chosen, len(survivors))
            banner = await self.make_banner(chosen) if self.settings.banner else None
        png = await asyncio.to_thread(avatar_png, chosen.crop)
        # The kept avatar exists before Discord sees it (a failed upload can be applied later); the annotated
        # source — drawing on a large picture and a JPEG, for people, not for Discord — is made during the upload.
        files = write_change_files(self.settings.avatars_dir, self.id, png, None, out, banner_png=banner)
        self.files, self.kept_avatar, self.kept_banner = files.to_json(), files.kept, files.kept_banner
        self.pipeline.history.mark_used(chosen.pick.candidate.source, chosen.pick.candidate.key, self.id)
        annotating = asyncio.create_task(asyncio.to_thread(self._annotated_files, chosen, png, out, banner))
        try:
            await self.apply(png, files.avatar, banner=banner)
        finally:
            try:
                self.files = (await annotating).to_json()
            except StorageError as exc:  # the annotated copy is for people; the avatar is written already
                log.warning("change #%s: the annotated source was not written: %s", self.id, exc)

    async def search(self, spec: str, k: int) -> tuple[Source, list[Candidate]]:
        with self.stage("search", spec=spec, limit=k):
            try:
                src = self.pipeline.make_source(spec, self.settings)
                exclude = self.pipeline.history.used_keys(src.name)
                found = await src.search(k, exclude)
            except SourceError as exc:
                raise ChangeFailed("search", exc.message) from None
            report = getattr(src, "last_search", None)  # what the source saw and turned away, when it says
            seen = report.describe() if report is not None else None
            if not found:
                raise ChangeFailed("search", f"{spec} offered no new candidates ({len(exclude)} already used"
                                   + (f"; {seen}" if seen else "") + "); widen the search (ratings, blacklist, "
                                   "another source) or use a fresh MIKU_DATA_DIR")
            self.events.emit("search", "progress", found=len(found), keys=[c.key for c in found], report=seen)
        return src, found

    async def download_and_verify(self, src: Source, found: list[Candidate]) -> list[Pick]:
        """Download ∥ verify: the vision model's room is made (unloading whatever is in its way and waiting
        until the probe shows it free) while the pictures download — neither needs the other, and the unload
        is the long pole. So the two stages run as two tasks; the verify stage starts inside the download
        stage (the download task is created first, so it starts first) and ends after it."""
        verifier = self.pipeline.make_verifier(self.settings)
        self.verifier = verifier.method
        prepare = verifier.request_body if isinstance(verifier, VisionVerifier) else None
        downloading = asyncio.create_task(self.download(src, found, prepare))
        verifying = asyncio.create_task(self.verify(verifier, downloading, len(found)))
        try:
            # A failed download ends the change at once, even while the vision model's room is still being made.
            await asyncio.wait((downloading, verifying), return_when=asyncio.FIRST_EXCEPTION)
            if downloading.done() and not downloading.cancelled() and downloading.exception() is not None:
                await downloading
            return await verifying
        finally:
            for task in (verifying, downloading):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task  # its outcome is the one raised above; this only collects it
            for pick in self.picks:  # a body nobody asked for (the vision model went away)
                if pick.body is not None:
                    pick.body.cancel()

    async def download(self, src: Source, found: list[Candidate],
                       prepare: Callable[[bytes, Image.Image], dict[str, Any]] | None) -> list[Pick]:
        """All candidates at once (a few at a time): K round trips to a booru CDN overlap instead of adding up."""
        gate = asyncio.Semaphore(DOWNLOADS_AT_ONCE)
        picks = [Pick(c) for c in found]
        first = len(self.picks)  # each pick's place in the record's candidates (its thumbnail's number)
        self.picks.extend(picks)

        async def one(index: int, pick: Pick) -> None:
            c = pick.candidate
            async with gate:
                try:
                    pick.candidate = await src.download(c)
                    pick.image, _ = await asyncio.to_thread(load_image, pick.candidate.data or b"")
                    pick.picture = await asyncio.to_thread(
                        candidate_thumbnail, pick.image, self.settings.avatars_dir, self.id, index)
                    self.events.emit("download", "progress", key=c.key, bytes=len(pick.candidate.data or b""),
                                     size=[pick.image.width, pick.image.height])
                except SourceError as exc:
                    pick.skipped = f"download: {exc.message}"
                except FaceDetectError as exc:
                    pick.skipped = f"image: {exc.message}"
            if pick.skipped:
                self.events.emit("download", "skip", key=c.key, reason=pick.skipped)
            elif prepare is not None:
                pick.body = asyncio.create_task(asyncio.to_thread(prepare, pick.candidate.data or b"", pick.image))

        with self.stage("download", count=len(found)) as outcome:
            await asyncio.gather(*(one(first + i, p) for i, p in enumerate(picks)))
            await asyncio.to_thread(prune_candidate_pictures, self.settings.avatars_dir, self.id,
                                    self.settings.candidate_pictures_kept)
            live = [p for p in picks if not p.skipped]
            outcome.summary = f"{len(live)} of {_counted(len(picks), 'candidate')} downloaded and decoded"
        if not live:
            raise ChangeFailed("download", "no candidate could be downloaded and decoded: "
                               + "; ".join(p.skipped or "" for p in picks))
        return live

    async def verify(self, verifier: Verifier, downloading: asyncio.Task[list[Pick]], count: int) -> list[Pick]:
        """The verify stage. With the vision model it starts at once and makes the model's room while the
        pictures download; the heuristic needs no room and starts when they have arrived."""
        vision = isinstance(verifier, VisionVerifier)
        if not vision:
            # One detection per image: the heuristic reads the hair colour from the detect stage's faces,
            # so without a vision model to make room for, detection comes first and is not repeated.
            await self.detect(await downloading)
        with self.stage("verify", count=count) as outcome:
            # The vision reservation: entered and released here only. It ends with the last answer (or as soon
            # as the model is found unusable), not after the stage's bookkeeping.
            async with AsyncExitStack() as room:
                if vision and (problem := await self._reserve_vision(room, count)) is not None:
                    verifier = self._fall_back_to_heuristic(f"cannot reserve the vision model: {problem}")
                live = await downloading
                for pick in live:
                    try:
                        pick.verification = await self._ask(verifier, pick)
                    except VisionUnavailable as exc:
                        verifier = self._fall_back_to_heuristic(str(exc))
                        await room.aclose()  # nothing will use the vision model now
                        pick.verification = await verifier.verify(pick.candidate)
                    self._judge(pick)
            survivors = [p for p in live if not p.skipped]
            outcome.summary = (f"{len(survivors)} of {_counted(len(live), 'candidate')} accepted as "
                               f"{self.settings.character_name} ({self.verifier}); the crop stage chooses among them")
            if not survivors:
                raise ChangeFailed("verify", f"none of {len(live)} candidates shows {self.settings.character_name}: "
                                   + "; ".join(p.skipped or "" for p in live))
        return survivors

    async def _reserve_vision(self, room: AsyncExitStack, n: int) -> str | None:
        """Enter the vision reservation on ``room``; why not, if it cannot be had."""
        try:
            res = await room.enter_async_context(self.pipeline.coordinator.reserve(VISION, note=f"verify {n}"))
        except VramError as exc:
            return str(exc)
        self.reservations.append(Reservation(VISION, res.waited_s, res.unloaded, res.timeline))
        self.events.emit("verify", "progress", reserved=VISION, waited_s=round(res.waited_s, 3), unloaded=res.unloaded)
        return None

    @staticmethod
    async def _ask(verifier: Verifier, pick: Pick) -> Verification:
        if isinstance(verifier, VisionVerifier) and pick.body is not None:
            return await verifier.verify(pick.candidate, body=await pick.body)
        if isinstance(verifier, HeuristicVerifier) and pick.faces is not None:
            return await verifier.verify(pick.candidate, faces=pick.faces.detections)
        return await verifier.verify(pick.candidate)

    def _judge(self, pick: Pick) -> None:
        v = pick.verification
        assert v is not None
        ok = v.is_character and v.confidence >= self.settings.min_confidence
        if not ok:
            pick.skipped = f"verify: not {self.settings.character_name} ({v.method}, {v.confidence:.2f}: {v.description})"
        self.events.emit("verify", "progress" if ok else "skip", key=pick.candidate.key, method=v.method,
                         is_character=v.is_character, confidence=round(v.confidence, 3), description=v.description)

    def _fall_back_to_heuristic(self, reason: str) -> Verifier:
        self.fall_back("verify", "heuristic", reason)
        self.verifier = "heuristic"
        return self.pipeline.heuristic(self.settings)

    async def detect(self, survivors: list[Pick]) -> None:
        """Reserve + detect: one detector reservation for all survivors; fills each pick's ``faces``."""
        async with AsyncExitStack() as room:
            with self.stage("reserve", consumer=DETECTOR):
                service = await self._reserve_detector(room, len(survivors))
            with self.stage("detect", via="service" if service else "in-process") as outcome:
                async with self.pipeline.face_finder(service, lambda to, why: self.fall_back("detect", to, why)) as finder:
                    for pick in survivors:
                        assert pick.image is not None and pick.candidate.data is not None
                        pick.faces = await finder.find(pick.image, pick.candidate.data,
                                                       pick.candidate.filename or f"{pick.candidate.key}.img")
                        self.detector_backend = pick.faces.backend or self.detector_backend
                        self.events.emit("detect", "progress", key=pick.candidate.key, faces=len(pick.faces.detections),
                                         via=pick.faces.via, backend=pick.faces.backend, error=pick.faces.error)
                outcome.summary = _faces_summary(survivors)

    async def _reserve_detector(self, room: AsyncExitStack, n: int) -> str | None:
        """Enter the detector reservation on ``room``; the detector service's URL to use (None: in-process)."""
        try:
            service, res = await self.pipeline.reserve_detector(room, f"detect {n}",
                                                                lambda to, why: self.fall_back("detect", to, why))
        except NoRoomForDetector as exc:
            raise ChangeFailed("reserve", str(exc)) from None
        if res is not None:
            self.reservations.append(res)
            self.events.emit("reserve", "progress", reserved=DETECTOR, waited_s=round(res.waited_s, 3),
                             unloaded=res.unloaded, errors=res.errors)
        return service

    def crop(self, survivors: list[Pick]) -> Chosen:
        """The crop stage: ``frame_best`` over the survivors, reported as events."""
        pictures = [Picture(p.image, p.faces.detections if p.faces else [],  # type: ignore[arg-type]
                            p.verification.confidence if p.verification else 0.0) for p in survivors]
        try:
            framing = frame_best(pictures, output_size=self.settings.output_size, max_upscale=self.settings.max_upscale,
                                 hair_colours=self.settings.hair_colours, hair_tolerance=self.settings.hair_tolerance)
        except CropError as exc:
            best = max(survivors, key=lambda p: p.verification.confidence if p.verification else 0.0)
            raise ChangeFailed("crop", f"cannot crop {best.candidate.key}: {exc}") from None
        for i, why in framing.refused:
            self.events.emit("crop", "skip", key=survivors[i].candidate.key, reason=why)
        for i, why in framing.lost.items():
            survivors[i].lost = why
        pick = survivors[framing.index]
        if framing.without_face:
            refused = "; ".join(f"{survivors[i].candidate.key}: {why}" for i, why in framing.refused)
            self.fall_back("crop", framing.crop.method, "no usable face in any candidate"
                           + (f" ({refused})" if refused else ""), key=pick.candidate.key)
        return self._cropped(pick, framing.crop)

    def _cropped(self, pick: Pick, crop: CropResult) -> Chosen:
        pick.framing = crop.to_json()
        self.events.emit("crop", "progress", key=pick.candidate.key, method=crop.method, box=_box(crop.box),
                         face=_box(crop.face.bbox) if crop.face else None, size=[crop.image.width, crop.image.height])
        return Chosen(pick, crop)

    async def make_banner(self, chosen: Chosen) -> bytes | None:
        """MIKU_BANNER: the banner from the chosen picture and the same detections, framed on the face the
        avatar chose; None (the reason recorded) when the picture is too small for one."""
        pick = chosen.pick
        assert pick.image is not None
        detections = pick.faces.detections if pick.faces else []
        try:
            self.banner = await asyncio.to_thread(crop_banner, pick.image, chosen.crop.face, detections,
                                                  max_upscale=self.settings.max_upscale)
        except NoBanner as exc:
            self.banner_reason = f"no banner: {exc}"
            self.events.emit("crop", "progress", key=pick.candidate.key, banner=None, reason=self.banner_reason)
            return None
        self.banner_reason = self.banner.reason
        self.events.emit("crop", "progress", key=pick.candidate.key, banner=_box(self.banner.box),
                         banner_size=[self.banner.image.width, self.banner.image.height], reason=self.banner.reason)
        return await asyncio.to_thread(banner_png, self.banner)

    def _annotated_files(self, chosen: Chosen, png: bytes, out: Path | None, banner: bytes | None = None) -> ChangeFiles:
        """All of the change's files, the annotated source included (worker thread)."""
        pick, crop = chosen.pick, chosen.crop
        annotated = annotated_source(pick.image, pick.faces.detections if pick.faces else [], crop.box) \
            if pick.image is not None else None
        return write_change_files(self.settings.avatars_dir, self.id, png, annotated, out, banner_png=banner)

    # --- a restore: the kept avatar of an earlier change, uploaded again ------------------------------------------
    async def reapply(self, path: Path, restored_from: int, banner_path: Path | None = None,
                      banner_reason: str | None = None) -> None:
        self.kept_avatar, self.kept_banner, self.banner_reason = path, banner_path, banner_reason
        self.files = {"avatar": str(path), "report": str(self.default_report), "annotated": None, "kept": str(path)}
        png = await asyncio.to_thread(path.read_bytes)
        banner = None
        if banner_path is not None:
            self.files["banner"] = str(banner_path)
            banner = await asyncio.to_thread(banner_path.read_bytes)
        await self.apply(png, path, banner=banner, restored_from=restored_from)

    # --- upload: shared by a change and a restore -------------------------------------------------------------------
    async def apply(self, png: bytes, written: Path, *, banner: bytes | None = None, **detail: Any) -> None:
        """The upload stage: the avatar (and the banner, in the same request) to Discord — to one server's
        own look when the change is for a server — or (dry run) only where they were written."""
        scope = {"guild_id": self.guild_id} if self.guild_id is not None else {}
        with self.stage("upload", dry_run=self.dry_run, **({"banner": True} if banner is not None else {}), **scope,
                        **detail):
            if self.dry_run:
                self.upload = {"skipped": self.dry_reason, "written": str(written), **scope}
                banner_file = {"banner": self.files["banner"]} if banner is not None and self.files.get("banner") else {}
                self.upload.update(banner_file)
                self.events.emit("upload", "skip", reason=self.dry_reason, avatar=str(written), **banner_file)
                return
            try:
                if self.guild_id is not None:
                    result = await set_guild_look(self.settings, self.guild_id, png, credit=self._bio_credit(),
                                                  banner=banner)
                else:
                    result = await set_avatar(self.settings, png, banner)
            except DiscordError as exc:
                self.upload = {"error": exc.message, "status_code": exc.status_code, "retryable": exc.retryable,
                               "kept": str(self.kept_avatar)}
                raise ChangeFailed("upload", exc.message) from None
            self.upload = result.to_json()
            self.uploaded = True

    def _bio_credit(self) -> dict[str, Any] | None:
        """A server's bio: the credit to make its line from, when its look asks for one (None leaves the bio
        as it is)."""
        look = self.pipeline.settings.look_for(self.guild_id)
        return self._credit().model_dump() if look is not None and look.bio_credit else None


_LOOKS = ("face_box", "crop_box", "crop_method", "crop_reason", "verification", "description")
