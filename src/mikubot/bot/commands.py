"""The /pfp command handlers: plain async functions over a ``CommandContext``.

``/pfp change [source] [scope]`` and ``/pfp restore <id>`` start a change through the shared ``ChangeRunner``,
then keep editing the deferred answer as stage events arrive (at most one edit per ``edit_interval_s``:
Discord rate-limits webhook edits) and finish with the result and the avatar. ``/pfp status`` and
``/pfp history`` only read. Every command is admin-only (``mikubot.bot.admin``).

``scope`` says which profile a change sets: ``server`` (the server's own look, where
``MIKU_GUILD_LOOKS`` configures one: its source and character, the bot's avatar and bio in that server
only) or ``global`` (the bot's profile everywhere). Left out, it is ``server`` in a server with a look
of its own and ``global`` anywhere else — what ``/pfp change`` always meant there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from mikubot.bot.admin import NOT_ADMIN, is_admin
from mikubot.bot.context import CommandContext
from mikubot.bot.messages import StageProgress, clip, history_text, result_text
from mikubot.bot.schedule import RotationScheduler
from mikubot.config import Settings
from mikubot.events import ProgressEvent
from mikubot.history import HistoryError, HistoryRow
from mikubot.record import ChangeRecord
from mikubot.runner import ChangeBusy, ChangeRunner, RunningChange
from mikubot.storage import StorageError

log = logging.getLogger(__name__)

# Sources a Discord user may name. ``local:`` and ``file:`` read the server's disk, so only the
# configured default source may be one of those (it is used when the option is left out).
REMOTE_SOURCES = ("danbooru", "safebooru", "gelbooru", "url:")


@dataclass
class BotState:
    """What the handlers share: the runner, and optionally the scheduler (for /pfp status)."""

    runner: ChangeRunner
    scheduler: RotationScheduler | None = None
    edit_interval_s: float = 1.0
    started_at: float = field(default_factory=time.time)

    @property
    def settings(self):  # noqa: ANN201 - mikubot.config.Settings
        return self.runner.pipeline.settings


SCOPES = ("server", "global")


def change_scope(invoker_guild: int | None, asked: str | None, settings: Settings) -> tuple[int | None, str | None]:
    """The server whose look a change sets (None: the global profile), or why the asked scope cannot be."""
    configured = settings.look_for(invoker_guild) is not None
    scope = asked or ("server" if configured else "global")
    if scope not in SCOPES:
        return None, f"⚠️ scope is `server` or `global`, not `{scope}`."
    if scope == "global":
        return None, None
    if invoker_guild is None:
        return None, "⚠️ `scope: server` works inside a server only; here only the global profile can change."
    if not configured:
        return None, ("⚠️ This server has no look of its own: add it to MIKU_GUILD_LOOKS (its source and character), "
                      "or use `scope: global` to change the bot's profile everywhere.")
    return invoker_guild, None


def source_allowed(source: str) -> bool:
    s = source.strip().lower()
    return s in REMOTE_SOURCES or s.startswith(tuple(n if n.endswith(":") else n + ":" for n in REMOTE_SOURCES))


async def _admin_or_refuse(ctx: CommandContext, state: BotState) -> bool:
    if is_admin(ctx.invoker, state.settings):
        return True
    log.info("refused /pfp for user %s: not an admin", ctx.invoker.user_id)
    await ctx.refuse(NOT_ADMIN)
    return False


async def follow(ctx: CommandContext, state: BotState, handle: RunningChange) -> ChangeRecord:
    """Edit the answer as the change's stages progress; return its record once it is finished."""
    progress = StageProgress(handle.change_id, handle.kind, state.runner.pipeline.stage_order())
    queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()
    unsubscribe = state.runner.bus.subscribe(queue.put_nowait)
    try:
        for ev in list(handle.events):  # what happened before we subscribed
            progress.add(ev)
        last_edit = float("-inf")  # the first progress edit goes out at once
        dirty = True
        while not handle.done:
            if dirty and time.monotonic() - last_edit >= state.edit_interval_s:
                await _edit_quietly(ctx, progress.render())
                last_edit, dirty = time.monotonic(), False
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, handle.task}, timeout=state.edit_interval_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                dirty = progress.add(getter.result()) or dirty
            else:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        record = await handle.result()
    finally:
        unsubscribe()
    avatar = Path(record.avatar_path) if record.avatar_path else None
    await ctx.edit(result_text(record), image=avatar if record.status != "failed" else None)
    return record


