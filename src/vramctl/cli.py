"""`vramctl`: see what holds VRAM, make room now, watch it live.

    vramctl status [--json]            GPU + what each server has loaded
    vramctl free CONSUMER | --mib N    make room now and print the timeline
    vramctl watch                      live view
    vramctl hold DETECTOR_URL          llama-swap's `cmd` for the face detector (docs/vramctl.md)
    vramctl run --vram-mib N -- CMD    wait until the card shows N MiB free, then become CMD (llama-swap's models)

Each command takes `--llama-swap URL` (default $MIKU_LLAMA_SWAP_URL, else http://localhost:8090) and
`--config FILE` (YAML with the VramSettings fields; default $MIKU_VRAM_CONFIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from httpretry import tls_context

from .config import DETECTOR_VRAM_MIB, VramSettings
from .coordinator import Coordinator, Reservation
from .errors import VramError
from .hold import DetectorHold, hold_until_signalled, wait_for_room
from .probes import select_probe

app = typer.Typer(help="VRAM coordination: measure, unload, wait.", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error is one line, however long: the terminal wraps it

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", envvar="MIKU_VRAM_CONFIG",
                                                   help="YAML file with the vram settings (consumers, probe, ...).")]
LlamaSwapOpt = Annotated[Optional[str], typer.Option("--llama-swap", envvar="MIKU_LLAMA_SWAP_URL",
                                                     help="llama-swap base URL (default: http://localhost:8090).")]
ProbeOpt = Annotated[Optional[str], typer.Option("--probe", help="auto | nvml | nvidia-smi | none | emulator.")]
ProbeUrlOpt = Annotated[Optional[str], typer.Option("--probe-url", help="Emulator base URL for --probe emulator.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _settings(config: Path | None, llama_swap: str | None, probe: str | None, probe_url: str | None,
              **extra: Any) -> VramSettings:
    overrides = {"llama_swap_url": llama_swap, "probe": probe, "probe_url": probe_url, **extra}
    try:
        if config is not None:
            if not config.exists():
                raise typer.BadParameter(f"{config} does not exist", param_hint="--config")
            return VramSettings.from_yaml(config, **overrides)
        return VramSettings.from_mapping({}, **overrides)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]invalid configuration:[/red] {msgs}")
        raise typer.Exit(2) from exc
    except (OSError, ValueError) as exc:
        err.print(f"[red]cannot read configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


def _run(coro_fn) -> Any:
    try:
        return asyncio.run(coro_fn())
    except VramError as exc:  # a probe's ProbeError included
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:
        raise typer.Exit(130) from exc


def _fmt_mib(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} MiB"


def _fmt_need(consumer: dict[str, Any]) -> str:
    """The declared need, or "0 (CPU)" when the consumer's server measured that it runs on the CPU."""
    if consumer.get("uses_gpu") is False:
        return "0 (CPU)"
    return _fmt_mib(consumer["vram_mib"])


def status_tables(st: dict[str, Any]) -> Group:
    gpu = st.get("gpu")
    g = Table(title=f"GPU (probe: {st['probe']})", title_justify="left")
    for col in ("device", "total", "used", "free"):
        g.add_column(col)
    if gpu:
        g.add_row(gpu.get("device") or "?", _fmt_mib(gpu["total_mib"]), _fmt_mib(gpu["used_mib"]), _fmt_mib(gpu["free_mib"]))
        for p in gpu.get("processes") or []:
            g.add_row(f"  {p['name']}" + (f" (pid {p['pid']})" if p.get("pid") else ""), "", _fmt_mib(p.get("used_mib")), "")
    else:
        g.add_row(st.get("probe_error") or "no GPU measured", "—", "—", "—")
    c = Table(title="Consumers", title_justify="left")
    for col in ("name", "kind", "model", "needs", "prio", "loaded", "held"):
        c.add_column(col, no_wrap=True)
    # The details (where each consumer lives, why it is not loaded) are long: printed under the table,
    # one line each, so the table stays readable on an 80-column terminal.
    details = []
    for x in st["consumers"]:
        loaded = {True: "[green]yes[/green]", False: "no", None: "[yellow]?[/yellow]"}[x["loaded"]]
        c.add_row(x["name"], x["kind"], x["model"] or "", _fmt_need(x), str(x["priority"]), loaded,
                  str(x["held"] or ""))
        if x["detail"]:
            details.append(Text.assemble((f"{x['name']}: ", "bold"), x["detail"]))
    return Group(g, c, *details)


def timeline_table(r: Reservation) -> Table:
    t = Table(title=f"Reservation for {r.consumer}: waited {r.waited_s:.3f} s; unloaded: {', '.join(r.unloaded) or 'nothing'}",
              title_justify="left")
    for col in ("t (s)", "event", "consumer", "free", "detail"):
        t.add_column(col)
    for e in r.timeline.events:
        t.add_row(f"{e.t:.3f}", e.event, e.consumer or "", _fmt_mib(e.free_mib), e.detail)
    return t


@app.command()
def status(config: ConfigOpt = None, llama_swap: LlamaSwapOpt = None, probe: ProbeOpt = None,
           probe_url: ProbeUrlOpt = None, as_json: JsonOpt = False) -> None:
    """GPU memory and what each server has loaded."""
    s = _settings(config, llama_swap, probe, probe_url)

    async def go() -> dict[str, Any]:
        async with Coordinator(s) as coord:
            return await coord.status()

    st = _run(go)
    if as_json:
        print(json.dumps(st, indent=2, default=str))
    else:
        console.print(status_tables(st))


