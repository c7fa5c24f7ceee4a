"""The one way a change ends, and the record stage: whatever happened, the report file and exactly one
finished history row are written from one ``ChangeRecord`` (built by ``mikubot.record.build_record``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from pathlib import Path

from mikubot.events import Failure, ProgressEvent, RecordDone
from mikubot.pipeline.services import Services
from mikubot.pipeline.state import ChangeFailed, ChangeState
from mikubot.outputs import write_report
from mikubot.record import ChangeRecord, FinalStatus, build_record
from mikubot.redact import scrub
from mikubot.storage import StorageError, StorageFull

log = logging.getLogger(__name__)


async def conclude(state: ChangeState, services: Services, work: Awaitable[None]) -> ChangeRecord:
    """Await the change's work and finish its row, whatever happened: a ``ChangeFailed`` becomes a
    failed record; a bug or a cancellation finishes the row as failed and then goes on."""
    try:
        await work
    except ChangeFailed as exc:
        state.error, state.failed_stage = exc.message, exc.stage
        state.events.emit(exc.stage, "fail", Failure(error=exc.message))
    except StorageError as exc:  # a full or failing disk: the change fails, saying where to make room
        state.error, state.failed_stage = str(exc), state.failed_stage or state.last_stage()
        if isinstance(exc, StorageFull):
            state.insufficient_storage = str(exc.where)
        state.events.emit(state.failed_stage, "fail", Failure(error=state.error))
    except BaseException as exc:
        state.error = f"internal error: {type(exc).__name__}: {exc}"
        state.failed_stage = state.failed_stage or "internal"
        # Written here, not in a worker thread: a cancelled change must leave its row before it goes on.
        _finished(state, _written(state, services, *_built(state)))
        raise
    built, events = _built(state)
    return _finished(state, await asyncio.to_thread(_written, state, services, built, events))


def _built(state: ChangeState) -> tuple[ChangeRecord, list[ProgressEvent]]:
    """The record stage's start: the record, and the events the history row keeps (its own done included)."""
    state.events.emit("record", "start")
    state.record_started = time.monotonic()
    status: FinalStatus = "failed" if state.error else ("dry-run" if state.dry_run else "applied")
    state.files["report"] = state.files.get("report") or str(state.default_report)
    state.timings["record"] = 0.0
    built = build_record(state, status)
    events = [*state.events.log, ProgressEvent(change_id=state.id, stage="record", status="done",
                                               t=time.monotonic() - state.events.t0, detail=RecordDone(status=status))]
    return built, events


def _written(state: ChangeState, services: Services, built: ChangeRecord, events: list[ProgressEvent]) -> ChangeRecord:
    """The report file, then the finished history row (blocking: a worker thread's work)."""
    try:
        write_report(Path(built.report_path or state.default_report), scrub(built.to_json()))
    except OSError as exc:
        log.warning("cannot write the report %s: %s", built.report_path, exc)
        built.report_path = None
    services.history.finish(state.id, built.status, **built.history_columns(events))
    return built


def _finished(state: ChangeState, built: ChangeRecord) -> ChangeRecord:
    """The record stage's end: its done event, and the record as returned (no URL credentials in any
    record: ``mikubot.redact``)."""
    state.events.emit("record", "done", RecordDone(status=built.status, error=state.error,
                                                   ms=round((time.monotonic() - state.record_started) * 1000, 1)))
    return ChangeRecord.model_validate(scrub(built.to_json()))
