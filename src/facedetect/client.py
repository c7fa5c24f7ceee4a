"""HTTP client of the detector API, sync and async, for mikubot and anyone else.

Failures surface as ``FaceDetectClientError`` (a ``FaceDetectError``) carrying the HTTP status and the
API's own message, so callers handle "bad image" (4xx), "busy" (503 + ``retry_after``) and "detector
down" (``status_code`` 503, ``unreachable=True``) without parsing httpx exceptions.

A busy detector (503 or 429 with ``Retry-After``, its bounded queue is full) is waited for and asked again
under the repository's one retry policy (``httpretry.BUSY``: twice more, waits up to 10 s);
an unreachable one is reported at once so the caller can fall back to in-process detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from facedetect.errors import FaceDetectError
from facedetect.types import Detection, DetectionResult, ImageInfo
from httpretry import BUSY, RetryPolicy, retry_after_of, tls_context

DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)  # a big CG on CPU takes seconds; connecting should not


class FaceDetectClientError(FaceDetectError):
    def __init__(self, message: str, *, status_code: int, retry_after: float | None = None,
                 unreachable: bool = False):
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after
        self.unreachable = unreachable


@dataclass
class RemoteDetection:
    """The full /detect answer: the result plus the paths the server wrote (on the server's disk)."""

    result: DetectionResult
    annotated_image: str | None
    json_file: str | None
    raw: dict[str, Any]


def result_from_json(body: dict[str, Any]) -> DetectionResult:
    image = body.get("image") or {}
    return DetectionResult(
        detections=[Detection.from_json(d) for d in body.get("detections", [])],
        image=ImageInfo(width=int(image.get("width", 0)), height=int(image.get("height", 0)),
                        format=image.get("format"), mode=image.get("mode")),
        backend=str(body.get("backend", "unknown")),
        keypoint_names=list(body.get("keypoint_names", [])),
        timings_ms={k: float(v) for k, v in (body.get("timings_ms") or {}).items()},
    )


def _params(min_confidence: float | None, max_faces: int | None, annotate: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"annotate": "true" if annotate else "false"}
    if min_confidence is not None:
        params["min_confidence"] = min_confidence
    if max_faces is not None:
        params["max_faces"] = max_faces
    return params


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text[:500]
    raise FaceDetectClientError(
        f"face detector answered {response.status_code}: {detail}",
        status_code=response.status_code,
        retry_after=retry_after_of(response),
    )


def _unreachable(base_url: str, exc: httpx.HTTPError) -> FaceDetectClientError:
    return FaceDetectClientError(
        f"face detector at {base_url} is unreachable ({type(exc).__name__}: {exc}); is `facedetect serve` running?",
        status_code=503, unreachable=True,
    )


class FaceDetectClient:
    """``FaceDetectClient("http://127.0.0.1:6078").detect(data, "art.png") -> DetectionResult``."""

    def __init__(self, base_url: str, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, retry: RetryPolicy = BUSY):
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  verify=tls_context())

    def __enter__(self) -> "FaceDetectClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.retry.send_sync(lambda: self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _check(response)

    def detect_full(self, data: bytes, filename: str = "image", *, min_confidence: float | None = None,
                    max_faces: int | None = None, annotate: bool = True) -> RemoteDetection:
        body = self._request("POST", "/detect", files={"file": (filename, data)},
                             params=_params(min_confidence, max_faces, annotate))
        return RemoteDetection(result_from_json(body), body.get("annotated_image"), body.get("json_file"), body)

    def detect(self, data: bytes, filename: str = "image", *, min_confidence: float | None = None,
               max_faces: int | None = None, annotate: bool = True) -> DetectionResult:
        return self.detect_full(data, filename, min_confidence=min_confidence, max_faces=max_faces,
                                annotate=annotate).result

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def load(self) -> dict[str, Any]:
        return self._request("POST", "/load")

    def unload(self) -> dict[str, Any]:
        return self._request("POST", "/unload")


class AsyncFaceDetectClient:
    """The same calls, awaitable: ``await AsyncFaceDetectClient(url).detect(data, "art.png")``."""

    def __init__(self, base_url: str, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None, retry: RetryPolicy = BUSY,
                 api_key: str | None = None):
        # api_key: sent as a bearer token, for a detector reached through llama-swap (`apiKeys`).
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport,
                                       headers=headers, verify=tls_context())

    async def __aenter__(self) -> "AsyncFaceDetectClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self.retry.send(lambda: self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _check(response)

    async def detect_full(self, data: bytes, filename: str = "image", *, min_confidence: float | None = None,
                          max_faces: int | None = None, annotate: bool = True) -> RemoteDetection:
        body = await self._request("POST", "/detect", files={"file": (filename, data)},
                                   params=_params(min_confidence, max_faces, annotate))
        return RemoteDetection(result_from_json(body), body.get("annotated_image"), body.get("json_file"), body)

    async def detect(self, data: bytes, filename: str = "image", *, min_confidence: float | None = None,
                     max_faces: int | None = None, annotate: bool = True) -> DetectionResult:
        return (await self.detect_full(data, filename, min_confidence=min_confidence, max_faces=max_faces,
                                       annotate=annotate)).result

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/health")

    async def load(self) -> dict[str, Any]:
        return await self._request("POST", "/load")

    async def unload(self) -> dict[str, Any]:
        return await self._request("POST", "/unload")
