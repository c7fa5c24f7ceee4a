"""Ollama's load/unload surface on the simulated card, as Ollama v0.32.15's source defines it.

    GET  /                → "Ollama is running"
    GET  /api/tags        → {"models": [{"name", "model", "size", ...}]}
    GET  /api/ps          → {"models": [{"name", "model", "size", "size_vram" (bytes), "digest", "details",
                             "expires_at", "context_length"}]}, longest time left first (server/routes.go PsHandler)
    POST /api/generate    → an empty prompt loads the model (done_reason "load"); with `keep_alive: 0` it
                            unloads: server/routes.go calls `sched.expireRunner` and answers at once
                            {"model": <as asked>, "created_at", "response": "", "done": true, "done_reason":
                            "unload"}. expireRunner (server/sched.go) only queues the runner on `expiredCh`:
                            the runner process stops later, and until then /api/ps still lists the model
                            (with `expires_at` now). Unknown models → 404 {"error": "model '<name>' not found"}.

Per model (emulator-only): `vram_mib`, `load_s`, `stop_s` (from the answer to the process being gone) and
`release_s` (from then to the driver handing the memory back). Names default to the `:latest` tag.
`app.state.ollama` holds `loaded` (name → monotonic load time) and `unloads` (names, as each process stops).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from emulators.llama_swap import OutOfMemory, SimulatedGpu

OLLAMA_VERSION = "v0.32.15"


def norm(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def create_ollama_app(models: Mapping[str, Mapping[str, float]], gpu: SimulatedGpu) -> FastAPI:
    specs = {norm(k): dict(v) for k, v in models.items()}
    loaded: dict[str, float] = {}
    expiring: dict[str, str] = {}  # name → expires_at of runners queued to stop
    state: dict[str, Any] = {"loaded": loaded, "unloads": []}
    tasks: set[asyncio.Task] = set()
    app = FastAPI(title="ollama emulator")
    app.state.ollama = state
    app.state.loaded = loaded

    async def stop_runner(name: str) -> None:
        """The scheduler's side of expiredCh: the runner process exits later, then the driver lets go."""
        await asyncio.sleep(specs[name].get("stop_s", 0))
        loaded.pop(name, None)
        expiring.pop(name, None)
        gpu.free(f"ollama:{name}", specs[name].get("release_s", 0))
        state["unloads"].append(name)

    @app.get("/")
    async def root() -> Response:
        return PlainTextResponse("Ollama is running")

    @app.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [{"name": n, "model": n, "size": int(s.get("vram_mib", 0) * 2**20)} for n, s in specs.items()]}

    @app.get("/api/ps")
    async def ps() -> dict[str, Any]:
        return {"models": [{"name": n, "model": n, "size": int(specs[n]["vram_mib"] * 2**20),
                            "size_vram": int(specs[n]["vram_mib"] * 2**20), "digest": f"sha256:{n.encode().hex()}",
                            "details": {"format": "gguf"}, "expires_at": expiring.get(n, "2099-01-01T00:00:00Z"),
                            "context_length": 4096} for n in loaded]}

    @app.post("/api/generate")
    async def generate(body: dict[str, Any]) -> Response:
        asked = str(body.get("model", ""))
        name = norm(asked)
        if name not in specs:
            return JSONResponse({"error": f"model '{asked}' not found"}, status_code=404)
        if not body.get("prompt") and body.get("keep_alive") in (0, "0", "0s"):
            if name in loaded and name not in expiring:
                expiring[name] = _now()
                task = asyncio.create_task(stop_runner(name))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            return JSONResponse({"model": asked, "created_at": _now(), "response": "", "done": True,
                                 "done_reason": "unload"})
        if name not in loaded:
            await asyncio.sleep(specs[name].get("load_s", 0))
            try:
                gpu.alloc(f"ollama:{name}", specs[name]["vram_mib"])
            except OutOfMemory as exc:
                return JSONResponse({"error": str(exc)}, status_code=500)
            loaded[name] = time.monotonic()
        return JSONResponse({"model": asked, "created_at": _now(), "response": "", "done": True, "done_reason": "load"})

    return app
