"""The real llama-swap on loopback, with model stand-ins (`emulators.model_server`) on a simulated card.

`make test` builds llama-swap from the pinned commit with Go (Makefile: `$(GOBIN_DIR)/llama-swap`) and passes
its path as MIKU_TEST_LLAMA_SWAP. Without Go there is no binary and the tests that need it are skipped, with
`SKIP_REASON` saying why. `serve(config, workdir)` writes the config, starts the binary on a free port and
stops it (and the model servers it started) at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import loopback
from servers import free_port, venv_bin, wait_http

BINARY_ENV = "MIKU_TEST_LLAMA_SWAP"
MODEL_SERVER = Path(__file__).resolve().parent / "emulators" / "model_server.py"


def start_port(models: int) -> int:
    """llama-swap's `startPort` for `models` models: it gives them consecutive ports (`${PORT}`) in sorted id
    order. A block that is free now, below the kernel's ephemeral range (where free_port's ports and every
    client connection's own port come from), so nothing takes one between now and the model's start."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(10000, low - models)
        if all(_bindable(base + i) for i in range(models)):
            return base
    raise RuntimeError(f"no {models} consecutive free ports below {low}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def binary() -> Path | None:
    path = os.environ.get(BINARY_ENV, "")
    return Path(path) if path and Path(path).is_file() else None


def _skip_reason() -> str:
    path = os.environ.get(BINARY_ENV, "")
    if not path:
        return (f"{BINARY_ENV} is not set: `make test` builds the real llama-swap with Go and sets it "
                "(or set it to a llama-swap binary yourself)")
    return (f"{BINARY_ENV}={path} does not exist: `make test` builds it only where Go is installed "
            "(https://go.dev/doc/install)")


SKIP_REASON = _skip_reason()
needs_binary = pytest.mark.skipif(binary() is None, reason=SKIP_REASON)


def model_server(card_url: str | None = None, *, vram_mib: float = 0, load_s: float = 0.0, stop_s: float = 0.0,
                 release_s: float = 0.0, journal: Path | None = None, answer: str | None = None) -> str:
    """The start of a `cmd` that runs the stand-in with this test venv's Python; llama-server's options
    (`--port ${PORT}`, `--alias`, `--mmproj` ...) follow it."""
    args = [sys.executable, str(MODEL_SERVER), "--load-s", str(load_s), "--stop-s", str(stop_s)]
    if card_url:
        args += ["--card", card_url, "--vram-mib", str(vram_mib), "--release-s", str(release_s)]
    if journal is not None:
        args += ["--journal", str(journal)]
    if answer is not None:
        args += ["--answer", answer]
    return shlex.join(args)


SHIPPED_SERVER = "/app/llama-server"  # the `server` macro's llama-server in llama-swap's image


def with_stand_in(config: dict[str, Any], stand_in: str, card_url: str | None) -> dict[str, Any]:
    """The shipped config with its executables for this machine: the `server` macro's llama-server →
    `stand_in` (a `model_server(...)` start), each model's `vramctl run` → this venv's vramctl reading the
    simulated card (no probe without one). Everything else (`--vram-mib N`, llama-server's options) stays."""
    exe, _, rest = config["macros"]["server"].partition(" ")
    assert exe == SHIPPED_SERVER, "the shipped macro starts llama-server from the llama-swap image"
    config["macros"]["server"] = f"{stand_in} {rest}"
    probe = ["--probe", "emulator", "--probe-url", card_url] if card_url else ["--probe", "none"]
    for model in config["models"].values():
        wrapper, sep, command = model["cmd"].partition(" -- ")
        if wrapper.split()[:2] == ["vramctl", "run"] and sep:
            model["cmd"] = f"{shlex.join([venv_bin('vramctl'), *wrapper.split()[1:], *probe])} -- {command}"
    return config


@dataclass
class RealLlamaSwap:
    url: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self, key: str | None = None) -> dict[str, str]:
        """`GET /running` as {model: state}."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = loopback.get(f"{self.url}/running", headers=headers, timeout=10)
        r.raise_for_status()
        return {m["model"]: m["state"] for m in r.json()["running"]}


def start_args(config_path: Path, port: int) -> list[str]:
    exe = binary()
    if exe is None:
        pytest.skip(SKIP_REASON)
    return [str(exe), "-config", str(config_path), "-listen", f"127.0.0.1:{port}"]


@contextlib.contextmanager
def serve(config: dict[str, Any] | str, workdir: Path, *, timeout: float = 60.0) -> Iterator[RealLlamaSwap]:
    """Run the real llama-swap with `config` (a mapping, or YAML text used as it is) until the block ends.
    Its output goes to workdir/llama-swap.log (read it in an assertion message when something fails)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "llama-swap.yaml"
    config_path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / "llama-swap.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(start_args(config_path, port), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/health", timeout=timeout, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"llama-swap did not start: {exc}\n{log_path.read_text(errors='replace')}") from exc
        yield RealLlamaSwap(url, config_path, log_path, proc)
    finally:
        proc.terminate()  # llama-swap stops its model servers before it exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
