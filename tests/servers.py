"""Run real servers on loopback for tests: uvicorn in a thread, or a whole command in a subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from httpretry import tls_context


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with httpx.Client(verify=tls_context(), timeout=1.0) as client:  # one client for all the tries
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
            try:
                client.get(url)
                return
            except httpx.HTTPError as exc:
                last = exc
                time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


@contextlib.contextmanager
def serve_app(app: Any, *, port: int | None = None, health: str = "/", **options: Any) -> Iterator[str]:
    """Serve an ASGI app with a real uvicorn server on 127.0.0.1 in a background thread; yield its base URL.
    ``options`` go to ``uvicorn.Config`` (e.g. ``proxy_headers=False``, as ``mikubot web`` runs)."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options)
    with run_server(uvicorn.Server(config)) as base:
        yield base


@contextlib.contextmanager
def run_server(server: uvicorn.Server) -> Iterator[str]:
    """Run a configured uvicorn server (e.g. ``mikubot.web.make_server``'s, with the serving policy) in a
    background thread until it has started; yield its base URL."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://{server.config.host}:{server.config.port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn server thread died during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start in 30 s")
            time.sleep(0.02)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextlib.contextmanager
def run_command(args: list[str], *, url: str, env: dict[str, str] | None = None, timeout: float = 60.0,
                log: Path | None = None, preexec_fn: Callable[[], None] | None = None) -> Iterator[subprocess.Popen]:
    """Start a console command (e.g. ``facedetect serve``) as its own process and wait until ``url`` answers.
    Its output goes to ``proc.stdout`` (text), or into the file ``log``; ``preexec_fn`` runs in the child
    before the command (e.g. a lower open-file limit)."""
    full_env = {**os.environ, **(env or {})}
    if log is None:
        proc = subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=preexec_fn)
    else:
        with open(log, "w") as sink:
            proc = subprocess.Popen(args, env=full_env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    try:
        wait_http(url, timeout=timeout, proc=proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def venv_bin(name: str) -> str:
    """The console script installed beside the running interpreter."""
    return os.path.join(os.path.dirname(sys.executable), name)
