"""One avatar change: search → download → verify → reserve → detect → crop → upload → record.

Data flows one way through the stages and every stage reports progress events. The VRAM discipline is
the point of the design: the vision model is reserved ONCE around all K verifications, then the face
detector ONCE around all detections (vramctl frees the vision model in between and *measures* that it
is gone) — K candidates cost one swap, not K.

Each external part can fail without making the change inconsistent:
vision model down → heuristic verifier; detector service down → in-process detection → saliency crop;
Discord refusing → the avatar is kept and the row says why. Every change ends in exactly one finished
history row ("applied", "dry-run" or "failed"), whatever happened in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from facedetect.errors import FaceDetectError
from facedetect.imageio import load_image
from mikubot.config import Settings
from mikubot.crop import CropError, CropResult, FaceTooSmall, avatar_png, crop_avatar, face_in_circle, rank_faces
from mikubot.detection import FaceFinder, FaceResult, InProcessDetector
from mikubot.discord_rest import DiscordError
from mikubot.events import ChangeEvents, EventBus
from mikubot.history import History
from mikubot.outputs import ChangeFiles, annotated_source, write_change_files, write_report
from mikubot.sources import Candidate, Source, SourceError, source_from_spec
from mikubot.upload import set_avatar
from mikubot.verify import HeuristicVerifier, Verification, Verifier, VisionUnavailable, VisionVerifier
from mikubot.vram import DETECTOR, VISION, vram_settings
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

    def summary(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "source": c.source, "key": c.key, "page_url": c.page_url, "filename": c.filename,
            "verification": self.verification.to_json() if self.verification else None,
            "faces": [d.to_json() for d in self.faces.detections] if self.faces else None,
            "detected_via": self.faces.via if self.faces else None,
            "skipped": self.skipped,
        }


@dataclass
class ChangeState:
    """What the record stage writes; filled stage by stage."""

    change_id: int
    spec: str
    dry_run: bool
    dry_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    picks: list[Pick] = field(default_factory=list)
    chosen: Pick | None = None
    crop: CropResult | None = None
    reservations: list[dict[str, Any]] = field(default_factory=list)
    detector_backend: str | None = None
    verifier: str | None = None
    files: dict[str, str | None] = field(default_factory=dict)
    kept_avatar: Path | None = None
    upload: dict[str, Any] | None = None
    uploaded: bool = False
    error: str | None = None
    failed_stage: str | None = None


def _box(box: Any) -> list[float] | None:
    return [round(float(v), 1) for v in box] if box is not None else None


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
    def make_source(self, spec: str) -> Source:
        s = self.settings
        options: dict[str, Any] = {
            "character_tag": s.character_tag, "danbooru_url": s.danbooru_url, "danbooru_login": s.danbooru_login,
            "danbooru_api_key": s.danbooru_api_key, "ratings": s.ratings, "blacklist": s.blacklist,
            "min_side": s.min_side, "max_download_mib": s.max_download_mib, "http_timeout_s": s.http_timeout_s,
            "user_agent": s.user_agent, "http": self.http,
        }
        options.update(self.source_options)
        return source_from_spec(spec, **options)

    def make_verifier(self) -> Verifier:
        s = self.settings
        if s.llama_swap_url:
            return VisionVerifier(s.llama_swap_url, s.vision_model, s.character_name, http=self.http,
                                  timeout_s=s.vision_timeout_s)
        return self.heuristic()

    def heuristic(self) -> HeuristicVerifier:
        s = self.settings
        return HeuristicVerifier(s.character_name, s.character_tag, s.hair_colours, self._hair_detector.get(),
                                 tolerance=s.hair_tolerance)

    # --- the change ---------------------------------------------------------------------------------------------
    async def change(
        self,
        *,
        source: str | None = None,
        candidates: int | None = None,
        dry_run: bool | None = None,
        out: Path | None = None,
    ) -> dict[str, Any]:
        """Run one change; returns its record (the history row's content). Never raises for a failed
        change — the record's ``status`` is "failed" and ``error`` says why — only for bugs."""
        async with self._lock:
            s = self.settings
            spec = source or s.source
            k = candidates or s.candidates
            dry, why = self._dry_run(dry_run)
            change_id = self.history.start(spec, dry_run=dry)
            state = ChangeState(change_id, spec, dry, dry_reason=why)
            ev = ChangeEvents(self.bus, change_id)
            try:
                await self._run(state, ev, spec, k, out)
            except ChangeFailed as exc:
                state.error, state.failed_stage = exc.message, exc.stage
                ev.emit(exc.stage, "fail", error=exc.message)
            except BaseException as exc:
                # A bug or a cancellation: the row must still be finished before the exception goes on.
                state.error = f"internal error: {type(exc).__name__}: {exc}"
                state.failed_stage = state.failed_stage or "internal"
                self._record(state, ev)
                raise
            return self._record(state, ev)

    async def _run(self, state: ChangeState, ev: ChangeEvents, spec: str, k: int, out: Path | None) -> None:
        # search
        with self._stage(state, ev, "search", spec=spec, limit=k):
            try:
                src = self.make_source(spec)
                exclude = self.history.used_keys(src.name)
                found = await src.search(k, exclude)
            except SourceError as exc:
                raise ChangeFailed("search", exc.message) from None
            report = getattr(src, "last_search", None)  # what the source saw and turned away, when it says
            seen = report.describe() if report is not None else None
            if not found:
                raise ChangeFailed("search", f"{spec} offered no new candidates ({len(exclude)} already used"
                                   + (f"; {seen}" if seen else "") + "); widen the search (ratings, blacklist, "
                                   "another source) or use a fresh MIKU_DATA_DIR")
            ev.emit("search", "progress", found=len(found), keys=[c.key for c in found], report=seen)
        # download ∥ verify: the vision model's room is made (unloading whatever is in its way and waiting until
        # the probe shows it free) while the pictures download — neither needs the other, and the unload is
        # the long pole. The verify stage therefore starts with the download stage and ends after it.
        verifier = self.make_verifier()
        state.verifier = verifier.method
        async with AsyncExitStack() as vision:
            verify_stage = _StageTimer(state, ev, "verify", {"count": len(found)})
            room: asyncio.Task[str | None] | None = None
            try:
                with self._stage(state, ev, "download", count=len(found)):
                    if isinstance(verifier, VisionVerifier):
                        verify_stage.__enter__()
                        room = asyncio.create_task(self._reserve_vision(state, ev, vision, len(found)))
                    live = await self._download(state, ev, src, found)
                if not live:
                    raise ChangeFailed("download", "no candidate could be downloaded and decoded: "
                                       + "; ".join(p.skipped or "" for p in state.picks))
                if room is None:
                    verify_stage.__enter__()
                bodies = self._prepare(verifier, live)  # encoded while the room is still being made
                if room is not None and (problem := await room) is not None:
                    verifier = self._fall_back_to_heuristic(state, ev, f"cannot reserve the vision model: {problem}")
                await self._verify(state, ev, live, verifier, vision, bodies)
                survivors = [p for p in live if not p.skipped]
                if not survivors:
                    raise ChangeFailed("verify", f"none of {len(live)} candidates shows {self.settings.character_name}: "
                                       + "; ".join(p.skipped or "" for p in live))
            except BaseException as exc:
                verify_stage.__exit__(type(exc), exc, exc.__traceback__)
                raise
            finally:
                if room is not None and not room.done():
                    room.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await room
            await vision.aclose()  # the vision reservation ends with the last answer, not after the stage's bookkeeping
            verify_stage.__exit__(None, None, None)
        # reserve + detect (one detector reservation for all survivors)
        await self._detect(state, ev, survivors)
        # crop
        with self._stage(state, ev, "crop"):
            self._crop(state, ev, survivors)
        assert state.chosen is not None and state.crop is not None
        png = await asyncio.to_thread(avatar_png, state.crop)
        chosen = state.chosen
        # The kept avatar exists before Discord sees it (a failed upload can be applied later); the annotated
        # source — drawing on a large picture and a JPEG, for people, not for Discord — is made during the upload.
        files = write_change_files(self.settings.avatars_dir, state.change_id, png, None, out)
        state.files, state.kept_avatar = files.to_json(), files.kept
        self.history.mark_used(chosen.candidate.source, chosen.candidate.key, state.change_id)
        annotating = asyncio.create_task(asyncio.to_thread(self._annotated_files, state, png, out))
        try:
            # upload
            with self._stage(state, ev, "upload", dry_run=state.dry_run):
                if state.dry_run:
                    state.upload = {"skipped": state.dry_reason, "written": str(files.avatar)}
                    ev.emit("upload", "skip", reason=state.dry_reason, avatar=str(files.avatar))
                else:
                    await self._upload(state, png)
        finally:
            state.files = (await annotating).to_json()

    def _annotated_files(self, state: ChangeState, png: bytes, out: Path | None) -> ChangeFiles:
        """All of the change's files, the annotated source included (worker thread)."""
        chosen, crop = state.chosen, state.crop
        assert chosen is not None and crop is not None
        annotated = annotated_source(chosen.image, chosen.faces.detections if chosen.faces else [], crop.box) \
            if chosen.image is not None else None
        return write_change_files(self.settings.avatars_dir, state.change_id, png, annotated, out)

    async def _download(self, state: ChangeState, ev: ChangeEvents, src: Source, found: list[Candidate]) -> list[Pick]:
        """All candidates at once (a few at a time): K round trips to a booru CDN overlap instead of adding up."""
        gate = asyncio.Semaphore(DOWNLOADS_AT_ONCE)
        picks = [Pick(c) for c in found]
        state.picks.extend(picks)

        async def one(pick: Pick) -> None:
            c = pick.candidate
            async with gate:
                try:
                    pick.candidate = await src.download(c)
                    pick.image, _ = await asyncio.to_thread(load_image, pick.candidate.data or b"")
                    ev.emit("download", "progress", key=c.key, bytes=len(pick.candidate.data or b""),
                            size=[pick.image.width, pick.image.height])
                except SourceError as exc:
                    pick.skipped = f"download: {exc.message}"
                except FaceDetectError as exc:
                    pick.skipped = f"image: {exc.message}"
            if pick.skipped:
                ev.emit("download", "skip", key=c.key, reason=pick.skipped)

        await asyncio.gather(*(one(p) for p in picks))
        return [p for p in picks if not p.skipped]

    async def _reserve_vision(self, state: ChangeState, ev: ChangeEvents, stack: AsyncExitStack, n: int) -> str | None:
        """Enter the vision reservation on ``stack`` (the caller releases it); why not, if it cannot be had."""
        try:
            res = await stack.enter_async_context(self.coordinator.reserve(VISION, note=f"verify {n}"))
        except VramError as exc:
            return str(exc)
        state.reservations.append({"consumer": VISION, "waited_s": round(res.waited_s, 4),
                                   "unloaded": res.unloaded, "timeline": res.timeline})
        ev.emit("verify", "progress", reserved=VISION, waited_s=round(res.waited_s, 3), unloaded=res.unloaded)
        return None

    @staticmethod
    def _prepare(verifier: Verifier, live: list[Pick]) -> dict[int, asyncio.Task[dict[str, Any]]]:
        """The vision requests' bodies (scaled JPEG data URIs), built in worker threads from the already decoded
        images, so the K answers follow each other with no encoding in between."""
        if not isinstance(verifier, VisionVerifier):
            return {}
        return {id(p): asyncio.create_task(asyncio.to_thread(verifier.request_body, p.candidate.data or b"", p.image))
                for p in live}

    async def _verify(self, state: ChangeState, ev: ChangeEvents, live: list[Pick], verifier: Verifier,
                      vision: AsyncExitStack, bodies: dict[int, asyncio.Task[dict[str, Any]]]) -> None:
        try:
            for pick in live:
                assert pick.candidate.data is not None
                try:
                    if isinstance(verifier, VisionVerifier) and id(pick) in bodies:
                        v = await verifier.verify(pick.candidate, body=await bodies[id(pick)])
                    else:
                        v = await verifier.verify(pick.candidate)
                except VisionUnavailable as exc:
                    verifier = self._fall_back_to_heuristic(state, ev, str(exc))
                    await vision.aclose()  # release the vision reservation: nothing will use it now
                    v = await verifier.verify(pick.candidate)
                pick.verification = v
                ok = v.is_character and v.confidence >= self.settings.min_confidence
                if not ok:
                    pick.skipped = f"verify: not {self.settings.character_name} ({v.method}, {v.confidence:.2f}: {v.description})"
                ev.emit("verify", "progress" if ok else "skip", key=pick.candidate.key, method=v.method,
                        is_character=v.is_character, confidence=round(v.confidence, 3), description=v.description)
        finally:
            for task in bodies.values():
                task.cancel()

    def _fall_back_to_heuristic(self, state: ChangeState, ev: ChangeEvents, reason: str) -> Verifier:
        state.fallbacks.append("verify:heuristic")
        state.verifier = "heuristic"
        ev.emit("verify", "fallback", to="heuristic", reason=reason)
        return self.heuristic()

    async def _detect(self, state: ChangeState, ev: ChangeEvents, survivors: list[Pick]) -> None:
        def fallback(to: str, reason: str) -> None:
            state.fallbacks.append(f"detect:{to}")
            ev.emit("detect", "fallback", to=to, reason=reason)

        async with AsyncExitStack() as stack:
            with self._stage(state, ev, "reserve", consumer=DETECTOR):
                try:
                    res = await stack.enter_async_context(self.coordinator.reserve(DETECTOR, note=f"detect {len(survivors)}"))
                    state.reservations.append({"consumer": DETECTOR, "waited_s": round(res.waited_s, 4),
                                               "unloaded": res.unloaded, "timeline": res.timeline})
                    ev.emit("reserve", "progress", reserved=DETECTOR, waited_s=round(res.waited_s, 3),
                            unloaded=res.unloaded, errors=res.errors)
                except VramError as exc:
                    # Without the reservation, only a detector that needs no VRAM may run.
                    if self.local_detector.backend not in ("animeface", "cascade"):
                        raise ChangeFailed("reserve", f"cannot make room for the face detector: {exc}") from None
                    fallback("in-process", f"cannot reserve the detector service ({exc}); "
                             f"detecting in-process with {self.local_detector.backend} (no VRAM)")
            service = self.settings.face_detector_url if "detect:in-process" not in state.fallbacks else None
            with self._stage(state, ev, "detect", via="service" if service else "in-process"):
                async with FaceFinder(service, self.local_detector, fallback) as finder:
                    for pick in survivors:
                        assert pick.image is not None and pick.candidate.data is not None
                        pick.faces = await finder.find(pick.image, pick.candidate.data,
                                                       pick.candidate.filename or f"{pick.candidate.key}.img")
                        state.detector_backend = pick.faces.backend or state.detector_backend
                        ev.emit("detect", "progress", key=pick.candidate.key, faces=len(pick.faces.detections),
                                via=pick.faces.via, backend=pick.faces.backend, error=pick.faces.error)

    def _crop(self, state: ChangeState, ev: ChangeEvents, survivors: list[Pick]) -> None:
        s = self.settings

        def rank(p: Pick) -> tuple[float, float]:
            assert p.image is not None and p.verification is not None
            faces = rank_faces(p.faces.detections if p.faces else [], p.image.size)
            return (faces[0][0] if faces else 0.0) * (0.5 + 0.5 * p.verification.confidence), p.verification.confidence

        ordered = sorted(survivors, key=rank, reverse=True)
        refused: list[str] = []
        for pick in ordered:
            detections = pick.faces.detections if pick.faces else []
            if not rank_faces(detections, pick.image.size):  # type: ignore[union-attr]
                continue
            try:
                result = crop_avatar(pick.image, detections, output_size=s.output_size,  # type: ignore[arg-type]
                                     max_upscale=s.max_upscale, allow_fallback=False)
            except FaceTooSmall as exc:
                refused.append(f"{pick.candidate.key}: {exc}")
                ev.emit("crop", "skip", key=pick.candidate.key, reason=str(exc))
                continue
            state.chosen, state.crop = pick, result
            break
        if state.crop is None:
            # No candidate has a usable face: the best-verified image, cropped by saliency (then top-centre).
            pick = max(survivors, key=lambda p: p.verification.confidence if p.verification else 0.0)
            try:
                result = crop_avatar(pick.image, [], output_size=s.output_size,  # type: ignore[arg-type]
                                     max_upscale=s.max_upscale, allow_fallback=True)
            except CropError as exc:
                raise ChangeFailed("crop", f"cannot crop {pick.candidate.key}: {exc}") from None
            state.chosen, state.crop = pick, result
            state.fallbacks.append(f"crop:{result.method}")
            ev.emit("crop", "fallback", to=result.method, key=pick.candidate.key,
                    reason="no usable face in any candidate" + (f" ({'; '.join(refused)})" if refused else ""))
        ev.emit("crop", "progress", key=state.chosen.candidate.key, method=state.crop.method,
                box=_box(state.crop.box), face=_box(state.crop.face.bbox) if state.crop.face else None,
                size=[state.crop.image.width, state.crop.image.height])

    async def _upload(self, state: ChangeState, png: bytes) -> None:
        try:
            result = await set_avatar(self.settings, png)
        except DiscordError as exc:
            state.upload = {"error": exc.message, "status_code": exc.status_code, "retryable": exc.retryable,
                            "kept": str(state.kept_avatar)}
            raise ChangeFailed("upload", exc.message) from None
        state.upload = result.to_json()
        state.uploaded = True

    def _dry_run(self, asked: bool | None) -> tuple[bool, str | None]:
        """Whether this change stays off Discord, and why (for the events and the record)."""
        if asked:
            return True, "dry run (asked for)"
        if asked is None and self.settings.dry_run:
            return True, "dry run (MIKU_DRY_RUN)"
        if self.settings.discord_token is None:
            return True, "dry run: no MIKU_DISCORD_TOKEN"
        return False, None

    # --- restore ----------------------------------------------------------------------------------------------------
    async def restore(self, change_id: int, *, dry_run: bool | None = None) -> dict[str, Any]:
        """Apply the avatar of an earlier change again; a new history row records it."""
        async with self._lock:
            s = self.settings
            path = self.history.restorable(change_id)
            dry, why = self._dry_run(dry_run)
            old = self.history.get(change_id) or {}
            new_id = self.history.start(f"restore:{change_id}", dry_run=dry, restored_from=change_id)
            state = ChangeState(new_id, f"restore:{change_id}", dry, dry_reason=why)
            state.kept_avatar = path
            state.files = {"avatar": str(path), "report": str(s.avatars_dir / f"change-{new_id:05d}.json"),
                           "annotated": None, "kept": str(path)}
            ev = ChangeEvents(self.bus, new_id)
            try:
                with self._stage(state, ev, "upload", dry_run=dry, restored_from=change_id):
                    if dry:
                        state.upload = {"skipped": why, "written": str(path)}
                        ev.emit("upload", "skip", reason=why, avatar=str(path))
                    else:
                        await self._upload(state, path.read_bytes())
            except ChangeFailed as exc:
                state.error, state.failed_stage = exc.message, exc.stage
                ev.emit(exc.stage, "fail", error=exc.message)
            return self._record(state, ev, inherit=old)

    # --- record -----------------------------------------------------------------------------------------------------
    def _stage(self, state: ChangeState, ev: ChangeEvents, name: str, **detail: Any) -> "_StageTimer":
        return _StageTimer(state, ev, name, detail)

    def _record(self, state: ChangeState, ev: ChangeEvents, inherit: dict[str, Any] | None = None) -> dict[str, Any]:
        ev.emit("record", "start")
        t0 = time.monotonic()
        status = "failed" if state.error else ("dry-run" if state.dry_run else "applied")
        chosen = state.chosen
        c = chosen.candidate if chosen else None
        crop = state.crop
        face_box = _box(crop.face.bbox) if crop and crop.face else None
        crop_box = _box(crop.box) if crop else None
        timeline = self._timeline(state)
        verification = chosen.verification.to_json() if chosen and chosen.verification else None
        inherit = inherit or {}
        fields: dict[str, Any] = {
            "source": c.source if c else inherit.get("source"),
            "post_key": c.key if c else inherit.get("post_key"),
            "page_url": c.page_url if c else inherit.get("page_url"),
            "image_url": c.image_url if c else inherit.get("image_url"),
            "artist": c.artist if c else inherit.get("artist"),
            "tags": list(c.tags) if c else inherit.get("tags"),
            "rating": c.rating if c else inherit.get("rating"),
            "face_box": face_box if crop else inherit.get("face_box"),
            "crop_box": crop_box if crop else inherit.get("crop_box"),
            "crop_method": crop.method if crop else inherit.get("crop_method"),
            "fallbacks": state.fallbacks,
            "detector_backend": state.detector_backend or inherit.get("detector_backend"),
            "verification": verification if chosen else inherit.get("verification"),
            "description": (verification or {}).get("description") if chosen else inherit.get("description"),
            "timings": {k: round(v, 1) for k, v in state.timings.items()},
            "vram_timeline": timeline,
            "candidates": [p.summary() for p in state.picks],
            "avatar_path": str(state.kept_avatar) if state.kept_avatar else None,
            "report_path": state.files.get("report"),
            "uploaded": state.uploaded,
            "error": state.error,
        }
        if not state.files.get("report"):
            state.files["report"] = str(self.settings.avatars_dir / f"change-{state.change_id:05d}.json")
        fields["report_path"] = state.files["report"]
        state.timings["record"] = (time.monotonic() - t0) * 1000
        record = self.record_json(state, status, fields, crop)
        fields["events"] = [e.to_json() for e in ev.log] + [{"change_id": state.change_id, "stage": "record",
                                                              "status": "done", "t": round(time.monotonic() - ev.t0, 3),
                                                              "detail": {"status": status}}]
        fields["timings"] = record["timings_ms"]
        if state.files.get("report"):
            try:
                write_report(Path(state.files["report"]), record)  # type: ignore[arg-type]
            except OSError as exc:
                log.warning("cannot write the report %s: %s", state.files["report"], exc)
                fields["report_path"] = None
                record["report_path"] = None
        self.history.finish(state.change_id, status, **fields)
        ev.emit("record", "done", status=status, error=state.error, ms=round((time.monotonic() - t0) * 1000, 1))
        return record

    def _timeline(self, state: ChangeState) -> list[dict[str, Any]]:
        """Both reservations' events on one clock (seconds since the first request)."""
        events: list[dict[str, Any]] = []
        if not state.reservations:
            return events
        t_zero = min(r["timeline"].started for r in state.reservations)
        for r in state.reservations:
            offset = r["timeline"].started - t_zero
            for e in r["timeline"].to_json():
                events.append({**e, "t": round(e["t"] + offset, 4)})
        return sorted(events, key=lambda e: e["t"])

    def record_json(self, state: ChangeState, status: str, fields: dict[str, Any], crop: CropResult | None) -> dict[str, Any]:
        """The change record as the CLI's ``--json`` prints it and the report file stores it."""
        face_inside = None
        if crop is not None and crop.face is not None:
            face_inside, _ = face_in_circle(crop.face.bbox, crop.box)
        return {
            "id": state.change_id,
            "status": status,
            "dry_run": state.dry_run,
            "source": {
                "spec": state.spec,
                "name": fields["source"], "key": fields["post_key"], "page_url": fields["page_url"],
                "image_url": fields["image_url"], "artist": fields["artist"], "tags": fields["tags"],
                "rating": fields["rating"],
                "filename": state.chosen.candidate.filename if state.chosen else None,
                "size": [state.chosen.image.width, state.chosen.image.height]
                if state.chosen and state.chosen.image is not None else None,
            },
            "face_box": fields["face_box"],
            "crop_box": fields["crop_box"],
            "crop_method": fields["crop_method"],
            "face_inside_circle": face_inside,
            "avatar_size": [crop.image.width, crop.image.height] if crop else None,
            "fallbacks": state.fallbacks,
            "detector_backend": fields["detector_backend"],
            "verifier": state.verifier,
            "verification": fields["verification"],
            "description": fields["description"],
            "timings_ms": {k: round(v, 1) for k, v in state.timings.items()},
            "reservations": [{k: v for k, v in r.items() if k != "timeline"} for r in state.reservations],
            "vram_timeline": fields["vram_timeline"],
            "candidates": fields["candidates"],
            "avatar_path": fields["avatar_path"],
            "files": state.files,
            "report_path": fields["report_path"],
            "uploaded": state.uploaded,
            "upload": state.upload,
            "failed_stage": state.failed_stage,
            "error": state.error,
        }


class _StageTimer:
    """``with``-block around a stage: emits start/done and stores its duration in ms."""

    def __init__(self, state: ChangeState, ev: ChangeEvents, name: str, detail: dict[str, Any]) -> None:
        self.state, self.ev, self.name, self.detail = state, ev, name, detail

    def __enter__(self) -> "_StageTimer":
        self.t0 = time.monotonic()
        self.ev.emit(self.name, "start", **self.detail)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not hasattr(self, "t0"):
            return  # never started (the change failed before this stage began)
        ms = (time.monotonic() - self.t0) * 1000
        self.state.timings[self.name] = self.state.timings.get(self.name, 0.0) + ms
        if exc_type is None:
            self.ev.emit(self.name, "done", ms=round(ms, 1))


async def run_change(settings: Settings, *, bus: EventBus | None = None, **kwargs: Any) -> dict[str, Any]:
    """One change with a pipeline built and closed around it (the CLI's path)."""
    async with AvatarPipeline(settings, bus=bus) as pipeline:
        return await pipeline.change(**kwargs)
