"""llama-swap's management API, as the release llama-swap/Dockerfile pins (v250) defines it
(internal/server/server.go, api.go, apigroup.go, internal/swaputil/http.go):

- `GET /health` → `OK`;  `GET /v1/models` → OpenAI model list; each local model's record carries
  `meta.llamaswap.aliases`, an alias listed on its own (`includeAliasesInList`) `meta.llamaswap.modelID`,
  and a peer's model (`peerID/model`, served by another llama-swap) `meta.llamaswap.type == "peer"`;
- `GET /running` → `{"running": [{"model", "state", "cmd", "proxy", "ttl", ...}]}`: every local model that
  is not stopped, by its real id (never an alias). States (internal/process/process.go): `starting` (taking
  memory), `ready`, `stopping` (memory on its way back), `shutdown`;
- `POST /api/models/unload/{id}` → `OK` once the process has stopped (the id may be an alias). A 404 in
  llama-swap's own error format means the route exists: "model not found" (not a local model: unknown, or a
  peer's) or "no local server found for requested model". Only a 404/405 *not* in that format (Go's or gin's
  "404 page not found") means an older llama-swap without the route;
- `GET /unload` → `OK`: stops every local model (the only unload in older versions).

Errors are `{"src": "llama-swap", "error": "<msg>"}` in v250, `{"src": "llama-swap", "error": {"message", ...}}`
after it, `llama-swap: <msg>` as text; `error_message` reads all three.
API keys (`apiKeys` in llama-swap's config) travel as `Authorization: Bearer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from ..errors import ServerError, UnloadUnsupported
from ._http import call, json_object, short

NAME = "llama-swap"
HOLDING = frozenset({"starting", "ready"})  # the process holds memory or is taking it
RELEASING = frozenset({"stopping", "shutdown"})  # on its way out: its memory is not free until measured free


class RemoteModel(ServerError):
    """The model is served by a peer (another machine's llama-swap): it holds no VRAM on this card."""


@dataclass
class RunningModel:
    model: str
    state: str
    ttl: int | None = None

    @property
    def holds_memory(self) -> bool:
        return self.state in HOLDING

    @property
    def releasing(self) -> bool:
        return self.state in RELEASING


@dataclass
class Catalog:
    """The names llama-swap answers to, from `/v1/models`."""

    real: dict[str, str] = field(default_factory=dict)  # model id or alias → model id
    peers: dict[str, str] = field(default_factory=dict)  # a peer's model (`peer/model`, or unique `model`) → peer id

    def resolve(self, name: str) -> str:
        """The id `/running` uses for `name` (an alias becomes its model's id; an unknown name stays as it is)."""
        return self.real.get(name, name)

    def peer(self, name: str) -> str | None:
        return None if name in self.real else self.peers.get(name)

    def knows(self, name: str) -> bool:
        return name in self.real or name in self.peers

    @classmethod
    def from_models(cls, data: list[dict[str, Any]]) -> Catalog:
        cat = cls()
        unqualified: dict[str, set[str]] = {}
        for rec in data:
            rid = str(rec.get("id", ""))
            meta = ((rec.get("meta") or {}).get("llamaswap") or {}) if isinstance(rec.get("meta"), dict) else {}
            kind = meta.get("type", "model")  # older versions send no meta: every id is a model
            if kind == "model":
                cat.real[rid] = rid
                cat.real.update({str(a): rid for a in meta.get("aliases") or []})
            elif kind == "alias" and meta.get("modelID"):
                cat.real[rid] = str(meta["modelID"])
            elif kind == "peer" and meta.get("peerID"):
                pid = str(meta["peerID"])
                cat.peers[rid] = pid
                unqualified.setdefault(rid.removeprefix(f"{pid}/"), set()).add(pid)
        cat.peers.update({m: next(iter(p)) for m, p in unqualified.items() if len(p) == 1 and m not in cat.peers})
        return cat


def error_message(r: httpx.Response) -> str | None:
    """llama-swap's own error text in `r`, or None when the body is not llama-swap's (a router's plain 404)."""
    text = r.text.strip()
    if text.startswith("llama-swap: "):
        return text.removeprefix("llama-swap: ")
    try:
        body = r.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("src") != "llama-swap":
        return None
    err = body.get("error")
    if isinstance(err, dict):
        err = err.get("message")
    return str(err) if err is not None else ""


class LlamaSwapClient:
    def __init__(self, url: str, http: httpx.AsyncClient, api_key: SecretStr | str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = http
        self.timeout_s = timeout_s
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._headers = {"Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await call(self._http, NAME, self.url, method, path, headers=self._headers,
                       timeout=kw.pop("timeout", self.timeout_s), **kw)
        if r.status_code == 401:
            raise ServerError(NAME, self.url, "rejected the API key (401); set MIKU_VRAM_LLAMA_SWAP_API_KEY", 401)
        return r

    def _failed(self, what: str, r: httpx.Response) -> ServerError:
        return ServerError(NAME, self.url, f"{what} answered {r.status_code}: {error_message(r) or short(r)}",
                           r.status_code)

    async def _json(self, path: str, timeout: float | None = None) -> dict[str, Any]:
        r = await self._call("GET", path, timeout=timeout or self.timeout_s)
        if r.status_code != 200:
            raise self._failed(path, r)
        return json_object(NAME, self.url, path, r)

    async def health(self) -> bool:
        r = await self._call("GET", "/health", timeout=5.0)
        return r.status_code == 200

    async def models(self) -> list[str]:
        """The listed model ids (aliases and peers' models are in `catalog()`)."""
        return [name for name, real in (await self.catalog()).real.items() if name == real]

    async def catalog(self) -> Catalog:
        return Catalog.from_models([m for m in (await self._json("/v1/models")).get("data") or [] if isinstance(m, dict)])

    async def running(self) -> list[RunningModel]:
        items = (await self._json("/running", timeout=5.0)).get("running") or []
        return [RunningModel(model=i["model"], state=str(i.get("state", "ready")), ttl=i.get("ttl")) for i in items]

    async def unload(self, model: str) -> str:
        """Stop one model; returns once llama-swap reports it stopped. Returns the endpoint used."""
        r = await self._call("POST", f"/api/models/unload/{quote(model, safe='/')}")
        if r.status_code == 200:
            return "api/models/unload"
        message = error_message(r)
        if r.status_code in (404, 405) and message is None:
            raise UnloadUnsupported(NAME, self.url, "has no /api/models/unload/{id} (older llama-swap)", r.status_code)
        if r.status_code == 404:
            raise await self._not_local(model, message or "")
        raise self._failed(f"unload of {model!r}", r)

    async def _not_local(self, model: str, message: str) -> ServerError:
        """A 404 from llama-swap itself: the route exists, the model is not one of its local processes."""
        try:
            peer = (await self.catalog()).peer(model)
        except ServerError:
            peer = None
        if peer or "no local server" in message.lower():
            where = f"peer {peer!r}" if peer else "no local process"
            return RemoteModel(NAME, self.url, f"{model!r} is served by {where}: it holds no VRAM on this card "
                               f"(llama-swap: {message})", 404)
        return ServerError(NAME, self.url, f"does not know model {model!r} (llama-swap: {message}); check the "
                           "consumer's `model` against llama-swap's config", 404)

    async def unload_all(self) -> str:
        """`GET /unload`: stops every model llama-swap runs."""
        r = await self._call("GET", "/unload")
        if r.status_code == 200:
            return "unload"
        if r.status_code in (404, 405) and error_message(r) is None:
            raise UnloadUnsupported(NAME, self.url, "has no /unload endpoint", r.status_code)
        raise self._failed("/unload", r)

    async def swap_to(self, model: str) -> None:
        """The swap-to-text method, kept only as a last resort: ask for another model with `max_tokens: 1`, which makes
        llama-swap stop the current one — and load `model`, memory it does not need."""
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        r = await self._call("POST", "/v1/chat/completions", json=body, timeout=max(self.timeout_s, 120.0))
        if r.status_code != 200:
            raise self._failed(f"swap to {model!r}", r)
