"""Errors a person can act on. Each carries the HTTP status the API answers with.

``FaceDetectError`` is the root of every error facedetect raises on purpose (the backends' model errors
included); foreign errors are mapped once, where they are caught, with ``raise ... from exc``."""


class FaceDetectError(Exception):
    """Base class of every facedetect error."""

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadImage(FaceDetectError):
    """The upload is not an image we can read (empty, truncated, unknown format)."""

    status_code = 400


class ImageTooLarge(FaceDetectError):
    """Over the byte or pixel limit (oversize files, decompression bombs)."""

    status_code = 413


class UnsupportedImage(FaceDetectError):
    status_code = 415


class BackendUnavailable(FaceDetectError):
    """A backend cannot be used as configured (missing weights file, missing package)."""

    status_code = 503
