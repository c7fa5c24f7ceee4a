#!/usr/bin/env python3
"""The stack test's simulated card, in the llama-swap container beside the real llama-swap: the memory
each stand-in llama-server (llama_server_standin.py) holds while its process lives, summed like a driver
would, on GET /_emulator/vram in the shape vramctl's EmulatorProbe reads (src/vramctl/probes.py) — the
same shape as the in-process emulator's ledger (tests/emulators/llama_swap.py). A process that ended has
given its memory back. The bot reaches it at http://llama-swap:8099 (tests/stack/compose.ci.yml)."""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CARD_DIR = Path(os.environ.get("SIMULATED_GPU_DIR", "/tmp/simulated-gpu"))
TOTAL_MIB = float(os.environ.get("SIMULATED_GPU_TOTAL_MIB", "8192"))
PORT = int(os.environ.get("SIMULATED_GPU_PORT", "8099"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ledger() -> dict:
    processes = []
    for entry in sorted(CARD_DIR.glob("*.json")):
        pid = int(entry.stem)
        if not alive(pid):
            entry.unlink(missing_ok=True)
            continue
        held = json.loads(entry.read_text())
        processes.append({"pid": pid, "name": held["name"], "used_mib": float(held["used_mib"])})
    used = sum(p["used_mib"] for p in processes)
    return {"device": "simulated 8 GB card (stack test)", "total_mib": TOTAL_MIB, "used_mib": used,
            "free_mib": TOTAL_MIB - used, "processes": processes}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt: str, *args: object) -> None:
        pass  # vramctl polls it: one line per read would drown llama-swap's log

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/_emulator/vram":
            self.send_error(404)
            return
        data = json.dumps(ledger()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    CARD_DIR.mkdir(parents=True, exist_ok=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
