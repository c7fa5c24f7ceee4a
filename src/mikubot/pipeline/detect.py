"""The reserve and detect stages: one face-detector reservation for all survivors, then ``FaceFinder``
(detector service → in-process → none) on each. ``reserve_detector`` and ``face_finder`` are also what
the panel's upload preview runs, so a preview follows the same VRAM rule and detector chain."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

from PIL import Image

from mikubot.detection import FaceFinder, FaceResult
from mikubot.events import DetectStart, FacesFound, Reserved, ReserveStart
from mikubot.errors import MikubotError
from mikubot.pipeline.services import Services
from mikubot.pipeline.state import ChangeFailed, ChangeState, Pick, Reservation, counted
from mikubot.vram import CPU_BACKENDS, DETECTOR
from vramctl.errors import VramError

Fallback = Callable[[str, str], None]  # (to what, why): a step down the detector chain


class NoRoomForDetector(MikubotError):
    """The face detector's VRAM cannot be had, and the in-process backend needs VRAM too."""


async def reserve_detector(services: Services, room: AsyncExitStack, note: str,
                           on_fallback: Fallback) -> tuple[str | None, Reservation | None]:
    """Enter the face detector's reservation on ``room``; returns the detector service's URL to use (None:
    detect in-process) and the reservation. Without the reservation only a backend that needs no VRAM
    (``vram.CPU_BACKENDS``) may run, in-process; ``NoRoomForDetector`` otherwise."""
    try:
        res = await room.enter_async_context(services.coordinator.reserve(DETECTOR, note=note))
    except VramError as exc:
        backend = services.local_detector.backend
        if backend not in CPU_BACKENDS:
            raise NoRoomForDetector(f"cannot make room for the face detector: {exc}") from exc
        on_fallback("in-process", f"cannot reserve the detector service ({exc}); "
                    f"detecting in-process with {backend} (no VRAM)")
        return None, None
    return services.settings.detector_service_url, Reservation(DETECTOR, res.waited_s, res.unloaded, res.timeline,
                                                               res.errors)


async def detect_one(services: Services, image: Image.Image, data: bytes, filename: str, *, note: str,
                     on_fallback: Fallback) -> FaceResult:
    """One picture outside a change (the panel's upload preview): the detect stage's reservation rule and
    detector chain. ``NoRoomForDetector`` when the detector's VRAM cannot be had."""
    async with AsyncExitStack() as room:
        service, _ = await reserve_detector(services, room, note, on_fallback)
        async with face_finder(services, service, on_fallback) as finder:
            return await finder.find(image, data, filename)


def face_finder(services: Services, service: str | None, on_fallback: Fallback) -> FaceFinder:
    """The detector chain for one change or preview; through llama-swap it carries llama-swap's key."""
    return FaceFinder(service, services.local_detector, on_fallback, api_key=services.settings.detector_api_key)


async def detect(state: ChangeState, services: Services, survivors: list[Pick]) -> None:
    """Reserve + detect: one detector reservation for all survivors; fills each pick's ``faces``."""

    def fell_back(to: str, why: str) -> None:
        state.fall_back("detect", to, why)

    async with AsyncExitStack() as room:
        with state.stage("reserve", ReserveStart(consumer=DETECTOR)):
            service = await _reserve(state, services, room, len(survivors), fell_back)
        with state.stage("detect", DetectStart(via="service" if service else "in-process")) as outcome:
            async with face_finder(services, service, fell_back) as finder:
                for pick in survivors:
                    await _find(state, finder, pick)
            outcome.summary = _faces_summary(survivors)


async def _find(state: ChangeState, finder: FaceFinder, pick: Pick) -> None:
    c = pick.candidate
    assert pick.image is not None and c.data is not None
    pick.faces = faces = await finder.find(pick.image, c.data, c.filename or f"{c.key}.img")
    state.detector_backend = faces.backend or state.detector_backend
    state.events.emit("detect", "progress", FacesFound(key=c.key, faces=len(faces.detections), via=faces.via,
                                                       backend=faces.backend, error=faces.error))


async def _reserve(state: ChangeState, services: Services, room: AsyncExitStack, n: int,
                   fell_back: Fallback) -> str | None:
    """Enter the detector reservation on ``room``; the detector service's URL to use (None: in-process)."""
    try:
        service, res = await reserve_detector(services, room, f"detect {n}", fell_back)
    except NoRoomForDetector as exc:
        raise ChangeFailed("reserve", str(exc)) from exc
    if res is not None:
        state.reservations.append(res)
        state.events.emit("reserve", "progress", Reserved(reserved=DETECTOR, waited_s=round(res.waited_s, 3),
                                                          unloaded=res.unloaded, errors=res.errors))
    return service


def _faces_summary(picks: list[Pick]) -> str:
    """The detect stage's last word: the faces in every candidate, not only the last one's."""
    counts = [len(p.faces.detections) if p.faces else 0 for p in picks]
    via = sorted({p.faces.via for p in picks if p.faces})
    with_faces = sum(1 for n in counts if n)
    return (f"faces in {with_faces} of {counted(len(picks), 'candidate')} ({', '.join(map(str, counts))})"
            + (f" via {', '.join(via)}" if via else ""))
