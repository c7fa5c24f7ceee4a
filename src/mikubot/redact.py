"""Credentials inside URLs never leave the process: one place cuts ``user:password@`` out of text.

``MIKU_LLAMA_SWAP_URL=http://user:pw@host:8090`` is a legitimate way to reach a proxy that asks for
basic auth, but the URL is also quoted in status pages, change records, progress events, the history
database, ``mikubot config show`` and ``mikubot doctor`` — and in the error messages of every library
that failed to reach it. Rather than trusting each of those places to remember, everything shown or
stored passes through ``scrub``, which rewrites any ``scheme://userinfo@`` in any string it finds.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://  then the user info: anything up to the last "@" before the host ends (/, ?, #, space, quote).
USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#\"'<>]*@")


def strip_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed."""
    return USERINFO.sub(r"\1", text) if "@" in text else text


def scrub(value: Any) -> Any:
    """``value`` (strings, and dicts/lists/tuples of them, as deep as they go) with URL credentials cut."""
    if isinstance(value, str):
        return strip_userinfo(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}  # keys too: a status keyed by server URL
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)
    return value
