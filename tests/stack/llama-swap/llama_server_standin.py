#!/usr/bin/env python3
"""A stand-in for llama.cpp's `llama-server`, installed as /app/llama-server in the stack test's llama-swap
image, so the real llama-swap binary runs our shipped llama-swap/config.yaml unchanged: its `${server}`
macro starts this file with llama-server's own arguments. There is no GPU and no GGUF model here.

It follows llama.cpp's tools/server/server.cpp (the llama-server of the pinned image tag
v250-cuda-b10423), as far as llama-swap and the bot see it:
  - the model file must exist, else it exits 1 at start-up ("failed to open GGUF file"), as llama-server does;
  - it listens at once and answers GET /health with 503 {"error": {"code": 503, "message": "Loading model",
    "type": "unavailable_error"}} until the model is loaded, then 200 {"status": "ok"} (llama-swap's
    checkEndpoint waits for that);
  - POST /v1/chat/completions answers an OpenAI `chat.completion`; an image part without --mmproj is a 500
    "image input is not supported" error, as a text-only llama-server answers;
  - GET /v1/models lists the one model.
What a real model decides, the placeholder model file says (JSON written by scripts/stack-test.sh):
{"vram_mib": N, "load_s": S}. The answer to the bot's verification prompt is fixed: yes, confidence 0.9.

Loaded, it reports its memory to the simulated card (simulated_gpu.py in the same container) by writing
<SIMULATED_GPU_DIR>/<pid>.json; the card counts it while this process lives, as a driver would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CARD_DIR = Path(os.environ.get("SIMULATED_GPU_DIR", "/tmp/simulated-gpu"))
VERDICT = {"is_character": True, "confidence": 0.9,
           "description": "A character with long teal twin-tails (the stack test's stand-in vision model)."}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llama-server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--mmproj")
    p.add_argument("--ctx-size", "-c", type=int, default=4096)
    args, _ignored = p.parse_known_args(argv)  # --n-gpu-layers, --no-webui, ...: no meaning without a GPU
    return args


class Model:
    def __init__(self, args: argparse.Namespace) -> None:
        path = Path(args.model)
        try:
            spec = json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            sys.exit(f"llama_model_load: error loading model: failed to open GGUF file '{path}'")
        except ValueError:
            spec = {}
        if args.mmproj and not Path(args.mmproj).is_file():
            sys.exit(f"clip_model_load: failed to open mmproj file '{args.mmproj}'")
        self.id = path.name
        self.vision = bool(args.mmproj)
        self.vram_mib = float(spec.get("vram_mib", 1024))
        self.load_s = float(spec.get("load_s", 1.0))
        self.loaded = threading.Event()

    def load(self) -> None:
        time.sleep(self.load_s)  # the weights travelling to the card: what llama-swap waits for
        CARD_DIR.mkdir(parents=True, exist_ok=True)
        entry = CARD_DIR / f"{os.getpid()}.json"
        partial = entry.with_suffix(".tmp")  # renamed into place: the card never reads half an entry
        partial.write_text(json.dumps({"name": f"llama-server {self.id}", "used_mib": self.vram_mib}))
        partial.replace(entry)
        self.loaded.set()
        print(f"main: model loaded ({self.id}, {self.vram_mib:g} MiB on the simulated card)", flush=True)

    def answer(self, body: dict) -> tuple[int, dict]:
        messages = body.get("messages") or []
        has_image = any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
                        for m in messages if isinstance(m, dict))
        if has_image and not self.vision:
            return 500, {"error": {"code": 500, "message": "image input is not supported - hint: if this is "
                                   "unexpected, you may need to provide the mmproj", "type": "server_error"}}
        text = json.dumps(VERDICT) if has_image else "Hi! I'm the stack test's stand-in text model."
        return 200, {"id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()),
                     "model": body.get("model", self.id),
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def handler(model: Model) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            print(f"srv  log_server_r: {fmt % args}", flush=True)

        def send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def loading(self) -> bool:
            if model.loaded.is_set():
                return False
            self.send(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
            return True

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.loading():
                return
            if self.path in ("/health", "/v1/health"):
                self.send(200, {"status": "ok"})
            elif self.path in ("/v1/models", "/models"):
                self.send(200, {"object": "list", "data": [{"id": model.id, "object": "model", "owned_by": "llamacpp"}]})
            else:
                self.send(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.loading():
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self.send(400, {"error": {"code": 400, "message": "invalid JSON", "type": "invalid_request_error"}})
                return
            if self.path in ("/v1/chat/completions", "/chat/completions"):
                self.send(*model.answer(body))
            else:
                self.send(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

    return Handler


def main() -> None:
    args = parse_args(sys.argv[1:])
    model = Model(args)
    server = ThreadingHTTPServer((args.host, args.port), handler(model))
    print(f"main: server is listening on http://{args.host}:{args.port} - starting the main loop", flush=True)
    threading.Thread(target=model.load, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
