"""A llama-swap emulator on loopback, with a simulated GPU behind it.

llama-swap is a Go binary from no registry here and there is no GPU, so tests and benchmarks talk to this
instead. It follows the release that llama-swap/Dockerfile pins (`LLAMA_SWAP_VERSION`, v250; image
`ghcr.io/mostlygeek/llama-swap:v250-cuda-b10423`), file by file of that tag's source:

    internal/server/server.go     routes (Go's ServeMux: a `GET` route also answers `HEAD`; unknown paths get
                                  "404 page not found", a known path with another method 405)
    internal/server/api.go        GET  /health                 → 200 "OK" (never behind the API key)
                                  GET  /v1/models              → {"object": "list", "data": [{"id", "object": "model",
                                                                  "created", "owned_by": "llama-swap", "name"?,
                                                                  "description"?, "status": {"value": "loaded"|
                                                                  "unloaded"}, "meta"?: {"llamaswap": {"type":
                                                                  "model"|"alias"|"peer", "aliases"?, "modelID"?,
                                                                  "peerID"?}}}]}, sorted by id
                                  GET  /running                → {"running": [{"model", "state", "cmd", "proxy",
                                                                  "ttl", "name", "description"}]}: every local
                                                                  model that is not stopped (`starting`, `ready`,
                                                                  `stopping`), real ids only, macros expanded
                                  GET  /unload                 → "OK" once every local model has stopped
    internal/server/apigroup.go   POST /api/models/unload      → {"msg": "ok"}
                                  POST /api/models/unload/{id} → "OK" once that process has stopped; the id may be
                                                                  an alias; 404 "model not found" when it is neither
                                                                  a local model nor an alias (a peer's model too:
                                                                  RealModelName knows local models only); 404 "no
                                                                  local server found for requested model" when no
                                                                  local process serves a configured model
    internal/server/server.go     POST /v1/chat/completions    → the model from the JSON body (gjson, only for a
      (localPeerHandler)                                          `Content-Type: application/json` body): local
                                                                  model or alias → loaded on demand, swapping the
                                                                  others out (no groups); a peer's model → proxied
                                                                  to the peer (answered here without the card: it is
                                                                  another machine's memory); else 404 "no router for
                                                                  requested model"; no model → 404 "no model id could
                                                                  be identified"
    internal/swaputil/http.go     errors (SendResponse): `Accept` containing text/plain → "llama-swap: <msg>";
                                  text/html → a small HTML page; otherwise JSON {"src": "llama-swap", "error":
                                  "<msg>"}. `Switches.error_envelope` gives the OpenAI-style body of llama-swap's
                                  main branch after v250 (commit cb536168, #1038, not in a release of the stored
                                  source): {"src": "llama-swap", "error": {"message", "type", "param": null, "code"}}
    internal/process/process.go   states: stopped, starting, ready, stopping, shutdown
    internal/config/macros.go     `macros` (global, then per model), MODEL_ID, and PORT allocated from
                                  `startPort` (5800) in sorted model-id order for models whose cmd uses ${PORT};
                                  the default proxy is http://localhost:${PORT}; `#` comment lines leave cmd
    internal/config/load.go       aliases, ttl (globalTTL when unset), apiKeys; internal/config/peer.go: peers
    internal/server/auth.go       apiKeys: Bearer, Basic (the password) or x-api-key; 401 with WWW-Authenticate

Behind a local model llama-server answers the chat itself (its own error shape, {"error": {"code", "message",
"type"}}); with `"stream": true` it streams Server-Sent Events (`chat.completion.chunk` objects, then
`data: [DONE]`), which llama-swap passes through.

Models come from a YAML/dict in llama-swap's own config shape (`models: {id: {cmd, proxy, ttl, aliases, ...}}`,
`peers: {id: {proxy, models: [...]}}`) plus emulator-only fields per model: `vram_mib`, `load_s`, `stop_s`,
`release_s`, `infer_s`, `vision`; and at the top level `gpu_total_mib` (8192) and `gpu_reserved_mib` (memory
held by others: display, CUDA contexts).

The VRAM ledger (`SimulatedGpu`, served for probes by `create_gpu_app` too): a model's memory is allocated when
its weights reach the card (at the end of `load_s`); a load that does not fit fails as the real one does (HTTP
500 "unspecific error: upstream command exited prematurely": llama-server's `cudaMalloc failed: out of memory`
is only in its log; `oom_count` counts it).
Stopping takes `stop_s` (the model shows `stopping` meanwhile; unload calls return when the process is gone, as
llama-swap's do) and the card gets the memory back `release_s` later (driver teardown). `GET /_emulator/vram`
is what EmulatorProbe reads. Another process (a model server stand-in launched by the real llama-swap) claims
memory with `POST /_emulator/alloc {"owner", "mib", "pid", "release_s"}`: the claim lasts while that pid
lives (whatever ends it) and comes back `release_s` after, as the driver frees a dead process's memory.

A model process that is unloaded while it starts (process_command.go: a Stop during the start cancels it;
fifo.go OnUnload) goes back to `stopped` without taking memory, and every request waiting for it gets 500
"unspecific error: group: model unloaded" (`MODEL_UNLOADED`).

Checked against the real thing: tests/vramctl/test_llama_swap_real.py runs the real llama-swap (v250, built from
third_party/llama-swap) with model stand-ins (`emulators.model_server`) and sends both the same
requests (status, content type, body must match), an OOM load, and an unload during a start. Where they
disagreed, the emulator was changed to the real answer. What remains different, because the emulator is
kept for what the real one cannot show here (a peer on another machine, older versions' missing routes,
main's error envelope, exact timings without a second's health-check beat):

- no process is started: `cmd` is text; `vram_mib`/`load_s`/`stop_s`/`release_s`/`infer_s`/`vision` say
  how the model behaves, and the emulator answers chats itself (`set_answer`; `stream: true` as SSE);
- a load takes exactly `load_s`; llama-swap health-checks 250 ms after the start and then every second
  (process_command.go), so a real load takes at least 250 ms and ends on that beat;
- ttl expiry is checked every 50 ms (llama-swap: a one-second ticker);
- one lock orders every load, swap and unload; llama-swap's scheduler (router/scheduler/fifo.go) joins
  requests to a swap in flight, queues the ones that collide with it, and honours `concurrencyLimit`;
- only the default swapping group: no `groups`/`matrix`/`hooks`, no `sendLoadingState`, no `/upstream/`,
  `/logs`, `/metrics`, `/api/version`, `/api/events` or UI;
- a peer's model is answered by the emulator (the real one proxies to the other machine);
- the config check is a subset of llama-swap's (macros, reserved names, duplicate aliases, `${PORT}` only in
  `cmd`, healthCheckTimeout at least 15 s); the real binary loads llama-swap/config.yaml in the real tier.

Also here, because it shares the simulated card: the face detector's pause/resume endpoints on that card
(`create_detector_app`: /health, /load, /unload, /detect) — a GPU detector's VRAM cannot exist without a GPU.
Ollama's emulator is in `emulators.ollama`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import html
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

LLAMA_SWAP_VERSION = "v250"  # the release llama-swap/Dockerfile pins and this emulator follows

OOM_MESSAGE = "cudaMalloc failed: out of memory"
ROOT_CONFIG = Path(__file__).resolve().parents[2] / "llama-swap" / "config.yaml"  # the real deployment's config


class OutOfMemory(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------------
# The simulated card
# ---------------------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """Whether a process still exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class SimulatedGpu:
    """A VRAM ledger shared by every emulated server. Thread-safe: servers run in their own threads."""

    def __init__(self, total_mib: float = 8192, reserved_mib: float = 0, name: str = "Emulated RTX 8GB") -> None:
        self.total_mib = float(total_mib)
        self.name = name
        self._lock = threading.RLock()
        self.allocations: dict[str, float] = {}
        self.processes: dict[str, tuple[int, float]] = {}  # owner → (pid, release_s) for claims by other processes
        self.releasing: list[tuple[str, float, float]] = []  # (owner, MiB, monotonic time it comes back)
        self.history: list[dict[str, Any]] = []
        self.oom_count = 0
        self.t0 = time.monotonic()
        if reserved_mib:
            self.allocations["display+contexts"] = float(reserved_mib)

    def _settle(self) -> None:
        now = time.monotonic()
        for owner, (pid, release_s) in list(self.processes.items()):
            if not _alive(pid):  # the driver frees a dead process's memory, however it ended
                del self.processes[owner]
                mib = self.allocations.pop(owner, 0.0)
                if mib:
                    self.releasing.append((owner, mib, now + release_s))
                    self._log("exit", owner, mib)
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

    def alloc(self, owner: str, mib: float, *, pid: int | None = None, release_s: float = 0.0) -> None:
        """Claim memory as cudaMalloc would: all or nothing. With `pid` (a model server stand-in in its own
        process, `emulators.model_server`) the claim lasts as long as that process: `release_s` after it is
        gone the memory is back, as the driver does it."""
        with self._lock:
            self._settle()
            if mib > self._free():
                self.oom_count += 1
                self._log("oom", owner, mib)
                raise OutOfMemory(f"{OOM_MESSAGE} ({owner} needs {mib:.0f} MiB, {self._free():.0f} MiB free)")
            self.allocations[owner] = self.allocations.get(owner, 0.0) + mib
            if pid is not None:
                self.processes[owner] = (pid, release_s)
            self._log("alloc", owner, mib)

    def free(self, owner: str, release_s: float = 0.0) -> float:
        """The process is gone; the driver hands its memory back `release_s` later."""
        with self._lock:
            self._settle()
            mib = self.allocations.pop(owner, 0.0)
            self.processes.pop(owner, None)
            if mib:
                self.releasing.append((owner, mib, time.monotonic() + release_s))
                self._log("exit", owner, mib)
                self._settle()
            return mib

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._settle()
            procs = [{"pid": self.processes.get(o, (None,))[0], "name": o, "used_mib": m}
                     for o, m in self.allocations.items()]
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
            pid = int(body["pid"]) if body.get("pid") is not None else None
            gpu.alloc(str(body["owner"]), float(body["mib"]), pid=pid, release_s=float(body.get("release_s", 0.0)))
        except OutOfMemory as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        except (KeyError, ValueError, TypeError):
            return JSONResponse({"error": "body needs owner (str) and mib (number); optional pid (int) and "
                                 "release_s (number)"}, status_code=400)
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
ACTIVE = ("starting", "ready", "stopping")  # states /running lists (RunningModels skips stopped and shutdown)
DEFAULT_PROXY = "http://localhost:${PORT}"
DEFAULT_START_PORT = 5800
EMULATOR_DEFAULT_CMD = "llama-server --port ${PORT}"  # for test configs without `cmd` (llama-swap requires one)
_MACRO = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


