"""The download and verify stages: every candidate downloaded and decoded (a few at a time), then asked
"is this the character?" — with the vision model under one reservation around all K answers, or the
heuristic (which needs no room). Which runs when is flow.py's decision."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import AsyncExitStack

from facedetect.errors import FaceDetectError
from facedetect.imageio import load_image
from mikubot.events import CountStart, Downloaded, Reserved, Skipped, Verdict
from mikubot.outputs import candidate_thumbnail, prune_candidate_pictures
from mikubot.pipeline.services import Services
from mikubot.pipeline.state import ChangeFailed, ChangeState, Pick, Reservation, counted
from mikubot.sources import Candidate, Source, SourceError
from mikubot.record_parts import Verification
from mikubot.verify import CandidatePicture, Verifier, VisionUnavailable
from vramctl.errors import VramError

DOWNLOADS_AT_ONCE = 3  # polite to a booru's CDN, and enough to overlap the round trips


async def download(state: ChangeState, src: Source, found: list[Candidate], verifier: Verifier) -> list[Pick]:
    """All candidates at once (a few at a time): K round trips to a booru CDN overlap instead of adding up.
    Each decoded picture is handed to ``verifier.prepare`` in a worker thread at once."""
    gate = asyncio.Semaphore(DOWNLOADS_AT_ONCE)
    picks = [Pick(c) for c in found]
    first = len(state.picks)  # each pick's place in the record's candidates (its thumbnail's number)
    state.picks.extend(picks)

    async def one(index: int, pick: Pick) -> None:
        async with gate:
            await _fetch(state, src, pick, index)
        if pick.skipped:
            state.events.emit("download", "skip", Skipped(key=pick.candidate.key, reason=pick.skipped))
        else:
            pick.prepared = asyncio.create_task(
                asyncio.to_thread(verifier.prepare, CandidatePicture(pick.candidate, pick.image)))

    with state.stage("download", CountStart(count=len(found))) as outcome:
        await asyncio.gather(*(one(first + i, p) for i, p in enumerate(picks)))
        await asyncio.to_thread(prune_candidate_pictures, state.settings.avatars_dir, state.id,
                                state.settings.candidate_pictures_kept)
        live = [p for p in picks if not p.skipped]
        outcome.summary = f"{len(live)} of {counted(len(picks), 'candidate')} downloaded and decoded"
    if not live:
        raise ChangeFailed("download", "no candidate could be downloaded and decoded: "
                           + "; ".join(p.skipped or "" for p in picks))
    return live


async def _fetch(state: ChangeState, src: Source, pick: Pick, index: int) -> None:
    """One candidate's bytes, decoded picture and thumbnail; ``pick.skipped`` says why not."""
    key = pick.candidate.key
    try:
        pick.candidate = await src.download(pick.candidate)
        pick.image, _ = await asyncio.to_thread(load_image, pick.candidate.data or b"")
        pick.picture = await asyncio.to_thread(candidate_thumbnail, pick.image, state.settings.avatars_dir,
                                               state.id, index)
        state.events.emit("download", "progress", Downloaded(key=key, bytes=len(pick.candidate.data or b""),
                                                             size=[pick.image.width, pick.image.height]))
    except SourceError as exc:
        pick.skipped = f"download: {exc.message}"
    except FaceDetectError as exc:
        pick.skipped = f"image: {exc.message}"


async def verify(state: ChangeState, services: Services, verifier: Verifier, downloading: Awaitable[list[Pick]],
                 count: int) -> list[Pick]:
    """The verify stage over the downloaded picks (awaited inside the stage: a verifier that reserves VRAM
    makes its room while they download). The survivors, or ``ChangeFailed`` when none is the character."""
    settings = state.settings
    state.verifier = verifier.method
    preparer = verifier
    with state.stage("verify", CountStart(count=count)) as outcome:
        # The reservation is entered and released here only. It ends with the last answer (or as soon as the
        # model is found unusable), not after the stage's bookkeeping.
        async with AsyncExitStack() as room:
            if verifier.reserves and (problem := await _reserve(state, services, room, verifier.reserves, count)):
                verifier = _fall_back_to_heuristic(state, services, f"cannot reserve the vision model: {problem}")
            live = await downloading
            for pick in live:
                try:
                    pick.verification = await verifier.verify(await _picture(pick, verifier is preparer))
                except VisionUnavailable as exc:
                    verifier = _fall_back_to_heuristic(state, services, str(exc))
                    await room.aclose()  # nothing will use the vision model now
                    pick.verification = await verifier.verify(await _picture(pick, False))
                _judge(state, pick, pick.verification)
        survivors = [p for p in live if not p.skipped]
        outcome.summary = (f"{len(survivors)} of {counted(len(live), 'candidate')} accepted as "
                           f"{settings.character_name} ({state.verifier}); the crop stage chooses among them")
        if not survivors:
            raise ChangeFailed("verify", f"none of {len(live)} candidates shows {settings.character_name}: "
                               + "; ".join(p.skipped or "" for p in live))
    return survivors


async def _picture(pick: Pick, prepared: bool) -> CandidatePicture:
    """The pick as the verifier sees it (``prepared``: with what this verifier built for it ahead)."""
    return CandidatePicture(pick.candidate, pick.image, pick.faces.detections if pick.faces else None,
                            await pick.prepared if prepared and pick.prepared is not None else None)


async def _reserve(state: ChangeState, services: Services, room: AsyncExitStack, consumer: str, n: int) -> str | None:
    """Enter the verifier's reservation on ``room``; why not, if it cannot be had."""
    try:
        res = await room.enter_async_context(services.coordinator.reserve(consumer, note=f"verify {n}"))
    except VramError as exc:
        return str(exc)
    state.reservations.append(Reservation(consumer, res.waited_s, res.unloaded, res.timeline))
    state.events.emit("verify", "progress", Reserved(reserved=consumer, waited_s=round(res.waited_s, 3),
                                                     unloaded=res.unloaded))
    return None


def _judge(state: ChangeState, pick: Pick, v: Verification) -> None:
    settings = state.settings
    ok = v.is_character and v.confidence >= settings.min_confidence
    if not ok:
        pick.skipped = f"verify: not {settings.character_name} ({v.method}, {v.confidence:.2f}: {v.description})"
    state.events.emit("verify", "progress" if ok else "skip", Verdict(
        key=pick.candidate.key, method=v.method, is_character=v.is_character, confidence=round(v.confidence, 3),
        description=v.description))


def _fall_back_to_heuristic(state: ChangeState, services: Services, reason: str) -> Verifier:
    state.fall_back("verify", "heuristic", reason)
    state.verifier = "heuristic"
    return services.heuristic(state.settings)
