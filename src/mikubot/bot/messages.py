"""The text of the bot's answers: live stage progress, the result of a change, history and status.

Discord messages are limited to 2000 characters; every renderer here stays well below that.
"""

from __future__ import annotations

import re
from typing import Any

from discord.utils import escape_markdown, escape_mentions

from mikubot.events import STAGES, DryRunSkip, Failure, Fallback, ProgressEvent, RecordDone, Skipped, StageDone
from mikubot.history import HistoryRow
from mikubot.record import ChangeRecord
from mikubot.web.views import safe_link

MAX_CHARS = 1900
ICON = {"start": "⏳", "progress": "⏳", "done": "✅", "skip": "⏭️", "fallback": "↪️", "fail": "❌"}
STATUS_ICON = {"applied": "✅", "dry-run": "📝", "failed": "❌", "running": "⏳"}


def clip(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain(text: Any, limit: int = 500) -> str:
    """Untrusted text (an artist's name, the vision model's description, a file name) as inert Discord text:
    on one line (a newline would end a ``>`` quote), Markdown and masked links escaped, no mass mentions."""
    one_line = re.sub(r"\s+", " ", str(text)).strip()[:limit]
    return escape_mentions(escape_markdown(one_line, ignore_links=False))


def link(url: Any) -> str | None:
    """An http(s) URL wrapped in ``<>`` (no embed), or None: nothing in it can close the brackets."""
    safe = safe_link(str(url)) if url else None
    if safe is None or any(c in safe for c in "<> \t\n"):
        return None
    return f"<{safe}>"


class StageProgress:
    """The latest status of each stage of one change, rendered as one line per stage reached."""

    def __init__(self, change_id: int | None, kind: str = "change", stages: tuple[str, ...] = STAGES) -> None:
        self.change_id = change_id
        self.stages = stages  # in the order the change runs them (``AvatarPipeline.stage_order``)
        self.kind = kind
        self.status: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def add(self, ev: ProgressEvent) -> bool:
        """Take an event; True when the rendered text changes (worth an edit)."""
        if self.change_id is not None and ev.change_id != self.change_id:
            return False
        before = (dict(self.status), dict(self.notes))
        # "progress" keeps the stage running; the others are its latest state.
        self.status[ev.stage] = ev.status
        note = plain(_note(ev), 300)  # reasons and errors may quote remote text
        if note:
            self.notes[ev.stage] = note
        return (self.status, self.notes) != before

    def render(self) -> str:
        head = f"**Avatar {self.kind} #{self.change_id}**" if self.change_id is not None else f"**Avatar {self.kind}**"
        lines = [head]
        for stage in self.stages:
            if stage in self.status:
                note = f" — {self.notes[stage]}" if stage in self.notes else ""
                lines.append(f"{ICON.get(self.status[stage], '•')} {stage}{note}")
        return clip("\n".join(lines))


def _note(ev: ProgressEvent) -> str:
    match ev.detail:
        case Failure(error=error):
            return error[:300]
        case Fallback(to=to, reason=reason):
            return f"fell back to {to}" + (f" ({reason[:150]})" if reason else "")
        case Skipped(reason=reason) | DryRunSkip(reason=str() as reason):
            return reason[:150]
        case StageDone(ms=float() as ms, summary=summary):
            return (f"{summary[:200]}, " if summary else "") + f"{ms / 1000:.1f} s"
        case RecordDone(ms=float() as ms):
            return f"{ms / 1000:.1f} s"
    return ""


def credit(record: ChangeRecord) -> str:
    src = record.source
    parts = []
    if src.artist:
        parts.append(f"art by **{plain(src.artist, 100)}**")
    page = link(src.page_url)
    if page:
        parts.append(page)
    elif src.name:
        parts.append(f"from {plain(src.name, 40)}" + (f" ({plain(src.filename, 120)})" if src.filename else ""))
    return " · ".join(parts)


def scope_text(record: ChangeRecord) -> str:
    """Which profile a change is for: one server's own look, or the bot's profile everywhere."""
    guild = record.guild_id
    return f"this server's look only (server {guild}; the global profile is unchanged)" if guild else "global profile"


def result_text(record: ChangeRecord) -> str:
    rid = record.id
    if record.status == "failed":
        stage = record.failed_stage or "?"
        kept = f"\nThe avatar is kept: `/pfp restore {rid}` applies it later." if record.avatar_path else ""
        return clip(f"❌ Avatar change #{rid} failed at **{stage}**: {plain(record.error or 'unknown error', 1200)}{kept}")
    head = "✅ New avatar applied" if record.status == "applied" else "📝 Dry run: avatar made but not applied"
    lines = [f"{head} (#{rid}) — {scope_text(record)}."]
    if record.description:
        lines.append(f"> {plain(record.description)}")
    c = credit(record)
    if c:
        lines.append(c)
    if record.crop_method:
        fallbacks = ", ".join(record.fallbacks)
        lines.append(f"crop: {record.crop_method}" + (f" (fallbacks: {fallbacks})" if fallbacks else ""))
    if record.timings_ms:
        lines.append(f"took {sum(record.timings_ms.values()) / 1000:.1f} s")
    return clip("\n".join(lines))


def announcement_text(record: ChangeRecord, character: str) -> str:
    lines = [f"✨ {plain(character, 100)} has a new look!"]
    if record.description:
        lines.append(f"> {plain(record.description)}")
    c = credit(record)
    if c:
        lines.append(c)
    return clip("\n".join(lines))


def history_text(rows: list[HistoryRow]) -> str:
    if not rows:
        return "No avatar changes yet: `/pfp change` makes the first one."
    lines = ["**Recent avatar changes**"]
    for r in rows:
        when = (r.finished_at or r.started_at)[:16].replace("T", " ")
        who = f" · {plain(r.artist, 100)}" if r.artist else ""
        page = f" · {link(r.page_url)}" if link(r.page_url) else ""
        restored = f" · restore of #{r.restored_from}" if r.restored_from else ""
        server = f" · server {r.guild_id}" if r.guild_id else ""
        lines.append(f"{STATUS_ICON.get(r.status, '•')} **#{r.id}** {r.status} {when}{server}{who}{restored}{page}")
    return clip("\n".join(lines))
