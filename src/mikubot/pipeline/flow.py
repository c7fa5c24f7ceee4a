"""The order of the stages — decided here and nowhere else — and ``AvatarPipeline``, which runs changes.

A change: search, then download and verify, then reserve + detect, crop (and banner), upload, record.
Which of verify and detect comes first depends on the verifier, and only here:

- a verifier that reserves VRAM (the vision model) makes its room while the pictures download (the two
  stages overlap), then the detector is reserved for the detect stage;
- a verifier that reads the detect stage's faces (the heuristic) runs after detection, so each picture
  is detected once: download, reserve + detect, verify.

A restore: upload, record. Every change and every restore ends in ``finish.conclude``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx

from mikubot.config import Settings
from mikubot.events import ChangeEvents, EventBus
from mikubot.history import Claim, History, HistoryRow
from mikubot.pipeline import apply, detect, find, finish, framing
from mikubot.pipeline import verify as verifying
from mikubot.pipeline.services import Services
from mikubot.pipeline.state import ChangeFailed, ChangeState, Pick
from mikubot.record import ChangeRecord
from mikubot.sources import Candidate, Source
from mikubot.verify import Verifier
from vramctl.coordinator import Coordinator


def stage_order(settings: Settings) -> tuple[str, ...]:
    """A change's stages in the order ``find_and_apply`` runs them with ``settings`` (what the CLI's live
    table, the panel and the bot's progress list)."""
    uses_faces = Services.verifier_kind(settings).uses_faces
    middle = ("reserve", "detect", "verify") if uses_faces else ("verify", "reserve", "detect")
    return ("search", "download", *middle, "crop", "upload", "record")


async def find_and_apply(state: ChangeState, services: Services, k: int, out: Path | None) -> None:
    """A change's stages, in order (``stage_order``)."""
    src, found = await find.search(state, services, k)
    verifier = services.make_verifier(state.settings)
    state.verifier = verifier.method
    try:
        if verifier.uses_faces:  # the heuristic reads the hair colour of the faces found: detect once, first
            live = await verifying.download(state, src, found, verifier)
            await detect.detect(state, services, live)
            survivors = await verifying.verify(state, services, verifier, _ready(live), len(found))
        else:  # the vision model's room is made while the pictures download; the detector's after it
            survivors = await _download_while_verifying(state, services, src, found, verifier)
            await detect.detect(state, services, survivors)
    finally:
        for pick in state.picks:  # a prepared request nobody asked for (the vision model went away)
            if pick.prepared is not None:
                pick.prepared.cancel()
    with state.stage("crop") as outcome:
        state.chosen = chosen = framing.crop(state, survivors)
        outcome.summary = framing.chosen_summary(chosen, len(survivors))
        banner = await framing.make_banner(state, chosen) if state.settings.banner else None
    await apply.write_and_apply(state, services, chosen, banner, out)


async def _ready(picks: list[Pick]) -> list[Pick]:
    """Picks already downloaded, as the awaitable the verify stage takes (it awaits them inside its span)."""
    return picks


async def _download_while_verifying(state: ChangeState, services: Services, src: Source, found: list[Candidate],
                                    verifier: Verifier) -> list[Pick]:
    """Download ∥ verify: the vision model's room is made (unloading whatever is in its way and waiting
    until the probe shows it free) while the pictures download — neither needs the other, and the unload
    is the long pole. So the two stages run as two tasks; the verify stage starts inside the download
    stage (the download task is created first, so it starts first) and ends after it."""
    downloading = asyncio.create_task(verifying.download(state, src, found, verifier))
    verifying_task = asyncio.create_task(verifying.verify(state, services, verifier, downloading, len(found)))
    try:
        # A failed download ends the change at once, even while the vision model's room is still being made.
        await asyncio.wait((downloading, verifying_task), return_when=asyncio.FIRST_EXCEPTION)
        if downloading.done() and not downloading.cancelled() and downloading.exception() is not None:
            await downloading
        return await verifying_task
    finally:
        for task in (verifying_task, downloading):
            if not task.done():
                task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task  # its outcome is the one raised above; this only collects it


