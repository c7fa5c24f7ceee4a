"""Reading one uploaded file from a multipart body, with a hard byte cap *while it streams in*.

The detector's ``POST /detect`` and the panel's ``POST /profile-picture/upload`` both take an image
this way, so both use this one reader: a missing or lying ``Content-Length`` cannot make either buffer
more than the cap, and both answer the same 400/413/415 with the same words.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from facedetect.errors import FaceDetectError, ImageTooLarge

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file itself
HOW = "send the image as multipart/form-data in the field 'file', e.g. curl -F file=@picture.png"


def body_cap(max_bytes: int) -> int:
    """The most bytes a body carrying a file of ``max_bytes`` may have."""
    return max_bytes + MULTIPART_OVERHEAD


async def read_file_field(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and file name of the multipart field ``file``, reading at most ``body_cap(max_bytes)``.

    Raises ``FaceDetectError`` with 415 (not multipart), 413 (over the cap) or 400 (unparsable, no file).
    """
    if "multipart/form-data" not in request.headers.get("content-type", "").lower():
        raise FaceDetectError(f"expected a multipart/form-data upload; {HOW}", status_code=415)
    limit = body_cap(max_bytes)
    too_large = ImageTooLarge(f"the upload is larger than the limit of {max_bytes / 1e6:.1f} MB")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large  # refused before a byte of the body is read

    async def limited() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise too_large
            yield chunk

    try:
        form = await MultiPartParser(request.headers, limited(), max_files=1, max_fields=16).parse()
    except ClientDisconnect as exc:
        # The client went away mid-upload (or the server let a too-slow one go): nobody reads the answer,
        # and it is no bug to log.
        raise FaceDetectError("the connection closed before the upload was complete") from exc
    except MultiPartException as exc:
        # Starlette says only "Invalid multipart data." for every parser failure; the parser's own reason
        # (e.g. "Maximum header size exceeded" for a file name of several KB) is what the sender can act on.
        why = exc.message.rstrip(".")
        if exc.__cause__ is not None and str(exc.__cause__):
            why += f": {exc.__cause__}"
        raise FaceDetectError(f"the multipart body cannot be parsed ({why}); {HOW}") from exc
    try:
        upload = form.get("file")
        if upload is None:
            sent = ", ".join(repr(k) for k in form) or "none"
            raise FaceDetectError(f"no field 'file' in the upload (fields sent: {sent}); {HOW}")
        if not isinstance(upload, UploadFile):
            raise FaceDetectError(f"the field 'file' holds text, not a file; {HOW}")
        data = await upload.read(max_bytes + 1)
        if not data:
            raise FaceDetectError("the uploaded file is empty")
        if len(data) > max_bytes:
            raise too_large
        return data, upload.filename
    finally:
        await form.close()
