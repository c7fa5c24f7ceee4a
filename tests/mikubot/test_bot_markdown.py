"""Announcements and replies quote text nobody here wrote (an artist's name, the vision model's
description, a booru's page URL): it reaches Discord as inert text — no masked links, no formatting,
no breaking out of the quote, no mass mentions."""

from __future__ import annotations

import re

from mikubot.bot.messages import announcement_text, history_text, result_text
from mikubot.history import HistoryRow
from mikubot.record import ChangeRecord

EVIL_DESCRIPTION = "Miku waves.\n**free nitro** [click here](https://evil.example/x)\n> @everyone `code` ||spoiler||"
EVIL_ARTIST = "ar__tist** [me](https://evil.example)"
UNESCAPED_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\(")


def record(**source: object) -> ChangeRecord:
    return ChangeRecord.model_validate({
        "id": 7, "status": "applied", "dry_run": False, "description": EVIL_DESCRIPTION,
        "source": {"spec": "danbooru", "artist": EVIL_ARTIST, "page_url": "https://danbooru.example/posts/1", **source}})


def test_the_announcement_keeps_untrusted_text_inert() -> None:
    text = announcement_text(record(), "Hatsune Miku")
    lines = text.split("\n")
    assert lines[1].startswith("> Miku waves.") and "click here" in lines[1]  # the description: one quoted line
    assert len(lines) == 3 and lines[2].startswith("art by **")
    assert not UNESCAPED_LINK.search(text)  # no masked link anyone can click
    assert "@everyone" not in text  # escaped: no mention
    assert "\\*\\*free nitro\\*\\*" in text and "\\`code\\`" in text and "\\|\\|spoiler\\|\\|" in text
    assert "<https://danbooru.example/posts/1>" in text


def test_a_page_url_cannot_close_its_brackets() -> None:
    text = announcement_text(record(page_url="https://x.example/a> [evil](https://evil.example)"), "Miku")
    assert not UNESCAPED_LINK.search(text) and "x.example" not in text  # such a URL is left out
    assert "javascript" not in announcement_text(record(page_url="javascript:alert(1)"), "Miku")


def test_result_and_history_text_escape_too() -> None:
    assert not UNESCAPED_LINK.search(result_text(record()))
    failed = result_text(ChangeRecord(id=3, status="failed", dry_run=False, source={"spec": "danbooru"},
                                      failed_stage="search", error="bad [x](https://e.example)"))
    assert not UNESCAPED_LINK.search(failed)
    rows = [HistoryRow(id=1, status="applied", started_at="2026-01-01T00:00:00+00:00", source_spec="danbooru",
                       dry_run=False, artist=EVIL_ARTIST, page_url="https://b.example/1")]
    assert not UNESCAPED_LINK.search(history_text(rows))
