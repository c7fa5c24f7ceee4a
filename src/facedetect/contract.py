"""The error answers both HTTP APIs (the detector and the panel) declare in their OpenAPI documents.

Every 4xx/5xx a client can meet is a JSON ``{"detail": ...}``: a sentence for the errors we raise, the
list FastAPI writes for a panel request that fails validation. Declaring them (instead of leaving the
spec to FastAPI's default 422 alone) lets schemathesis hold both services to what they answer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

DESCRIPTIONS = {
    400: "bad request: not a multipart body, no file, an unreadable image, or a Host this service does not answer",
    401: "the token is missing or wrong",
    403: "refused: a cross-site request, or a missing/wrong CSRF token",
    404: "no such thing",
    409: "a change is running; running_change_id says which",
    413: "the body or the image is over the limit",
    415: "not a format this service reads",
    422: "a parameter is out of range or of the wrong type",
    429: "too many wrong tokens (or open event streams) from this client: wait Retry-After seconds",
    503: "busy or not ready: retry after Retry-After seconds",
    507: "the data directory's disk is full: free space there (the detail names it)",
}


class ErrorBody(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="what went wrong and what to do")


class BusyBody(ErrorBody):
    running_change_id: int | None = Field(description="the change that is running")
    kind: str = Field(description="change or restore")
    events_url: str | None = Field(description="its Server-Sent Events stream")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer ``codes``."""
    return {code: {"model": BusyBody if code == 409 else ErrorBody, "description": DESCRIPTIONS[code]}
            for code in codes}


def multipart_file_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a multipart body with one required binary field ``file``."""
    return {"requestBody": {"required": True, "description": description, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}
