"""A model server stand-in for the real llama-swap to launch: an OpenAI-compatible llama-server look-alike
that loads in a set time and puts its memory on a simulated card.

llama-swap starts one llama-server per model (its `cmd`) and proxies the OpenAI API to it once the server's
`checkEndpoint` answers 200. There is no GPU and no model file here, so a test's llama-swap config names this
file as the `cmd` instead:

    cmd: /path/to/python /path/to/tests/emulators/model_server.py --port ${PORT} --alias vision
         --mmproj mmproj.gguf --load-s 0.5 --vram-mib 4608 --card http://127.0.0.1:PORT

It follows llama.cpp's tools/server (server.cpp) where llama-swap or the bot can tell:

- it listens at once and answers `GET /health` 503 `{"error": {"code": 503, "message": "Loading model",
  "type": "unavailable_error"}}` while the model loads (`--load-s` seconds), then 200 `{"status": "ok"}`;
- when the weights reach the card (the end of the load) it claims `--vram-mib` on the simulated card
  (`--card`: the base URL of an app serving `emulators.llama_swap`'s card routes, `/_emulator/alloc`, with
  this process's pid). A claim that does not fit ends the process as llama-server ends on
  `cudaMalloc failed: out of memory` (printed to stderr, exit 1): llama-swap then reports "upstream command
  exited prematurely". The card gives the memory back `--release-s` after the process is gone, whatever ended
  it (SIGTERM from llama-swap's unload, SIGKILL, a crash) — as the driver does; so the card must see this
  process's pid (the same PID namespace);
- `POST /v1/chat/completions` (503 while loading): a request with an image part to a model started without
  `--mmproj` gets llama-server's 500 "image input is not supported";
  otherwise one `chat.completion` whose content is `--answer` when the request holds an image (default:
  a yes in the JSON shape mikubot's vision check asks for) and `--text-answer` when it does not. No
  streaming: nothing that talks to it here streams;
- `GET /v1/models` lists the one model (`--alias`, else the model file's name); unknown paths get 404;
- llama-server's other options (`--ctx-size`, `--n-gpu-layers 99`, `--no-webui`, ...) are accepted and
  ignored, so a deployment's own command line (llama-swap/config.yaml's `server` macro) runs with only the
  executable swapped for this file;
- SIGTERM (llama-swap's stop) ends it after `--stop-s` seconds (llama-swap shows the model `stopping`
  meanwhile).

`--journal FILE` appends one JSON line per chat request ({"model", "text", "images": [byte sizes],
"authorization": whether a bearer token reached it}) so a test can see what went through the proxy.

Standard library only, and imports nothing of the repository: llama-swap runs it as a plain script with
whatever Python is named in `cmd` (the test venv's, or python3 in a container image), and it starts in
tens of milliseconds — llama-swap health-checks 250 ms after the start and then once a second, so a slow
start costs every load a second.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

YES = ('{"is_character": true, "confidence": 0.93, '
       '"description": "A girl with long teal twin tails smiling at the viewer."}')
OOM_MESSAGE = "cudaMalloc failed: out of memory"  # llama.cpp's ggml-cuda log line; emulators.llama_swap uses it too
NO_MMPROJ = "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """llama-server's own options where they mean something here (`--host`, `--port`, `-m/--model`, `--alias`,
    `--mmproj`); its others (`--ctx-size`, `--n-gpu-layers`, ...) are accepted and ignored, so a config's
    real command line runs with only the executable swapped; then the stand-in's own."""
    p = argparse.ArgumentParser(description="a llama-server stand-in for tests (see the module docstring)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-m", "--model", default="model.gguf", help="the model file (named, never read)")
    p.add_argument("-a", "--alias", default="", help="the id it answers as (default: the model file's name)")
    p.add_argument("--mmproj", default="", help="a multimodal projector: the model accepts images")
    p.add_argument("--load-s", type=float, default=0.0, help="seconds before /health says ok")
    p.add_argument("--stop-s", type=float, default=0.0, help="seconds between SIGTERM and the exit")
    p.add_argument("--vram-mib", type=float, default=0.0, help="memory claimed on the card at the end of the load")
    p.add_argument("--release-s", type=float, default=0.0, help="the card frees the memory this long after the exit")
    p.add_argument("--card", default="", help="base URL of the simulated card (emulators.llama_swap card routes)")
    p.add_argument("--answer", default=YES, help="the content answered to a request with an image")
    p.add_argument("--text-answer", default="", help="the content answered to text only (default: '[MODEL] ok')")
    p.add_argument("--journal", default="", help="append one JSON line per chat request to this file")
    args, _llama_server_options = p.parse_known_args(argv)
    args.alias = args.alias or os.path.basename(args.model).removesuffix(".gguf")
    return args


class ModelServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ready = threading.Event()
        self._journal_lock = threading.Lock()

    # --- loading ------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Runs in its own thread: wait the load time, put the weights on the card, then serve."""
        time.sleep(self.args.load_s)
        if self.args.card and self.args.vram_mib:
            self._claim()
        self.ready.set()

    def _claim(self) -> None:
        body = json.dumps({"owner": self.args.alias, "mib": self.args.vram_mib, "pid": os.getpid(),
                           "release_s": self.args.release_s}).encode()
        req = urllib.request.Request(f"{self.args.card.rstrip('/')}/_emulator/alloc", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10):
                return
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            print(f"ggml_backend_cuda_buffer_type_alloc_buffer: {OOM_MESSAGE}: {detail}", file=sys.stderr, flush=True)
        except (urllib.error.URLError, OSError) as exc:
            print(f"model_server: the simulated card at {self.args.card} is unreachable: {exc}", file=sys.stderr,
                  flush=True)
        os._exit(1)  # llama-server exits when its buffers cannot be allocated

    # --- answers ------------------------------------------------------------------------------------------
    def chat(self, body: Any, authorised: bool) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return 400, llama_server_error(400, "'messages' must be a non-empty array", "invalid_request_error")
        texts: list[str] = []
        images: list[int] = []
        for message in body["messages"]:
            content = message.get("content") if isinstance(message, dict) else None
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(parts, list):
                return 400, llama_server_error(400, "message content must be a string or an array of parts",
                                               "invalid_request_error")
            for part in parts:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    texts.append(str(part.get("text", "")))
                elif kind == "image_url":
                    size = image_size(part.get("image_url"))
                    if size is None:
                        return 400, llama_server_error(400, "image_url must be a base64 data URI",
                                                       "invalid_request_error")
                    images.append(size)
                else:
                    return 400, llama_server_error(400, f"unsupported content part type {kind!r}",
                                                   "invalid_request_error")
        if images and not self.args.mmproj:
            return 500, llama_server_error(500, NO_MMPROJ, "server_error")
        self._journal({"model": self.args.alias, "text": "\n".join(texts), "images": images,
                       "authorization": authorised})
        content = self.args.answer if images else (self.args.text_answer or f"[{self.args.alias}] ok")
        prompt_tokens, completion_tokens = max(1, len(" ".join(texts).split())), max(1, len(content.split()))
        return 200, {
            "id": f"chatcmpl-standin{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": self.args.alias,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}

    def _journal(self, entry: dict[str, Any]) -> None:
        if not self.args.journal:
            return
        with self._journal_lock, open(self.args.journal, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def llama_server_error(status: int, message: str, kind: str) -> dict[str, Any]:
    """tools/server's format_error_response."""
    return {"error": {"code": status, "message": message, "type": kind}}


def image_size(image_url: Any) -> int | None:
    """The decoded size of a base64 data URI (llama-server fetches no URLs), or None when it is not one."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        return None
    try:
        return len(base64.b64decode(url.split(";base64,", 1)[1], validate=True))
    except (binascii.Error, ValueError):
        return None


def make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    loading = llama_server_error(503, "Loading model", "unavailable_error")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as llama-server; llama-swap's reverse proxy pools connections

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass  # llama-swap logs each proxied request itself

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._send(200, {"status": "ok"}) if server.ready.is_set() else self._send(503, loading)
            elif self.path in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": server.args.alias, "object": "model",
                                                              "created": int(time.time()), "owned_by": "llamacpp"}]})
            else:
                self._send(404, llama_server_error(404, "File Not Found", "not_found_error"))

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path not in ("/v1/chat/completions", "/chat/completions"):
                self._send(404, llama_server_error(404, "File Not Found", "not_found_error"))
                return
            if not server.ready.is_set():
                self._send(503, loading)
                return
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                self._send(400, llama_server_error(400, "the request body is not JSON", "invalid_request_error"))
                return
            status, answer = server.chat(body, self.headers.get("Authorization", "").startswith("Bearer "))
            self._send(status, answer)

    return Handler


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    server = ModelServer(args)
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(server))
    httpd.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        # The signal arrives in the main thread, which is serving: shut down from another one.
        def later() -> None:
            time.sleep(args.stop_s)
            os._exit(0)
        threading.Thread(target=later, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=server.load, daemon=True).start()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