class AvatarPipeline:
    """Runs avatar changes. Build one per process (it owns the in-process detector and the coordinator)
    and call ``await change()`` as often as needed; ``aclose()`` when done."""

    def __init__(self, settings: Settings, *, bus: EventBus | None = None, history: History | None = None,
                 coordinator: Coordinator | None = None, http: httpx.AsyncClient | None = None,
                 source_options: dict[str, Any] | None = None) -> None:
        self.services = Services(settings, history=history, coordinator=coordinator, http=http,
                                 source_options=source_options)
        self.settings = settings
        self.bus = bus or EventBus()
        self.history = self.services.history
        self.coordinator = self.services.coordinator
        self.http = self.services.http

    async def aclose(self) -> None:
        await self.services.aclose()

    async def __aenter__(self) -> AvatarPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def stage_order(self, guild_id: int | None = None) -> tuple[str, ...]:
        """The stages of this pipeline's next change (for ``guild_id``'s look), in the order they will run."""
        return stage_order(self.settings.for_guild(guild_id))

    async def change(self, *, source: str | None = None, candidates: int | None = None, dry_run: bool | None = None,
                     out: Path | None = None, guild_id: int | None = None, claim: Claim | None = None) -> ChangeRecord:
        """Run one change; returns its record. Never raises for a failed change — the record's ``status``
        is "failed" and ``error`` says why — only for bugs, cancellation and ``ChangeLocked`` (a change runs
        on this data directory already: one at a time, ``History.claim``). ``guild_id``: change that
        server's own look (its configured source and character; the bot's member there), not the global
        profile. ``claim``: the change lock, when the caller took it (``ChangeRunner``)."""
        spec = source or self.settings.for_guild(guild_id).source
        state = await self._begin(spec, dry_run, guild_id=guild_id, claim=claim)
        work = find_and_apply(state, self.services, candidates or self.settings.candidates, out)
        return await finish.conclude(state, self.services, self._within_deadline(state, work))

    async def restore(self, change_id: int, *, dry_run: bool | None = None, claim: Claim | None = None) -> ChangeRecord:
        """Apply the avatar of an earlier change again; a new history row records it."""
        try:
            path = await asyncio.to_thread(self.history.restorable, change_id)
            earlier = await asyncio.to_thread(self.history.get, change_id)
        except BaseException:
            if claim is not None:
                self.history.release(claim)
            raise
        assert earlier is not None  # ``restorable`` has read it
        state = await self._begin(f"restore:{change_id}", dry_run, restored_from=change_id, earlier=earlier,
                                  guild_id=earlier.guild_id, claim=claim)  # a server's look goes back to that server
        work = apply.reapply(state, path, *self._restorable_banner(earlier))
        return await finish.conclude(state, self.services, work)

    async def _begin(self, spec: str, dry_run: bool | None, *, restored_from: int | None = None,
                     earlier: HistoryRow | None = None, guild_id: int | None = None,
                     claim: Claim | None = None) -> ChangeState:
        """Write the ``running`` row (taking the change lock unless ``claim`` holds it); from here on,
        ``finish.conclude`` must finish it."""
        dry, why = self.settings.dry_run_for(dry_run)
        starting = asyncio.ensure_future(asyncio.to_thread(
            self.history.start, spec, dry_run=dry, restored_from=restored_from, guild_id=guild_id, claim=claim))
        try:
            change_id = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The worker thread goes on; the row it writes is closed as failed (every change ends in exactly
            # one finished row; ``start`` itself lets go of the lock when it writes none).
            starting.add_done_callback(self._close_unstarted)
            raise
        return ChangeState(change_id, spec, self.settings.for_guild(guild_id), ChangeEvents(self.bus, change_id),
                           dry, why, guild_id, earlier, restored_from)

    def _close_unstarted(self, starting: asyncio.Future[int]) -> None:
        if starting.cancelled() or starting.exception() is not None:
            return
        self.history.finish(starting.result(), "failed", error="internal error: CancelledError: the change was "
                            "cancelled while its row was being written")

    async def _within_deadline(self, state: ChangeState, work: Awaitable[None]) -> None:
        """``work`` under the change's one deadline (MIKU_CHANGE_TIMEOUT_S): past it every stage is
        cancelled — so its reservations are released — and the change fails at the stage it was in."""
        deadline = asyncio.timeout(self.settings.change_timeout_s)
        try:
            async with deadline:
                await work
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise ChangeFailed(state.failed_stage or state.last_stage(),
                               f"the change did not finish within {self.settings.change_timeout_s:g} s "
                               "(MIKU_CHANGE_TIMEOUT_S); it was stopped") from exc

    def _restorable_banner(self, earlier: HistoryRow) -> tuple[Path | None, str | None]:
        """The banner a restore applies with the avatar (only when the restored change had one and
        MIKU_BANNER is on), and the reason recorded when it applies none."""
        if not earlier.banner_path:
            return None, None
        if not self.settings.banner:
            return None, f"change {earlier.id} had a banner; MIKU_BANNER is off, so the avatar alone is restored"
        path = Path(earlier.banner_path)
        if not path.is_file():
            return None, f"the banner of change {earlier.id} is gone from {path}; the avatar alone is restored"
        return path, earlier.banner_reason
