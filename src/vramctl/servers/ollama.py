"""Ollama: `GET /api/ps` lists loaded models with their VRAM (`size_vram`, bytes); a generate request with
`keep_alive: 0` and no prompt unloads a model (the documented way; Ollama answers `done_reason: "unload"`)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from ..errors import ServerError
from ._http import call, short

NAME = "ollama"


@dataclass
class LoadedModel:
    name: str
    size_vram_mib: float
    expires_at: str | None = None


def same_model(a: str, b: str) -> bool:
    """Ollama names default to the `latest` tag: `llava` and `llava:latest` are one model."""
    def norm(x: str) -> str:
        return x if ":" in x else f"{x}:latest"
    return norm(a) == norm(b)


class OllamaClient:
    def __init__(self, url: str, http: httpx.AsyncClient, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = http
        self.timeout_s = timeout_s

    async def ps(self) -> list[LoadedModel]:
        r = await call(self._http, NAME, self.url, "GET", "/api/ps", timeout=5.0)
        if r.status_code != 200:
            raise ServerError(NAME, self.url, f"/api/ps answered {r.status_code}: {short(r)}", r.status_code)
        return [LoadedModel(name=m.get("name") or m.get("model", "?"), size_vram_mib=m.get("size_vram", 0) / 2**20,
                            expires_at=m.get("expires_at")) for m in r.json().get("models") or []]

    async def unload(self, model: str) -> str:
        r = await call(self._http, NAME, self.url, "POST", "/api/generate", json={"model": model, "keep_alive": 0},
                       timeout=self.timeout_s)
        if r.status_code != 200:
            raise ServerError(NAME, self.url, f"unload of {model!r} answered {r.status_code}: {short(r)}",
                              r.status_code)
        return "keep_alive=0"
