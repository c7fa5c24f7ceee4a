"""The text of the bot's answers: live stage progress, the result of a change, history and status.

Discord messages are limited to 2000 characters; every renderer here stays well below that.
"""

from __future__ import annotations

from typing import Any

from mikubot.events import STAGES, ProgressEvent

MAX_CHARS = 1900
ICON = {"start": "⏳", "progress": "⏳", "done": "✅", "skip": "⏭️", "fallback": "↪️", "fail": "❌"}
STATUS_ICON = {"applied": "✅", "dry-run": "📝", "failed": "❌", "running": "⏳"}


def clip(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StageProgress:
    """The latest status of each stage of one change, rendered as one line per stage reached."""

    def __init__(self, change_id: int | None, kind: str = "change") -> None:
        self.change_id = change_id
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
        note = _note(ev)
        if note:
            self.notes[ev.stage] = note
        return (self.status, self.notes) != before

    def render(self) -> str:
        head = f"**Avatar {self.kind} #{self.change_id}**" if self.change_id is not None else f"**Avatar {self.kind}**"
        lines = [head]
        for stage in STAGES:
            if stage in self.status:
                note = f" — {self.notes[stage]}" if stage in self.notes else ""
                lines.append(f"{ICON.get(self.status[stage], '•')} {stage}{note}")
        return clip("\n".join(lines))


def _note(ev: ProgressEvent) -> str:
    d = ev.detail
    if ev.status == "fail":
        return str(d.get("error", ""))[:300]
    if ev.status == "fallback":
        return f"fell back to {d.get('to', '?')}" + (f" ({str(d['reason'])[:150]})" if d.get("reason") else "")
    if ev.status == "skip":
        return str(d.get("reason", ""))[:150]
    if ev.status == "done" and "ms" in d:
        return f"{float(d['ms']) / 1000:.1f} s"
    return ""


def credit(record: dict[str, Any]) -> str:
    src = record.get("source") or {}
    parts = []
    if src.get("artist"):
        parts.append(f"art by **{src['artist']}**")
    if src.get("page_url"):
        parts.append(f"<{src['page_url']}>")
    elif src.get("name"):
        parts.append(f"from {src['name']}" + (f" ({src['filename']})" if src.get("filename") else ""))
    return " · ".join(parts)


def result_text(record: dict[str, Any]) -> str:
    status = record.get("status", "failed")
    rid = record.get("id")
    if status == "failed":
        stage = record.get("failed_stage") or "?"
        kept = f"\nThe avatar is kept: `/pfp restore {rid}` applies it later." if record.get("avatar_path") else ""
        return clip(f"❌ Avatar change #{rid} failed at **{stage}**: {record.get('error') or 'unknown error'}{kept}")
    head = "✅ New avatar applied" if status == "applied" else "📝 Dry run: avatar made but not applied"
    lines = [f"{head} (#{rid})."]
    if record.get("description"):
        lines.append(f"> {record['description']}")
    c = credit(record)
    if c:
        lines.append(c)
    method = record.get("crop_method")
    if method:
        fallbacks = ", ".join(str(f) for f in record.get("fallbacks") or [])
        lines.append(f"crop: {method}" + (f" (fallbacks: {fallbacks})" if fallbacks else ""))
    timings = record.get("timings_ms") or {}
    if timings:
        lines.append(f"took {sum(float(v) for v in timings.values()) / 1000:.1f} s")
    return clip("\n".join(lines))


def announcement_text(record: dict[str, Any], character: str) -> str:
    lines = [f"✨ {character} has a new look!"]
    if record.get("description"):
        lines.append(f"> {record['description']}")
    c = credit(record)
    if c:
        lines.append(c)
    return clip("\n".join(lines))


def history_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No avatar changes yet: `/pfp change` makes the first one."
    lines = ["**Recent avatar changes**"]
    for r in rows:
        when = (r.get("finished_at") or r.get("started_at") or "")[:16].replace("T", " ")
        who = f" · {r['artist']}" if r.get("artist") else ""
        link = f" · <{r['page_url']}>" if r.get("page_url") else ""
        restored = f" · restore of #{r['restored_from']}" if r.get("restored_from") else ""
        lines.append(f"{STATUS_ICON.get(r.get('status', ''), '•')} **#{r['id']}** {r.get('status')} {when}{who}{restored}{link}")
    return clip("\n".join(lines))