@dataclass
class ModelSpec:
    id: str
    cmd: str = ""
    proxy: str = "http://localhost:5800"
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
    llama-swap versions lack them (their router answers a plain "404 page not found"); `error_envelope`
    answers errors in the OpenAI-style body of llama-swap's main branch after v250. Being down is
    `LlamaSwapEmulator.set_down()` (the socket really closes)."""

    slow_s: float = 0.0
    fail_status: int | None = None
    fail_paths: set[str] | None = None
    legacy_no_model_unload: bool = False
    legacy_no_unload: bool = False
    error_envelope: bool = False
    down: bool = False


class LoadFailed(RuntimeError):
    pass


def _go_duration(seconds: int) -> str:
    """Go's time.Duration String() for whole seconds: 15s, 2m0s, 1h0m0s."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s" if m else f"{s}s"


# fifo.go OnUnload's error for requests waiting on a model that is unloaded (the default router is named
# "group"), which swaputil.SendError answers as 500 "unspecific error: ...".
MODEL_UNLOADED = "group: model unloaded"


def _load_config(config: dict | str | Path) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    text = Path(config).read_text() if isinstance(config, Path) or "\n" not in str(config) and Path(config).exists() else str(config)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("llama-swap config must be a mapping")
    return data


def _substitute(value: Any, macros: list[tuple[str, Any]]) -> Any:
    """substituteMacroList: the last-declared macro first, so a later one may use an earlier one."""
    if isinstance(value, str):
        for name, v in reversed(macros):
            value = value.replace(f"${{{name}}}", str(v))
        return value
    if isinstance(value, list):
        return [_substitute(v, macros) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, macros) for k, v in value.items()}
    return value