@app.command()
def free(consumer: Annotated[Optional[str], typer.Argument(help="A configured consumer to make room for.")] = None,
         mib: Annotated[Optional[int], typer.Option("--mib", min=1, help="Make room for N MiB instead.")] = None,
         timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.01, help="Seconds to wait.")] = None,
         config: ConfigOpt = None, llama_swap: LlamaSwapOpt = None, probe: ProbeOpt = None,
         probe_url: ProbeUrlOpt = None, as_json: JsonOpt = False) -> None:
    """Make room now (unload, then wait until the memory is free) and print the timeline."""
    if (consumer is None) == (mib is None):
        raise typer.BadParameter("give a CONSUMER or --mib N (one of them)")
    s = _settings(config, llama_swap, probe, probe_url, timeout_s=timeout)
    if consumer is not None and all(c.name != consumer for c in s.consumers):
        _unknown(s, consumer)

    async def go() -> Reservation:
        async with Coordinator(s) as coord:
            cm = coord.reserve(consumer, note="vramctl free") if consumer else coord.reserve_mib(mib or 0, note="vramctl free")
            async with cm as r:
                return r

    r = _run(go)
    if as_json:
        print(json.dumps(r.to_json(), indent=2))
    else:
        console.print(timeline_table(r))


def _unknown(s: VramSettings, name: str) -> None:
    err.print(f"[red]error:[/red] unknown consumer {name!r}; configured: {', '.join(c.name for c in s.consumers)}")
    raise typer.Exit(2)


@app.command()
def watch(interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between refreshes.")] = 1.0,
          count: Annotated[int, typer.Option("--count", min=0, help="Stop after N refreshes (0 = until Ctrl-C).")] = 0,
          config: ConfigOpt = None, llama_swap: LlamaSwapOpt = None, probe: ProbeOpt = None,
          probe_url: ProbeUrlOpt = None) -> None:
    """Live view of the card and the consumers."""
    s = _settings(config, llama_swap, probe, probe_url)

    async def go() -> None:
        async with Coordinator(s) as coord:
            n = 0
            # On a terminal one view redrawn in place; piped to a file or a program, rich's Live would hold
            # every frame back until it stops, so each refresh is printed (and flushed) as it comes.
            with Live(console=console, auto_refresh=False) if console.is_terminal else contextlib.nullcontext() as live:
                while True:
                    st = await coord.status()
                    view = Group(status_tables(st), f"[dim]{time.strftime('%H:%M:%S')} · every {interval:g} s · Ctrl-C to stop[/dim]")
                    if live is not None:
                        live.update(view, refresh=True)
                    else:
                        console.print(view)
                        console.file.flush()
                    n += 1
                    if count and n >= count:
                        return
                    await asyncio.sleep(interval)

    _run(go)


@app.command()
def hold(detector_url: Annotated[str, typer.Argument(help="The face detector service's base URL.")],
         vram_mib: Annotated[int, typer.Option("--vram-mib", min=0, envvar="MIKU_DETECTOR_VRAM_MIB",
                                               help="What the detector needs on the card.")] = DETECTOR_VRAM_MIB,
         timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.01,
                                                          help="Seconds to wait for the room (and, when "
                                                               "stopping, for the memory to come back).")] = None,
         config: ConfigOpt = None, probe: ProbeOpt = None, probe_url: ProbeUrlOpt = None) -> None:
    """Load the face detector once the card shows its room free, hold it until SIGTERM, then unload it and
    exit once the memory is back: the `cmd` of the detector as a llama-swap model."""
    s = _settings(config, None, probe, probe_url, timeout_s=timeout)

    async def go() -> None:
        async with httpx.AsyncClient(timeout=s.http_timeout_s, verify=tls_context()) as http:
            h = DetectorHold(detector_url, vram_mib, select_probe(s, http), http, safety_margin_mib=s.safety_margin_mib,
                             poll_s=s.poll_s, timeout_s=s.timeout_s, token=s.facedetect_token)
            await hold_until_signalled(h)

    _run(go)


@app.command("run")
def run_model(command: Annotated[list[str], typer.Argument(help="The model server and its arguments, after --.")],
              vram_mib: Annotated[int, typer.Option("--vram-mib", min=0,
                                                    help="What the model needs on the card; 0: start at once.")],
              timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.01,
                                                               help="Seconds to wait for the room.")] = None,
              config: ConfigOpt = None, probe: ProbeOpt = None, probe_url: ProbeUrlOpt = None) -> None:
    """Wait until the card shows VRAM_MIB (+ the safety margin) free, then become COMMAND (exec, same pid):
    the start of each llama-server under llama-swap, so a model never loads on memory the driver has not yet
    returned from the one llama-swap just stopped. No room within --timeout: exit 1, COMMAND never starts."""
    s = _settings(config, None, probe, probe_url, timeout_s=timeout)

    async def go() -> None:
        async with httpx.AsyncClient(timeout=s.http_timeout_s, verify=tls_context()) as http:
            await wait_for_room(select_probe(s, http), vram_mib, safety_margin_mib=s.safety_margin_mib,
                                timeout_s=s.timeout_s, poll_s=s.poll_s,
                                say=lambda line: print(f"vramctl run: {line}", file=sys.stderr, flush=True))

    _run(go)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot start {command[0]}: {exc.strerror}")
        raise typer.Exit(127) from exc


def main() -> None:
    app()


if __name__ == "__main__":
    main()
