"""The root of mikubot's exceptions: every error mikubot raises on purpose derives from ``MikubotError``.

A caller that wants "anything mikubot refused, with a message a person can act on" catches this one class;
each subclass keeps the built-in base its callers rely on as well (``StorageError`` is an ``OSError``,
``ConfigFileError`` a ``ValueError``). A foreign error is mapped once, where it is caught, with
``raise ... from exc`` so the cause stays on the traceback.
"""

from __future__ import annotations


class MikubotError(Exception):
    """Base class of every mikubot error."""
