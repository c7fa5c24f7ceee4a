"""llama-swap's management API, as its source (proxy/proxymanager.go, proxymanager_api.go) defines it:

- `GET /health` → `OK`;  `GET /v1/models` → OpenAI model list;
- `GET /running` → `{"running": [{"model", "state", "cmd", "proxy", "ttl", ...}]}`;
- `POST /api/models/unload/{id}` → `OK` once the process has stopped (404 "Model not found" for an unknown id;
  older versions lack the route and answer gin's plain 404);
- `GET /unload` → `OK`: stops every model (the only unload in older versions).
API keys (`apiKeys` in llama-swap's config) travel as `Authorization: Bearer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from ..errors import ServerError, UnloadUnsupported
from ._http import call, short

NAME = "llama-swap"


@dataclass
class RunningModel:
    model: str
    state: str
    ttl: int | None = None


class LlamaSwapClient:
    def __init__(self, url: str, http: httpx.AsyncClient, api_key: SecretStr | str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = http
        self.timeout_s = timeout_s
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await call(self._http, NAME, self.url, method, path, headers=self._headers,
                       timeout=kw.pop("timeout", self.timeout_s), **kw)
        if r.status_code == 401:
            raise ServerError(NAME, self.url, "rejected the API key (401); set MIKU_VRAM_LLAMA_SWAP_API_KEY", 401)
        return r

    async def health(self) -> bool:
        r = await self._call("GET", "/health", timeout=5.0)
        return r.status_code == 200

    async def models(self) -> list[str]:
        r = await self._call("GET", "/v1/models")
        if r.status_code != 200:
            raise ServerError(NAME, self.url, f"/v1/models answered {r.status_code}: {short(r)}", r.status_code)
        return [m["id"] for m in r.json().get("data", [])]

    async def running(self) -> list[RunningModel]:
        r = await self._call("GET", "/running", timeout=5.0)
        if r.status_code != 200:
            raise ServerError(NAME, self.url, f"/running answered {r.status_code}: {short(r)}", r.status_code)
        try:
            items = r.json().get("running", [])
        except ValueError as exc:
            raise ServerError(NAME, self.url, f"/running is not JSON: {short(r)}") from exc
        return [RunningModel(model=i["model"], state=str(i.get("state", "ready")), ttl=i.get("ttl")) for i in items]

    async def unload(self, model: str) -> str:
        """Stop one model; returns once llama-swap reports it stopped. Returns the endpoint used."""
        r = await self._call("POST", f"/api/models/unload/{quote(model, safe='/')}")
        if r.status_code == 200:
            return "api/models/unload"
        if r.status_code == 404 and "model not found" in r.text.lower():
            raise ServerError(NAME, self.url, f"does not know model {model!r} (check the consumer's `model`)", 404)
        if r.status_code in (404, 405):
            raise UnloadUnsupported(NAME, self.url, "has no /api/models/unload/{id} (older llama-swap)", r.status_code)
        raise ServerError(NAME, self.url, f"unload of {model!r} answered {r.status_code}: {short(r)}", r.status_code)

    async def unload_all(self) -> str:
        """`GET /unload`: stops every model llama-swap runs."""
        r = await self._call("GET", "/unload")
        if r.status_code == 200:
            return "unload"
        if r.status_code in (404, 405):
            raise UnloadUnsupported(NAME, self.url, "has no /unload endpoint", r.status_code)
        raise ServerError(NAME, self.url, f"/unload answered {r.status_code}: {short(r)}", r.status_code)

    async def swap_to(self, model: str) -> None:
        """The swap-to-text method, kept only as a last resort: ask for another model with `max_tokens: 1`, which makes
        llama-swap stop the current one — and load `model`, memory it does not need."""
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        r = await self._call("POST", "/v1/chat/completions", json=body, timeout=max(self.timeout_s, 120.0))
        if r.status_code != 200:
            raise ServerError(NAME, self.url, f"swap to {model!r} answered {r.status_code}: {short(r)}",
                              r.status_code)