async def _edit_quietly(ctx: CommandContext, content: str) -> None:
    # A progress edit that fails (rate limit, expired token) must not stop the change or the final answer.
    try:
        await ctx.edit(content)
    except Exception as exc:  # noqa: BLE001
        log.warning("progress edit failed: %s", exc)


async def pfp_change(ctx: CommandContext, state: BotState, source: str | None = None,
                     scope: str | None = None) -> ChangeRecord | None:
    if not await _admin_or_refuse(ctx, state):
        return None
    if source is not None and source.strip() and not source_allowed(source):
        await ctx.refuse(clip(f"⚠️ `{source}` is not a source you can pick from Discord: use danbooru, safebooru, "
                              "gelbooru or url:https://…, or leave it out for the configured default."))
        return None
    guild_id, why_not = change_scope(ctx.invoker.guild_id, scope, state.settings)
    if why_not is not None:
        await ctx.refuse(clip(why_not))
        return None
    await ctx.defer()
    start = state.runner.start_change(source=source.strip() if source and source.strip() else None, guild_id=guild_id)
    handle = await _started(ctx, start, busy="{exc}. `/pfp status` shows how far it is.",
                            no_room="The avatar cannot change now: {exc}")
    return None if handle is None else await follow(ctx, state, handle)


async def pfp_restore(ctx: CommandContext, state: BotState, change_id: int) -> ChangeRecord | None:
    if not await _admin_or_refuse(ctx, state):
        return None
    await ctx.defer()
    try:
        handle = await _started(ctx, state.runner.start_restore(change_id), busy="{exc}.",
                                no_room=f"Cannot restore #{change_id} now: {{exc}}")
    except HistoryError as exc:
        await ctx.edit(f"⚠️ Cannot restore #{change_id}: {exc}")
        return None
    return None if handle is None else await follow(ctx, state, handle)


async def _started(ctx: CommandContext, start: Awaitable[RunningChange], *, busy: str,
                   no_room: str) -> RunningChange | None:
    """The change or restore ``start`` begins; None, answered with ``busy`` or ``no_room`` (each with
    ``{exc}``), when another one runs or not even the history row could be written (then nothing started)."""
    try:
        return await start
    except ChangeBusy as exc:
        await ctx.edit(f"⏳ {busy.format(exc=exc)}")
    except StorageError as exc:
        await ctx.edit(clip(f"💾 {no_room.format(exc=exc)}"))
    return None


async def pfp_history(ctx: CommandContext, state: BotState, limit: int = 10) -> str | None:
    if not await _admin_or_refuse(ctx, state):
        return None
    await ctx.defer()
    text = history_text(await asyncio.to_thread(state.runner.pipeline.history.list, limit=max(1, min(limit, 25))))
    await ctx.edit(text)
    return text


def status_text(state: BotState, last: HistoryRow | None) -> str:
    """``last``: the latest history row (None: no change yet)."""
    s = state.settings
    lines = ["**Avatar status**"]
    cur = state.runner.current
    if cur is not None:
        stages = [e.stage for e in cur.events]
        lines.append(f"⏳ {cur.kind} #{cur.change_id} running" + (f", at **{stages[-1]}**" if stages else ""))
    else:
        lines.append("💤 no change running")
    if last is not None:
        lines.append(f"last: #{last.id} {last.status} {(last.finished_at or last.started_at)[:16].replace('T', ' ')}"
                     + (f" — {last.error}" if last.error else ""))
    sched = state.scheduler
    if sched is not None:
        nxt = f", next at {sched.next_due:%Y-%m-%d %H:%M}" if sched.next_due else ""
        lines.append(f"🗓️ rotation {sched.rotation.describe()}{nxt}")
    else:
        lines.append("🗓️ no scheduled rotation")
    lines.append(f"source: `{s.source}` · {'dry-run' if s.effective_dry_run else 'applies to Discord'} · "
                 f"detector: {s.face_detector_url or 'in-process ' + s.detector_backend} · "
                 f"vision: {s.vision_model + ' via llama-swap' if s.llama_swap_url else 'heuristic (no vision model)'}")
    return clip("\n".join(lines))


async def pfp_status(ctx: CommandContext, state: BotState) -> str | None:
    if not await _admin_or_refuse(ctx, state):
        return None
    await ctx.defer()
    latest = await asyncio.to_thread(state.runner.pipeline.history.list, limit=1)
    text = status_text(state, latest[0] if latest else None)
    await ctx.edit(text)
    return text
