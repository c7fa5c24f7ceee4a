"""Errors with messages a person can act on: each names the consumer, the server and what still holds VRAM."""

from __future__ import annotations


class VramError(RuntimeError):
    """Base class of every vramctl error (a probe's ``ProbeError`` included); foreign errors are mapped once,
    where they are caught, with ``raise ... from exc``."""


class UnknownConsumer(VramError, KeyError):
    """A reservation named a consumer that the config does not declare."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown consumer"


class ServerError(VramError):
    """A model server (llama-swap, Ollama, the face detector) refused or could not be reached."""

    def __init__(self, server: str, url: str, message: str, status_code: int | None = None) -> None:
        self.server, self.url, self.status_code = server, url, status_code
        super().__init__(f"{server} at {url}: {message}")


class UnloadUnsupported(ServerError):
    """The server has no endpoint that unloads a model (a very old llama-swap)."""


class ReservationTimeout(VramError):
    """The memory did not become free before `timeout_s`; the message says who still holds what."""


class NotEnoughVram(VramError):
    """Nothing left to unload and nothing being released, yet the card still lacks the memory."""


class LeaseError(VramError):
    """The host lease (another process's hold on the card's room) was not released in time, or its file
    cannot be opened."""