def _strip_comments(cmd: str) -> str:
    return "\n".join(line for line in cmd.splitlines() if not line.strip().startswith("#"))


def expand_macros(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The models of `cfg` with macros expanded as internal/config/macros.go (v250) does."""
    global_macros = list((cfg.get("macros") or {}).items())
    for name, _ in global_macros:
        if name in ("PID", "PORT", "MODEL_ID"):
            raise ValueError(f"macro name '{name}' is reserved")
    next_port = int(cfg.get("startPort", DEFAULT_START_PORT))
    out: dict[str, dict[str, Any]] = {}
    for mid in sorted(cfg.get("models") or {}):
        m = dict(cfg["models"][mid] or {})
        m.setdefault("cmd", EMULATOR_DEFAULT_CMD)
        local = dict(global_macros)
        local.update(m.pop("macros", None) or {})
        macros = [("MODEL_ID", mid), *local.items()]
        for key in ("cmd", "cmdStop"):
            if isinstance(m.get(key), str):
                m[key] = _strip_comments(m[key])
        m.setdefault("proxy", DEFAULT_PROXY)
        m = _substitute(m, macros)
        cmd, proxy = str(m.get("cmd", "")), str(m.get("proxy") or "")
        if "${PORT}" in proxy and "${PORT}" not in cmd:
            raise ValueError(f"model {mid}: proxy uses ${{PORT}} but cmd does not - ${{PORT}} is only available "
                             "when used in cmd")
        if "${PORT}" in cmd:
            m = _substitute(m, [("PORT", next_port)])
            next_port += 1
        for key in ("cmd", "proxy"):
            left = [n for n in _MACRO.findall(str(m.get(key, ""))) if not n.startswith("env.")]
            if left:
                raise ValueError(f"unknown macro '${{{left[0]}}}' found in model {mid} {key}")
        out[str(mid)] = m
    return out


def _parse_models(cfg: dict[str, Any]) -> dict[str, ModelSpec]:
    if cfg.get("groups") or cfg.get("matrix") or cfg.get("routing"):
        raise ValueError("the emulator swaps like llama-swap's default group; groups/matrix are not emulated")
    global_ttl = int(cfg.get("globalTTL", 0) or 0)
    models = {}
    for mid, m in expand_macros(cfg).items():
        aliases = [a["id"] if isinstance(a, dict) else str(a) for a in m.get("aliases") or []]
        ttl = m.get("ttl", -1)
        models[mid] = ModelSpec(
            id=mid, cmd=str(m.get("cmd", "")), proxy=str(m.get("proxy")), aliases=aliases,
            ttl=global_ttl if ttl is None or int(ttl) < 0 else int(ttl),
            check_endpoint=str(m.get("checkEndpoint", "/health")), name=str(m.get("name", "")),
            description=str(m.get("description", "")), unlisted=bool(m.get("unlisted", False)),
            vram_mib=float(m.get("vram_mib", 1024)), load_s=float(m.get("load_s", 0)), stop_s=float(m.get("stop_s", 0)),
            release_s=float(m.get("release_s", 0)), infer_s=float(m.get("infer_s", 0)), vision=bool(m.get("vision", False)),
        )
    seen: dict[str, str] = {}
    for spec in models.values():
        for alias in spec.aliases:
            if alias in seen or alias in models:
                raise ValueError(f"duplicate alias {alias} found in model: {spec.id}")
            seen[alias] = spec.id
    return models


def _parse_peers(cfg: dict[str, Any]) -> dict[str, list[str]]:
    return {str(pid): [str(m) for m in (p or {}).get("models") or []] for pid, p in (cfg.get("peers") or {}).items()}


_ERROR_TYPES = {400: ("invalid_request_error", "bad_request"), 401: ("authentication_error", "unauthorized"),
                403: ("authentication_error", "forbidden"), 404: ("invalid_request_error", "not_found"),
                409: ("invalid_request_error", "conflict"), 429: ("rate_limit_error", "rate_limit_exceeded"),
                502: ("server_error", "bad_gateway"), 503: ("server_error", "service_unavailable"),
                504: ("server_error", "gateway_timeout")}


def error_body(status: int, message: str, *, envelope: bool) -> dict[str, Any]:
    """SendResponse's JSON: v250's string `error`, or main's OpenAI-style envelope (swaputil/httperror.go)."""
    if not envelope:
        return {"src": "llama-swap", "error": message}
    kind, code = _ERROR_TYPES.get(status, ("invalid_request_error", "invalid_request") if 400 <= status < 500
                                  else ("server_error", "internal_error"))
    return {"src": "llama-swap", "error": {"message": message, "type": kind, "param": None, "code": code}}


class LlamaSwapEmulator:
    """The handle tests hold: switches, the ledger, per-model answers, and (with `serve()`) the server."""

    def __init__(self, config: dict | str | Path, gpu: SimulatedGpu | None = None) -> None:
        cfg = _load_config(config)
        self.config = cfg
        self.models = _parse_models(cfg)
        self.peers = _parse_peers(cfg)
        self.include_aliases_in_list = bool(cfg.get("includeAliasesInList", False))
        self.health_check_timeout = max(15, int(cfg.get("healthCheckTimeout", 120)))  # load.go: at least 15 s
        self.api_keys = [str(k) for k in cfg.get("apiKeys") or []]
        self.gpu = gpu or SimulatedGpu(cfg.get("gpu_total_mib", 8192), cfg.get("gpu_reserved_mib", 0))
        self.switches = Switches()
        self.answers: dict[str, Answer] = {}
        self.state: dict[str, str] = {m: "stopped" for m in self.models}
        self.last_used: dict[str, float] = {}
        self.inflight: dict[str, int] = {m: 0 for m in self.models}
        # Requests waiting for a model to be ready (a test's way to know they all arrived before it acts).
        self.waiting: dict[str, int] = {m: 0 for m in self.models}
        self.loads: list[str] = []  # model ids, in the order they became ready
        self.unloads: list[str] = []  # model ids, in the order they stopped
        self.swap_count = 0  # stops caused by a request for another model
        self.requests: list[dict[str, Any]] = []  # (path, model) of every API call, for assertions
        self._mutex = threading.RLock()
        self._swap_lock: asyncio.Lock | None = None
        self._aborts: dict[str, asyncio.Event] = {}  # model id → set to abort its start
        self._unload_count: dict[str, int] = {m: 0 for m in self.models}
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
        """Models in the `ready` state (what a chat would be answered by at once)."""
        with self._mutex:
            return [m for m, s in self.state.items() if s == "ready"]

    def ledger(self) -> dict[str, Any]:
        return {"vram": self.gpu.snapshot(), "loads": list(self.loads), "unloads": list(self.unloads),
                "swap_count": self.swap_count, "oom_count": self.gpu.oom_count, "history": list(self.gpu.history),
                "state": dict(self.state)}

    def real_name(self, name: str) -> str | None:
        """config.RealModelName: a local model id, or the model an alias names."""
        if name in self.models:
            return name
        return next((m.id for m in self.models.values() if name in m.aliases), None)

    def peer_of(self, name: str) -> str | None:
        """config.ResolvePeerModel: `peer/model`, or a model name exactly one peer serves."""
        hits = {pid for pid, models in self.peers.items() for m in models if f"{pid}/{m}" == name}
        if not hits:
            hits = {pid for pid, models in self.peers.items() if name in models}
        return next(iter(hits)) if len(hits) == 1 else None

    # ---- serving with a real, stoppable socket ----
    @contextlib.contextmanager
    def serve(self) -> Iterator[LlamaSwapEmulator]:
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
        self.waiting[mid] += 1
        try:
            await self._become_ready(mid)
        finally:
            self.waiting[mid] -= 1

    async def _become_ready(self, mid: str) -> None:
        unloads_seen = self._unload_count[mid]
        async with self._lock():
            if self._unload_count[mid] != unloads_seen:
                # fifo.go OnUnload: requests waiting for a model that is unloaded meanwhile get the error.
                raise LoadFailed(MODEL_UNLOADED)
            if self.state[mid] == "ready":
                return
            for other in list(self.models):
                if other != mid and self.state[other] == "ready":
                    while self.inflight[other]:  # StopWaitForInflightRequest
                        await asyncio.sleep(0.01)
                    if await self._stop(other):
                        self.swap_count += 1
            spec = self.models[mid]
            abort = self._aborts[mid] = asyncio.Event()
            with self._mutex:
                self.state[mid] = "starting"
            try:
                # process_command.go: a Stop during the start cancels it (ErrStartAborted); the process is killed
                # before its weights reach the card.
                await asyncio.wait_for(abort.wait(), min(spec.load_s, self.health_check_timeout))
            except TimeoutError:
                pass
            finally:
                self._aborts.pop(mid, None)
            if abort.is_set():
                self.state[mid] = "stopped"
                self.unloads.append(mid)
                raise LoadFailed(MODEL_UNLOADED)
            if spec.load_s > self.health_check_timeout:
                self.state[mid] = "stopped"
                raise LoadFailed(f"health check timed out after {_go_duration(self.health_check_timeout)}")
            with self._mutex:
                try:
                    self.gpu.alloc(mid, spec.vram_mib)
                except OutOfMemory as exc:
                    self.state[mid] = "stopped"
                    # llama-server logs the cudaMalloc failure and exits; llama-swap says only this (the OOM is
                    # in the model's log and in the card's oom_count).
                    raise LoadFailed("upstream command exited prematurely") from exc
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

    async def _unload(self, *mids: str) -> None:
        """baseRouter.Unload: blocks until each targeted process has stopped. A model still starting is
        aborted (starting → stopped, no memory taken); whoever waits for it gets MODEL_UNLOADED."""
        for mid in mids or self.models:
            self._unload_count[mid] += 1
            if mid in self._aborts:
                self._aborts[mid].set()
        async with self._lock():
            await asyncio.gather(*(self._stop(m) for m in mids or self.models))

    # ---- HTTP ----
    def _error(self, request: Request, status: int, message: str) -> Response:
        """swaputil.SendResponse."""
        accept = request.headers.get("accept", "")
        if "text/plain" in accept:
            return PlainTextResponse(f"llama-swap: {message}", status_code=status)
        if "text/html" in accept:
            return Response(f"<html><body><h1>llama-swap</h1><p>{html.escape(message)}</p></body></html>",
                            status_code=status, media_type="text/html")
        return JSONResponse(error_body(status, message, envelope=self.switches.error_envelope), status_code=status)

    def _authorised(self, request: Request) -> bool:
        if not self.api_keys:
            return True
        auth = request.headers.get("authorization", "")
        scheme, _, credentials = auth.partition(" ")
        bearer = basic = ""
        if scheme.lower() == "bearer":
            bearer = credentials
        elif scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError, IndexError):
                basic = base64.b64decode(credentials).decode().split(":", 1)[1]
        return (basic or bearer or request.headers.get("x-api-key", "")) in self.api_keys

    def _model_records(self) -> list[dict[str, Any]]:
        created = int(time.time())

        def record(rid: str, name: str, description: str, status: str, meta: dict[str, Any]) -> dict[str, Any]:
            rec: dict[str, Any] = {"id": rid, "object": "model", "created": created, "owned_by": "llama-swap"}
            if name.strip():
                rec["name"] = name.strip()
            if description.strip():
                rec["description"] = description.strip()
            rec["meta"] = {"llamaswap": meta}
            rec["status"] = {"value": status}
            return rec

        data = []
        for m in self.models.values():
            if m.unlisted:
                continue
            status = "loaded" if self.state[m.id] in ACTIVE else "unloaded"
            meta: dict[str, Any] = {"type": "model"}
            if m.aliases:
                meta["aliases"] = list(m.aliases)
            data.append(record(m.id, m.name, m.description, status, meta))
            if self.include_aliases_in_list:
                data += [record(a, m.name, m.description, status, {"type": "alias", "modelID": m.id})
                         for a in m.aliases if a.strip()]
        for pid, models in self.peers.items():
            data += [record(f"{pid}/{m}", f"{pid}: {m}", "", "unloaded", {"type": "peer", "peerID": pid})
                     for m in models]
        return sorted(data, key=lambda r: r["id"])

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

        app = FastAPI(title="llama-swap emulator", lifespan=lifespan, docs_url=None, redoc_url=None,
                      openapi_url=None)
        app.state.emulator = emu
        _add_gpu_routes(app, self.gpu)

        @app.exception_handler(StarletteHTTPException)
        async def go_mux_errors(request: Request, exc: StarletteHTTPException) -> Response:
            # net/http's ServeMux: plain text, not llama-swap's error format.
            if exc.status_code == 405:
                return PlainTextResponse("Method Not Allowed\n", status_code=405, headers=exc.headers)
            return PlainTextResponse("404 page not found\n", status_code=exc.status_code)

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
            protected = path not in ("/health", "/wol-health")
            if protected and not emu._authorised(request):
                resp = emu._error(request, 401, "unauthorized: invalid or missing API key")
                resp.headers["WWW-Authenticate"] = 'Basic realm="llama-swap"'
                return resp
            if sw.legacy_no_model_unload and path.startswith("/api/models/unload"):
                return PlainTextResponse("404 page not found", status_code=404)
            if sw.legacy_no_unload and path == "/unload":
                return PlainTextResponse("404 page not found", status_code=404)
            return await call_next(request)

        @app.api_route("/health", methods=["GET", "HEAD"])
        @app.api_route("/wol-health", methods=["GET", "HEAD"])
        async def health() -> Response:
            return PlainTextResponse("OK")

        @app.api_route("/v1/models", methods=["GET", "HEAD"])
        @app.api_route("/models", methods=["GET", "HEAD"])
        async def list_models() -> dict[str, Any]:
            return {"object": "list", "data": emu._model_records()}

        @app.api_route("/running", methods=["GET", "HEAD"])
        async def running() -> dict[str, Any]:
            with emu._mutex:
                states = dict(emu.state)
            return {"running": [{"model": m.id, "state": states[m.id], "cmd": m.cmd, "proxy": m.proxy, "ttl": m.ttl,
                                 "name": m.name, "description": m.description}
                                for m in sorted(emu.models.values(), key=lambda m: m.id) if states[m.id] in ACTIVE]}

        @app.get("/unload")
        async def unload_all() -> Response:
            await emu._unload()
            emu.requests.append({"path": "/unload"})
            return PlainTextResponse("OK")

        @app.post("/api/models/unload")
        async def api_unload_all() -> dict[str, str]:
            await emu._unload()
            return {"msg": "ok"}

        @app.post("/api/models/unload/{model:path}")
        async def api_unload(model: str, request: Request) -> Response:
            requested = model.removeprefix("/")
            emu.requests.append({"path": "/api/models/unload", "model": requested})
            mid = emu.real_name(requested)
            if mid is None:
                return emu._error(request, 404, "model not found")
            await emu._unload(mid)
            return PlainTextResponse("OK")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            raw = await request.body()
            body: Any = None
            if "application/json" in request.headers.get("content-type", ""):
                with contextlib.suppress(ValueError):
                    body = json.loads(raw)
            requested = body.get("model") if isinstance(body, dict) else None
            if not isinstance(requested, str) or not requested:
                return emu._error(request, 404, "no model id could be identified")
            emu.requests.append({"path": "/v1/chat/completions", "model": requested})
            mid = emu.real_name(requested)
            if mid is None and emu.peer_of(requested) is None:
                return emu._error(request, 404, "no router for requested model")
            try:
                chat_req = _parse_chat(mid or requested, body)
            except ValueError as exc:
                return _llama_server_error(400, str(exc), "invalid_request_error")
            if mid is None:  # a peer's model: another machine answers, with its own memory
                return _completion(requested, chat_req, emu.answers.get(requested, f"[{requested}] ok"), body)
            spec = emu.models[mid]
            if chat_req.images and not spec.vision:
                return _llama_server_error(500, "image input is not supported - hint: if this is unexpected, you may "
                                           "need to provide the mmproj", "server_error")
            try:
                await emu._ensure_ready(mid)
            except LoadFailed as exc:
                return emu._error(request, 500, f"unspecific error: {exc}")
            emu.inflight[mid] += 1
            try:
                await asyncio.sleep(spec.infer_s)
                answer = emu.answers.get(mid, f"[{mid}] ok")
            finally:
                emu.inflight[mid] -= 1
                emu.last_used[mid] = time.monotonic()
            return _completion(requested, chat_req, answer, body)

        return app


