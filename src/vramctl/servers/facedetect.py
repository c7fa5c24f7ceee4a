"""The face detector service's own pause/resume: `POST /unload` releases the model and its VRAM,
`POST /load` takes it back, `GET /health` → `{"status": "healthy", "detector_loaded": bool, "uses_gpu": bool, ...}`.

`uses_gpu` tells whether the detector needs VRAM at all (a CPU backend such as animeface needs none);
services older than that field do not send it, and then only the configured figure is known."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import SecretStr

from ..errors import ServerError
from ._http import call, json_object, short

NAME = "face detector"


class FaceDetectControl:
    def __init__(self, url: str, http: httpx.AsyncClient, timeout_s: float = 30.0,
                 token: SecretStr | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = http
        self.timeout_s = timeout_s
        self._token = token  # FACEDETECT_TOKEN: the service then refuses /load and /unload without it

    async def health(self) -> dict[str, Any]:
        r = await call(self._http, NAME, self.url, "GET", "/health", timeout=5.0)
        if r.status_code != 200:
            raise ServerError(NAME, self.url, f"/health answered {r.status_code}: {short(r)}", r.status_code)
        return json_object(NAME, self.url, "/health", r)

    async def loaded(self) -> bool:
        return bool((await self.health()).get("detector_loaded"))

    async def uses_gpu(self) -> bool | None:
        """Whether the detector runs on the GPU; None when the service does not say (an older version)."""
        return reported_uses_gpu(await self.health())

    async def _post(self, path: str) -> None:
        secret = self._token.get_secret_value().strip() if self._token is not None else ""
        headers = {"Authorization": f"Bearer {secret}"} if secret else None
        r = await call(self._http, NAME, self.url, "POST", path, timeout=self.timeout_s, headers=headers)
        if r.status_code != 200:
            raise ServerError(NAME, self.url, f"{path} answered {r.status_code}: {short(r)}", r.status_code)

    async def unload(self) -> str:
        await self._post("/unload")
        return "unload"

    async def load(self) -> None:
        await self._post("/load")


def reported_uses_gpu(health: dict[str, Any]) -> bool | None:
    """`uses_gpu` from a /health body: a JSON boolean, else None (missing or malformed: trust nothing)."""
    value = health.get("uses_gpu")
    return value if isinstance(value, bool) else None
