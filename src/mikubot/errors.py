"""The one base of mikubot's own exceptions: ``except MikubotError`` catches every error mikubot raises on
purpose (a failed stage, a refused change, a full disk), and nothing foreign."""


class MikubotError(Exception):
    """An error mikubot raises on purpose, with a message a person can act on."""
