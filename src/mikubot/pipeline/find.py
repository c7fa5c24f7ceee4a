"""The search stage: the source's K newest unused candidates (never a post this data directory used)."""

from __future__ import annotations

import asyncio

from mikubot.events import Found, SearchStart
from mikubot.pipeline.services import Services
from mikubot.pipeline.state import ChangeFailed, ChangeState
from mikubot.sources import Candidate, Source, SourceError


async def search(state: ChangeState, services: Services, k: int) -> tuple[Source, list[Candidate]]:
    spec = state.spec
    with state.stage("search", SearchStart(spec=spec, limit=k)):
        try:
            src = services.make_source(spec, state.settings)
            exclude = await asyncio.to_thread(services.history.used_keys, src.name)
            found = await src.search(k, exclude)
        except SourceError as exc:
            raise ChangeFailed("search", exc.message) from exc
        report = getattr(src, "last_search", None)  # what the source saw and turned away, when it says
        seen = report.describe() if report is not None else None
        if not found:
            raise ChangeFailed("search", f"{spec} offered no new candidates ({len(exclude)} already used"
                               + (f"; {seen}" if seen else "") + "); widen the search (ratings, blacklist, "
                               "another source) or use a fresh MIKU_DATA_DIR")
        state.events.emit("search", "progress", Found(found=len(found), keys=[c.key for c in found], report=seen))
    return src, found