def _llama_server_error(status: int, message: str, kind: str) -> Response:
    """llama-server's own error body (tools/server: format_error_response)."""
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status_code=status)


def _completion(model: str, req: ChatRequest, answer: Answer, body: dict[str, Any]) -> Response:
    """llama-server's answer: one chat.completion, or with `stream: true` a stream of chunks as SSE."""
    text = answer(req) if callable(answer) else str(answer)
    cid, created = f"chatcmpl-emu{time.monotonic_ns()}", int(time.time())
    prompt_tokens, completion_tokens = max(1, len(req.text.split())), max(1, len(text.split()))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if not body.get("stream"):
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage})

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}) + "\n\n"

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": None}, None)
        for word in re.findall(r"\S+\s*", text) or [""]:
            yield chunk({"content": word}, None)
        yield chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                         "model": model, "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


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
# The face detector, on the same card
# ---------------------------------------------------------------------------------------------------------
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

    @app.get("/ready")
    async def ready() -> Response:  # the real service's llama-swap checkEndpoint (facedetect.api)
        return JSONResponse(await health(), status_code=200 if st["loaded"] else 503)

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
        # A stopped container drops its connections: requests still in flight (a model "inferring" for an hour)
        # are cancelled a moment after the stop instead of holding it for the 15 s join below.
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=0.5)
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
