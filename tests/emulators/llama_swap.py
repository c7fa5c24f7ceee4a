"""A llama-swap emulator on loopback, with a simulated GPU behind it.

llama-swap is a Go binary from no registry here and there is no GPU, so tests and benchmarks talk to this
instead. It speaks llama-swap's HTTP API as its source defines it (proxy/proxymanager.go, proxymanager_api.go):

    GET  /health                     → "OK"
    GET  /v1/models                  → {"object": "list", "data": [{"id", "object": "model", "created", "owned_by": "llama-swap"}]}
    GET  /running                    → {"running": [{"model", "state": "ready", "cmd", "proxy", "ttl", ...}]}
    GET  /unload                     → "OK" (stops every model)
    POST /api/models/unload          → {"msg": "ok"}
    POST /api/models/unload/{id}     → "OK" once the process is gone; 404 "Model not found" for unknown ids
    POST /v1/chat/completions        → loads the model on demand, swapping out the others (no groups)

Errors follow llama-swap's sendErrorResponse: plain text, or {"error": msg} when the client accepts JSON.
`apiKeys` from the config are enforced like llama-swap does (Bearer, Basic password, x-api-key).

Models come from a YAML/dict in llama-swap's own config shape (`models: {id: {cmd, proxy, ttl, aliases, ...}}`)
plus emulator-only fields per model: `vram_mib`, `load_s`, `stop_s`, `release_s`, `infer_s`, `vision`; and at
the top level `gpu_total_mib` (8192) and `gpu_reserved_mib` (memory held by others: display, CUDA contexts).

The VRAM ledger (`SimulatedGpu`): a model's memory is allocated when its weights reach the card (at the end of
`load_s`); a load that does not fit fails with `cudaMalloc failed: out of memory` (HTTP 500) — the seed's
failure. Stopping takes `stop_s` (unload calls return when the process is gone, as llama-swap's do) and the
card gets the memory back `release_s` later (driver teardown). `GET /_emulator/vram` is what EmulatorProbe reads.

Also here, because they share the simulated card: an Ollama emulator (`create_ollama_app`: /api/ps,
/api/generate with keep_alive 0) and the face detector's pause/resume endpoints on that card
(`create_detector_app`: /health, /load, /unload, /detect) — a GPU detector's VRAM cannot exist without a GPU.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

OOM_MESSAGE = "cudaMalloc failed: out of memory"
ROOT_CONFIG = Path(__file__).resolve().parents[2] / "llama-swap" / "config.yaml"  # the real deployment's config


class OutOfMemory(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------------
# The simulated card
# ---------------------------------------------------------------------------------------------------------
class SimulatedGpu:
    """A VRAM ledger shared by every emulated server. Thread-safe: servers run in their own threads."""

    def __init__(self, total_mib: float = 8192, reserved_mib: float = 0, name: str = "Emulated RTX 8GB") -> None:
        self.total_mib = float(total_mib)
        self.name = name
        self._lock = threading.RLock()
        self.allocations: dict[str, float] = {}
        self.releasing: list[tuple[str, float, float]] = []  # (owner, MiB, monotonic time it comes back)
        self.history: list[dict[str, Any]] = []
        self.oom_count = 0
        self.t0 = time.monotonic()
        if reserved_mib:
            self.allocations["display+contexts"] = float(reserved_mib)

    def _settle(self) -> None:
        now = time.monotonic()
        done = [r for r in self.releasing if r[2] <= now]
        self.releasing = [r for r in self.releasing if r[2] > now]
        for owner, mib, at in sorted(done, key=lambda r: r[2]):
            self._log("released", owner, mib, at=at)

    def _log(self, event: str, owner: str, mib: float, at: float | None = None) -> None:
        self.history.append({"t": round((at or time.monotonic()) - self.t0, 4), "event": event, "owner": owner,
                             "mib": mib, "free_mib": self._free()})

    def _free(self) -> float:
        return self.total_mib - sum(self.allocations.values()) - sum(m for _, m, _ in self.releasing)

    @property
    def free_mib(self) -> float:
        with self._lock:
            self._settle()
            return self._free()

    def alloc(self, owner: str, mib: float) -> None:
        """Claim memory as cudaMalloc would: all or nothing."""
        with self._lock:
            self._settle()
            if mib > self._free():
                self.oom_count += 1
                self._log("oom", owner, mib)
                raise OutOfMemory(f"{OOM_MESSAGE} ({owner} needs {mib:.0f} MiB, {self._free():.0f} MiB free)")
            self.allocations[owner] = self.allocations.get(owner, 0.0) + mib
            self._log("alloc", owner, mib)

    def free(self, owner: str, release_s: float = 0.0) -> float:
        """The process is gone; the driver hands its memory back `release_s` later."""
        with self._lock:
            self._settle()
            mib = self.allocations.pop(owner, 0.0)
            if mib:
                self.releasing.append((owner, mib, time.monotonic() + release_s))
                self._log("exit", owner, mib)
                self._settle()
            return mib

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._settle()
            procs = [{"pid": None, "name": o, "used_mib": m} for o, m in self.allocations.items()]
            procs += [{"pid": None, "name": f"{o} (exited, driver releasing)", "used_mib": m} for o, m, _ in self.releasing]
            free = self._free()
            return {"device": self.name, "total_mib": self.total_mib, "used_mib": self.total_mib - free,
                    "free_mib": free, "processes": procs}


def _add_gpu_routes(app: FastAPI, gpu: SimulatedGpu) -> None:
    """Emulator-only routes (never affected by the misbehaviour switches): read and use the card."""

    @app.get("/_emulator/vram")
    async def vram() -> dict[str, Any]:
        return gpu.snapshot()

    @app.post("/_emulator/alloc")
    async def alloc(body: dict[str, Any]) -> Response:
        try:
            gpu.alloc(str(body["owner"]), float(body["mib"]))
        except OutOfMemory as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        except (KeyError, ValueError, TypeError):
            return JSONResponse({"error": "body needs owner (str) and mib (number)"}, status_code=400)
        return JSONResponse({"ok": True, "free_mib": gpu.free_mib})

    @app.post("/_emulator/free")
    async def free(body: dict[str, Any]) -> dict[str, Any]:
        mib = gpu.free(str(body.get("owner", "")), float(body.get("release_s", 0.0)))
        return {"freed_mib": mib}


def create_gpu_app(gpu: SimulatedGpu) -> FastAPI:
    """Just the card: lets a probe keep reading it while the llama-swap emulator is down."""
    app = FastAPI(title="simulated GPU")
    _add_gpu_routes(app, gpu)
    return app


# ---------------------------------------------------------------------------------------------------------
# llama-swap
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    id: str
    cmd: str = ""
    proxy: str = "http://localhost:${PORT}"
    ttl: int = 0
    aliases: list[str] = field(default_factory=list)
    check_endpoint: str = "/health"
    name: str = ""
    description: str = ""
    unlisted: bool = False
    # emulator-only
    vram_mib: float = 1024
    load_s: float = 0.0
    stop_s: float = 0.0
    release_s: float = 0.0
    infer_s: float = 0.0
    vision: bool = False


@dataclass
class ChatRequest:
    """What an answer callable receives."""

    model: str
    messages: list[dict[str, Any]]
    text: str  # the user's text parts, joined
    images: list[bytes]  # decoded image_url data URIs
    body: dict[str, Any]


Answer = str | Callable[[ChatRequest], str]


@dataclass
class Switches:
    """Misbehaviour. `slow_s` delays every API answer; `fail_status` answers that code (on `fail_paths`, or
    everywhere when None); `legacy_no_model_unload` / `legacy_no_unload` remove the unload routes as older
    llama-swap versions lack them. Being down is `LlamaSwapEmulator.set_down()` (the socket really closes)."""

    slow_s: float = 0.0
    fail_status: int | None = None
    fail_paths: set[str] | None = None
    legacy_no_model_unload: bool = False
    legacy_no_unload: bool = False
    down: bool = False


class LoadFailed(RuntimeError):
    pass


def _load_config(config: dict | str | Path) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    text = Path(config).read_text() if isinstance(config, Path) or "\n" not in str(config) and Path(config).exists() else str(config)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("llama-swap config must be a mapping")
    return data


def _parse_models(cfg: dict[str, Any]) -> dict[str, ModelSpec]:
    if cfg.get("groups"):
        raise ValueError("the emulator swaps like llama-swap without groups; `groups` is not emulated")
    global_ttl = int(cfg.get("globalTTL", 0) or 0)
    models = {}
    for mid, m in (cfg.get("models") or {}).items():
        m = m or {}
        aliases = [a["id"] if isinstance(a, dict) else str(a) for a in m.get("aliases") or []]
        ttl = m.get("ttl", -1)
        models[str(mid)] = ModelSpec(
            id=str(mid), cmd=str(m.get("cmd", "")), proxy=str(m.get("proxy", "http://localhost:${PORT}")),
            ttl=global_ttl if ttl is None or int(ttl) < 0 else int(ttl), aliases=aliases,
            check_endpoint=str(m.get("checkEndpoint", "/health")), name=str(m.get("name", "")),
            description=str(m.get("description", "")), unlisted=bool(m.get("unlisted", False)),
            vram_mib=float(m.get("vram_mib", 1024)), load_s=float(m.get("load_s", 0)), stop_s=float(m.get("stop_s", 0)),
            release_s=float(m.get("release_s", 0)), infer_s=float(m.get("infer_s", 0)), vision=bool(m.get("vision", False)),
        )
    return models


class LlamaSwapEmulator:
    """The handle tests hold: switches, the ledger, per-model answers, and (with `serve()`) the server."""

    def __init__(self, config: dict | str | Path, gpu: SimulatedGpu | None = None) -> None:
        cfg = _load_config(config)
        self.config = cfg
        self.models = _parse_models(cfg)
        self.health_check_timeout = float(cfg.get("healthCheckTimeout", 120))
        self.api_keys = [str(k) for k in cfg.get("apiKeys") or []]
        self.gpu = gpu or SimulatedGpu(cfg.get("gpu_total_mib", 8192), cfg.get("gpu_reserved_mib", 0))
        self.switches = Switches()
        self.answers: dict[str, Answer] = {}
        self.state: dict[str, str] = {m: "stopped" for m in self.models}
        self.last_used: dict[str, float] = {}
        self.inflight: dict[str, int] = {m: 0 for m in self.models}
        self.loads: list[str] = []  # model ids, in the order they became ready
        self.unloads: list[str] = []  # model ids, in the order they stopped
        self.swap_count = 0  # stops caused by a request for another model
        self.requests: list[dict[str, Any]] = []  # (path, model) of every API call, for assertions
        self._mutex = threading.RLock()
        self._swap_lock: asyncio.Lock | None = None
        self.url: str | None = None
        self.gpu_url: str | None = None
        self._server: _Server | None = None
        self.app = self._build_app()

    # ---- test-facing helpers ----
    def set_answer(self, model: str, answer: Answer) -> None:
        self.answers[self.real_name(model) or model] = answer

    def preload(self, model: str) -> None:
        """Make a model resident at once (as if a request had loaded it earlier)."""
        spec = self.models[self.real_name(model) or model]
        with self._mutex:
            if self.state[spec.id] != "ready":
                self.gpu.alloc(spec.id, spec.vram_mib)
                self.state[spec.id] = "ready"
                self.loads.append(spec.id)
            self.last_used[spec.id] = time.monotonic()

    def running(self) -> list[str]:
        with self._mutex:
            return [m for m, s in self.state.items() if s == "ready"]

    def ledger(self) -> dict[str, Any]:
        return {"vram": self.gpu.snapshot(), "loads": list(self.loads), "unloads": list(self.unloads),
                "swap_count": self.swap_count, "oom_count": self.gpu.oom_count, "history": list(self.gpu.history),
                "state": dict(self.state)}

    def real_name(self, name: str) -> str | None:
        if name in self.models:
            return name
        return next((m.id for m in self.models.values() if name in m.aliases), None)

    # ---- serving with a real, stoppable socket ----
    @contextlib.contextmanager
    def serve(self) -> Iterator["LlamaSwapEmulator"]:
        """Serve llama-swap on one port and the card (for probes) on another; `set_down` closes the first."""
        gpu_server = _Server(create_gpu_app(self.gpu))
        self._server = _Server(self.app)
        try:
            self.gpu_url = gpu_server.start()
            self.url = self._server.start()
            yield self
        finally:
            self._server.stop()
            gpu_server.stop()

    def set_down(self, down: bool) -> None:
        """Down = connection refused, like a stopped container. The simulated card keeps its state."""
        if self._server is None:
            raise RuntimeError("set_down needs the emulator served by LlamaSwapEmulator.serve()")
        if down and not self.switches.down:
            self._server.stop()
        elif not down and self.switches.down:
            self._server.start()
        self.switches.down = down

    # ---- model lifecycle (inside the server's event loop) ----
    def _lock(self) -> asyncio.Lock:
        if self._swap_lock is None:
            self._swap_lock = asyncio.Lock()
        return self._swap_lock

    async def _stop(self, mid: str) -> bool:
        spec = self.models[mid]
        with self._mutex:
            if self.state[mid] != "ready":
                return False
            self.state[mid] = "stopping"
        await asyncio.sleep(spec.stop_s)
        with self._mutex:
            self.gpu.free(mid, spec.release_s)
            self.state[mid] = "stopped"
            self.unloads.append(mid)
        return True

    async def _ensure_ready(self, mid: str) -> None:
        async with self._lock():
            if self.state[mid] == "ready":
                return
            for other in list(self.models):
                if other != mid and self.state[other] == "ready":
                    while self.inflight[other]:  # StopWaitForInflightRequest
                        await asyncio.sleep(0.01)
                    if await self._stop(other):
                        self.swap_count += 1
            spec = self.models[mid]
            with self._mutex:
                self.state[mid] = "starting"
            if spec.load_s > self.health_check_timeout:
                await asyncio.sleep(self.health_check_timeout)
                self.state[mid] = "stopped"
                raise LoadFailed(f"unable to start process: health check timed out after {self.health_check_timeout:g}s")
            await asyncio.sleep(spec.load_s)
            with self._mutex:
                try:
                    self.gpu.alloc(mid, spec.vram_mib)
                except OutOfMemory as exc:
                    self.state[mid] = "stopped"
                    raise LoadFailed(f"upstream command exited prematurely: llama-server: {exc}") from exc
                self.state[mid] = "ready"
                self.loads.append(mid)
                self.last_used[mid] = time.monotonic()

    async def _ttl_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for mid, spec in self.models.items():
                if (spec.ttl > 0 and self.state[mid] == "ready" and not self.inflight[mid]
                        and now - self.last_used.get(mid, now) >= spec.ttl):
                    async with self._lock():
                        await self._stop(mid)

    # ---- HTTP ----
    def _error(self, request: Request, status: int, message: str) -> Response:
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": message}, status_code=status)
        return PlainTextResponse(message, status_code=status)

    def _authorised(self, request: Request) -> bool:
        if not self.api_keys:
            return True
        auth = request.headers.get("authorization", "")
        key = request.headers.get("x-api-key", "")
        if auth.startswith("Basic "):
            with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):
                key = base64.b64decode(auth[6:]).decode().split(":", 1)[1]
        elif auth.startswith("Bearer "):
            key = auth[7:]
        return key in self.api_keys

    def _build_app(self) -> FastAPI:
        emu = self

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI):
            emu._swap_lock = asyncio.Lock()  # bound to this server's loop (a restart after set_down gets a new one)
            task = asyncio.create_task(emu._ttl_loop())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app = FastAPI(title="llama-swap emulator", lifespan=lifespan)
        app.state.emulator = emu
        _add_gpu_routes(app, self.gpu)

        @app.middleware("http")
        async def misbehave(request: Request, call_next):
            path = request.url.path
            if path.startswith("/_emulator"):
                return await call_next(request)
            sw = emu.switches
            if sw.slow_s:
                await asyncio.sleep(sw.slow_s)
            if sw.fail_status and (sw.fail_paths is None or path in sw.fail_paths):
                return emu._error(request, sw.fail_status, f"emulated failure {sw.fail_status}")
            protected = path != "/health" and path != "/wol-health"
            if protected and not emu._authorised(request):
                resp = emu._error(request, 401, "unauthorized: invalid or missing API key")
                resp.headers["WWW-Authenticate"] = 'Basic realm="llama-swap"'
                return resp
            if sw.legacy_no_model_unload and path.startswith("/api/models/unload"):
                return PlainTextResponse("404 page not found", status_code=404)
            if sw.legacy_no_unload and path == "/unload":
                return PlainTextResponse("404 page not found", status_code=404)
            return await call_next(request)

        @app.get("/health")
        async def health() -> Response:
            return PlainTextResponse("OK")

        @app.get("/v1/models")
        async def list_models() -> dict[str, Any]:
            created = int(time.time())
            data = []
            for m in sorted(emu.models.values(), key=lambda m: m.id):
                if m.unlisted:
                    continue
                rec: dict[str, Any] = {"id": m.id, "object": "model", "created": created, "owned_by": "llama-swap"}
                if m.name:
                    rec["name"] = m.name
                if m.description:
                    rec["description"] = m.description
                data.append(rec)
            return {"object": "list", "data": data}

        @app.get("/running")
        async def running() -> dict[str, Any]:
            return {"running": [{"model": m.id, "state": "ready", "cmd": m.cmd, "proxy": m.proxy, "ttl": m.ttl,
                                 "name": m.name, "description": m.description}
                                for m in emu.models.values() if emu.state[m.id] == "ready"]}

        @app.get("/unload")
        async def unload_all() -> Response:
            async with emu._lock():
                await asyncio.gather(*(emu._stop(m) for m in emu.models))
            emu.requests.append({"path": "/unload"})
            return PlainTextResponse("OK")

        @app.post("/api/models/unload")
        async def api_unload_all() -> dict[str, str]:
            async with emu._lock():
                await asyncio.gather(*(emu._stop(m) for m in emu.models))
            return {"msg": "ok"}

        @app.post("/api/models/unload/{model:path}")
        async def api_unload(model: str, request: Request) -> Response:
            mid = emu.real_name(model)
            emu.requests.append({"path": "/api/models/unload", "model": model})
            if mid is None:
                return emu._error(request, 404, "Model not found")
            async with emu._lock():
                await emu._stop(mid)
            return PlainTextResponse("OK")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                return emu._error(request, 400, "missing or invalid 'model' key")
            requested = body.get("model") if isinstance(body, dict) else None
            if not isinstance(requested, str) or not requested:
                return emu._error(request, 400, "missing or invalid 'model' key")
            mid = emu.real_name(requested)
            emu.requests.append({"path": "/v1/chat/completions", "model": requested})
            if mid is None:
                return emu._error(request, 400, f"could not find suitable inference handler for {requested}")
            try:
                chat_req = _parse_chat(mid, body)
            except ValueError as exc:
                return JSONResponse({"error": {"code": 400, "message": str(exc), "type": "invalid_request_error"}},
                                    status_code=400)
            spec = emu.models[mid]
            if chat_req.images and not spec.vision:
                return JSONResponse({"error": {"code": 500, "type": "server_error", "message":
                                     "image input is not supported - hint: if this is unexpected, you may need to "
                                     "provide the mmproj"}}, status_code=500)
            try:
                await emu._ensure_ready(mid)
            except LoadFailed as exc:
                return emu._error(request, 500, str(exc))
            emu.inflight[mid] += 1
            try:
                await asyncio.sleep(spec.infer_s)
                answer = emu.answers.get(mid, f"[{mid}] ok")
                text = answer(chat_req) if callable(answer) else str(answer)
            finally:
                emu.inflight[mid] -= 1
                emu.last_used[mid] = time.monotonic()
            return JSONResponse({
                "id": f"chatcmpl-emu{len(emu.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": requested,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": max(1, len(chat_req.text.split())), "completion_tokens":
                          max(1, len(text.split())), "total_tokens": max(1, len(chat_req.text.split())) + max(1, len(text.split()))},
            })

        return app


def _parse_chat(mid: str, body: dict[str, Any]) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty array")
    texts: list[str] = []
    images: list[bytes] = []
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError("each message must be an object")
        content = m.get("content")
        if isinstance(content, str):
            if m.get("role") == "user":
                texts.append(content)
            continue
        if not isinstance(content, list):
            raise ValueError("message content must be a string or an array of parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if m.get("role") == "user":
                    texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                iu = part.get("image_url")
                url = iu.get("url") if isinstance(iu, dict) else iu
                if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
                    raise ValueError("image_url must be a base64 data URI (llama-server does not fetch URLs)")
                try:
                    images.append(base64.b64decode(url.split(";base64,", 1)[1], validate=True))
                except (binascii.Error, ValueError) as exc:
                    raise ValueError(f"image_url data URI is not valid base64: {exc}") from exc
            else:
                raise ValueError(f"unsupported content part type {kind!r}")
    return ChatRequest(model=mid, messages=messages, text="\n".join(texts), images=images, body=body)


def create_app(config: dict | str | Path, gpu: SimulatedGpu | None = None) -> FastAPI:
    """A llama-swap emulator app (serve it with tests/servers.serve_app); its handle is `app.state.emulator`."""
    return LlamaSwapEmulator(config, gpu).app


# ---------------------------------------------------------------------------------------------------------
# Ollama and the face detector, on the same card
# ---------------------------------------------------------------------------------------------------------
def create_ollama_app(models: Mapping[str, Mapping[str, float]], gpu: SimulatedGpu) -> FastAPI:
    """Ollama's load/unload surface: `/api/ps` (size_vram in bytes), `/api/generate` (empty prompt loads,
    `keep_alive: 0` unloads and answers done_reason "unload"), `/api/tags`. Model names default to `:latest`."""
    def norm(n: str) -> str:
        return n if ":" in n else f"{n}:latest"

    specs = {norm(k): dict(v) for k, v in models.items()}
    loaded: dict[str, float] = {}
    app = FastAPI(title="ollama emulator")
    app.state.loaded = loaded

    @app.get("/")
    async def root() -> Response:
        return PlainTextResponse("Ollama is running")

    @app.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [{"name": n, "model": n, "size": int(s.get("vram_mib", 0) * 2**20)} for n, s in specs.items()]}

    @app.get("/api/ps")
    async def ps() -> dict[str, Any]:
        return {"models": [{"name": n, "model": n, "size": int(specs[n]["vram_mib"] * 2**20),
                            "size_vram": int(specs[n]["vram_mib"] * 2**20), "expires_at": "2099-01-01T00:00:00Z",
                            "details": {"format": "gguf"}} for n in loaded]}

    @app.post("/api/generate")
    async def generate(body: dict[str, Any]) -> Response:
        name = norm(str(body.get("model", "")))
        if name not in specs:
            return JSONResponse({"error": f"model '{body.get('model')}' not found"}, status_code=404)
        s = specs[name]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if body.get("keep_alive") in (0, "0", "0s"):
            if name in loaded:
                loaded.pop(name)
                await asyncio.sleep(s.get("stop_s", 0))
                gpu.free(f"ollama:{name}", s.get("release_s", 0))
            return JSONResponse({"model": name, "created_at": now, "response": "", "done": True, "done_reason": "unload"})
        if name not in loaded:
            await asyncio.sleep(s.get("load_s", 0))
            try:
                gpu.alloc(f"ollama:{name}", s["vram_mib"])
            except OutOfMemory as exc:
                return JSONResponse({"error": str(exc)}, status_code=500)
            loaded[name] = time.monotonic()
        return JSONResponse({"model": name, "created_at": now, "response": "", "done": True, "done_reason": "load"})

    return app


def create_detector_app(gpu: SimulatedGpu, *, vram_mib: float = 1024, load_s: float = 0.0, stop_s: float = 0.0,
                        release_s: float = 0.0, loaded: bool = False, uses_gpu: bool | None = True) -> FastAPI:
    """The face detector service's VRAM side on the simulated card: /health, /load, /unload and a /detect that
    loads lazily (OOM if the card is full). `app.state.detector` counts loads and detections.
    /health says `"uses_gpu": true` like the real service on a CUDA backend; `uses_gpu=None` leaves the
    field out, as services older than it do."""
    st = {"loaded": False, "loads": 0, "detections": 0, "ooms": 0}
    app = FastAPI(title="face detector (simulated GPU)")
    app.state.detector = st
    owner = "face-detector"

    def _load() -> None:
        gpu.alloc(owner, vram_mib)
        st["loaded"] = True
        st["loads"] += 1

    if loaded:
        _load()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        body: dict[str, Any] = {"status": "healthy", "detector_loaded": st["loaded"],
                                "backend": "yolo-onnx (simulated GPU)"}
        if uses_gpu is not None:
            body["uses_gpu"] = uses_gpu
        return body

    @app.post("/load")
    async def load() -> Response:
        if not st["loaded"]:
            await asyncio.sleep(load_s)
            try:
                _load()
            except OutOfMemory as exc:
                st["ooms"] += 1
                return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse({"status": "loaded", "detector_loaded": True})

    @app.post("/unload")
    async def unload() -> dict[str, Any]:
        if st["loaded"]:
            await asyncio.sleep(stop_s)
            gpu.free(owner, release_s)
            st["loaded"] = False
        return {"status": "unloaded", "detector_loaded": False}

    @app.post("/detect")
    async def detect() -> Response:
        if not st["loaded"]:
            await asyncio.sleep(load_s)
            try:
                _load()
            except OutOfMemory as exc:
                st["ooms"] += 1
                return JSONResponse({"error": str(exc)}, status_code=503)
        st["detections"] += 1
        return JSONResponse({"detections": [], "count": 0})

    return app


# ---------------------------------------------------------------------------------------------------------
class _Server:
    """uvicorn in a thread on a fixed port, restartable (for `set_down`)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        import socket

        if self.port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("emulator server died during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("emulator server did not start in 30 s")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = self._thread = None
