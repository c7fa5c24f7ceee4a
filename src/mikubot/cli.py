"""``mikubot``: the avatar pipeline from a terminal.

    mikubot pfp change [--dry-run] [--source SPEC] [--candidates K] [--out FILE] [--guild ID] [--json]
    mikubot pfp history [--limit N] [--guild ID | --global] [--json]
    mikubot pfp restore ID [--dry-run] [--json]
    mikubot config show [--json]
    mikubot doctor [--json]

Human output goes through rich (a live table of the stages while a change runs); ``--json`` prints
exactly one JSON document on stdout (the live display then goes to stderr) so scripts can parse it.
Exit codes: 0 done, 1 the change/check failed, 2 bad configuration or arguments.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mikubot.bot import PANEL_HOST, PANEL_PORT
from mikubot.config import CONFIG_ENV, ConfigFileError, Settings, load_settings
from mikubot.events import (STAGES, Cropped, Downloaded, DryRunSkip, EventBus, FacesFound, Failure, Fallback, Found,
                            ProgressEvent, RecordDone, Reserved, Skipped, StageDone, Verdict)
from mikubot.history import ChangeLocked, History, HistoryError, HistoryRow
from mikubot.sources import SPEC_HELP

if TYPE_CHECKING:  # the record module imports the crop geometry; the CLI imports the pipeline only when it runs one
    from mikubot.record import ChangeRecord

app = typer.Typer(help="Miku's avatar pipeline: find art, verify, crop around the face, upload.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
pfp = typer.Typer(help="Profile picture: change, history, restore.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(pfp, name="pfp")
app.add_typer(config_app, name="config")

STATUS_STYLE = {"start": "yellow", "progress": "yellow", "done": "green", "skip": "cyan", "fallback": "magenta",
                "fail": "bold red", "waiting": "dim"}
STATUS_ICON = {"start": "…", "progress": "…", "done": "✓", "skip": "↷", "fallback": "↘", "fail": "✗"}


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigFileError as exc:
        _die(str(exc))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        _die(f"invalid configuration: {problems}")
    raise AssertionError("unreachable")


def _die(message: str, code: int = 2) -> None:
    # One line however long (the terminal wraps it): a message that names a path or URL reads and greps the
    # same at any width and in a log (rich would cut it at 80 columns when stderr is no terminal).
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _reserved(r: Reserved) -> str:
    unl = f", unloaded {', '.join(r.unloaded)}" if r.unloaded else ""
    return f"reserved {r.reserved} after {r.waited_s:.2f} s{unl}"


def describe_event(ev: ProgressEvent) -> str:
    """A progress event as the live table's detail column shows it ("" keeps the stage's last one)."""
    match ev.detail:
        case Failure(error=text) | Fallback(reason=text) | Skipped(reason=text) | DryRunSkip(reason=str() as text):
            return text
        case StageDone(summary=str() as summary):
            return summary  # the stage's last word, over all of its candidates
        case Found(found=found):
            return f"{found} candidates"
        case Downloaded(key=key, size=[width, height]):
            return f"{key[:40]} {width}x{height}"
        case Verdict(method=method, confidence=confidence, description=description) if ev.status == "progress":
            return f"{method}: {confidence:.2f} {description}"
        case Reserved() as reserved:
            return _reserved(reserved)
        case FacesFound(faces=faces, via=via):
            return f"{faces} face(s) via {via}"
        case Cropped(method=method, box=box):
            return f"{method} crop {box}"
        case RecordDone(status=status):
            return status
    return ""


class StageBoard:
    """The live table: one row per stage with its latest status, detail and time."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        # ``stages``: in the order the change runs them (``mikubot.pipeline.stage_order``)
        self.rows: dict[str, tuple[str, str, float | None]] = {s: ("waiting", "", None) for s in stages}
        self.change_id: int | None = None

    def on_event(self, ev: ProgressEvent) -> None:
        self.change_id = ev.change_id
        if ev.stage not in self.rows:
            return
        took = ev.detail.ms if isinstance(ev.detail, StageDone | RecordDone) else None
        old_status, old_detail, old_ms = self.rows[ev.stage]
        status: str = ev.status
        if ev.status in ("progress", "skip", "done") and old_status in ("fallback", "fail"):
            status = old_status  # a stage that fell back stays marked, even once it is done
        elif ev.status == "done" and ev.stage == "upload" and old_status == "skip":
            status = "skip"  # dry run: the upload was skipped, not done
        elif ev.status == "skip" and ev.stage != "upload":
            status = "progress"  # one candidate skipped; the stage goes on
        self.rows[ev.stage] = (status, describe_event(ev) or old_detail, float(took) if took is not None else old_ms)

    def render(self) -> Table:
        title = f"avatar change {self.change_id}" if self.change_id is not None else "avatar change"
        table = Table(title=title, show_edge=False, expand=False)
        # The detail takes whatever width the terminal leaves and wraps there (rich measures the console).
        table.add_column("stage", no_wrap=True)
        table.add_column("", no_wrap=True)
        table.add_column("detail", overflow="fold", ratio=1)
        table.add_column("ms", justify="right", no_wrap=True)
        for stage in self.rows:
            status, detail, ms = self.rows[stage]
            style = STATUS_STYLE.get(status, "")
            table.add_row(stage, f"[{style}]{STATUS_ICON.get(status, '·')}[/]", detail,
                          f"{ms:.0f}" if ms is not None else "")
        return table


def _run_with_board(coro_factory: Any, bus: EventBus, console: Console, stages: tuple[str, ...]) -> ChangeRecord:
    board = StageBoard(stages)
    with Live(board.render(), console=console, refresh_per_second=8, transient=False) as live:
        def update(ev: ProgressEvent) -> None:
            board.on_event(ev)
            live.update(board.render())

        bus.subscribe(update)
        return asyncio.run(coro_factory())


def _print_outcome(record: ChangeRecord, console: Console) -> None:
    # Each line whole (soft_wrap): paths are printed to be copied, and a log line is not cut at 80 columns.
    files = record.files
    if record.status == "failed":
        console.print(f"[bold red]❌ change {record.id} failed at {record.failed_stage}:[/] {record.error}",
                      highlight=False, soft_wrap=True)
        if record.avatar_path:
            console.print(f"   avatar kept: {record.avatar_path}  (apply later: mikubot pfp restore {record.id})",
                          highlight=False, soft_wrap=True)
    else:
        how = "applied to Discord" if record.status == "applied" else "written (dry run, Discord not called)"
        size = record.avatar_size or []
        console.print(f"[bold green]✅ avatar {how}:[/] {files.get('avatar')}  "
                      f"({'x'.join(map(str, size))}, {record.crop_method} crop)", highlight=False, soft_wrap=True)
        profile = f"server {record.guild_id} only (its own look)" if record.guild_id else "global"
        console.print(f"   profile:    {profile}", highlight=False, soft_wrap=True)
        if files.get("annotated"):
            console.print(f"   annotated:  {files['annotated']}", highlight=False, soft_wrap=True)
        if files.get("banner"):
            console.print(f"   banner:     {files['banner']}  ({'x'.join(map(str, record.banner_size or []))})",
                          highlight=False, soft_wrap=True)
        elif record.banner_reason:
            console.print(f"   banner:     {record.banner_reason}", highlight=False, soft_wrap=True)
        src = record.source
        console.print(f"   source:     {src.name} {src.filename or src.page_url or src.key}", highlight=False, soft_wrap=True)
        if record.description:
            console.print(f"   looks like: {record.description}", highlight=False, soft_wrap=True)
        if record.fallbacks:
            console.print(f"   fallbacks:  {', '.join(record.fallbacks)}", highlight=False, soft_wrap=True)
    console.print(f"   report:     {record.report_path}", highlight=False, soft_wrap=True)


CHANGE_HELP = ("Change the avatar: search → download → reserve → detect → verify → crop → upload → record.\n\n"
               "That is the order without a vision model (the default): the heuristic verifier reads the hair colour "
               "of the faces the detect stage found. With a vision model (MIKU_LLAMA_SWAP_URL) verify comes first: "
               "search → download → verify → reserve → detect → crop → upload → record.")


@pfp.command("change", help=CHANGE_HELP)
def pfp_change(
    dry_run: bool = typer.Option(False, "--dry-run", help="write the avatar to a file; never call Discord"),
    source: Optional[str] = typer.Option(None, "--source", help=SPEC_HELP),
    candidates: Optional[int] = typer.Option(None, "--candidates", "-k", min=1, max=20, help="K candidates to verify"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the avatar (and report, annotated image, banner) here"),
    guild: Optional[int] = typer.Option(None, "--guild", min=1, help="change this server's own look (its "
                                        "MIKU_GUILD_LOOKS entry; the bot's avatar, banner and bio there) instead "
                                        "of the global profile"),
    as_json: bool = typer.Option(False, "--json", help="print the change record as JSON"),
) -> None:
    """Change the avatar (the stages in the order they run: see CHANGE_HELP)."""
    from mikubot.pipeline import AvatarPipeline, stage_order

    settings = _settings(candidates=candidates)
    if guild is not None and settings.look_for(guild) is None:
        _die(f"server {guild} has no look of its own: add it to MIKU_GUILD_LOOKS (configured: "
             f"{', '.join(map(str, settings.guild_looks)) or 'none'})")
    console = Console(stderr=as_json)
    bus = EventBus()

    async def go() -> ChangeRecord:
        async with AvatarPipeline(settings, bus=bus) as pipeline:
            return await pipeline.change(source=source, dry_run=True if dry_run else None, out=out, guild_id=guild)

    try:
        record = _run_with_board(go, bus, console, stage_order(settings.for_guild(guild)))
    except ChangeLocked as exc:  # a bot or panel on the same data directory is changing the avatar
        _die(str(exc), code=1)
    if not console.is_terminal:
        console.line()
    if as_json:
        sys.stdout.write(json.dumps(record.to_json(), indent=2) + "\n")
    else:
        _print_outcome(record, console)
    raise typer.Exit(1 if record.status == "failed" else 0)


@pfp.command("history")
def pfp_history(
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000),
    guild: Optional[int] = typer.Option(None, "--guild", min=1, help="only this server's own looks"),
    global_only: bool = typer.Option(False, "--global", help="only changes of the global profile"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The latest changes, newest first (every profile unless --guild or --global)."""
    if guild is not None and global_only:
        _die("--guild and --global exclude each other")
    settings = _settings()
    rows = History(settings.history_path).list(limit, scope=guild if guild is not None else None if global_only else "all")
    if as_json:
        sys.stdout.write(json.dumps([r.model_dump(exclude={"events"}) for r in rows], indent=2, default=str) + "\n")
        return
    console = Console()
    if not rows:
        console.print(f"no changes yet in {settings.history_path}")
        return
    console.print(_history_table(rows))
    # The avatar files are named after the change (change-NNNNN.png) in one folder, named once below the table.
    for folder in sorted({str(Path(r.avatar_path).parent) for r in rows if r.avatar_path}):
        console.print(f"avatars (change-NNNNN.png) in {folder}", highlight=False, soft_wrap=True)


HISTORY_STYLE = {"applied": "green", "dry-run": "cyan", "failed": "red", "running": "yellow"}


def _history_table(rows: list[HistoryRow]) -> Table:
    """One line per change whatever the width: the short columns never wrap, the note and the source take
    what is left and end in "…" where the terminal is too narrow (--json has everything in full)."""
    table = Table(show_edge=False)
    servers = any(r.guild_id is not None for r in rows)
    for col in ("id", "status", "started (UTC)", "crop") + (("profile",) if servers else ()):
        table.add_column(col, no_wrap=True)
    table.add_column("note")  # the columns rich narrows to fit; their cells are cut, not wrapped (_one_line)
    table.add_column("source")
    for r in rows:
        source = _short_key(r.post_key) if r.post_key else r.source_spec
        note = r.error or r.description or ""
        if r.restored_from:
            note = f"restore of {r.restored_from}" + (f": {r.error}" if r.error else "")
        profile = (f"server {r.guild_id}" if r.guild_id is not None else "global",) if servers else ()
        table.add_row(str(r.id), f"[{HISTORY_STYLE[r.status]}]{r.status}[/]", _minute(r.started_at), r.crop_method or "",
                      *profile, _one_line(note), _one_line(source))
    return table


def _short_key(key: str) -> str:
    """A post key as a person tells keys apart: a file's SHA-256 (``local:…``) by its first 12 digits."""
    prefix, _, rest = key.partition(":")
    return f"{prefix}:{rest[:12]}…" if len(rest) == 64 and all(c in "0123456789abcdef" for c in rest) else key


def _one_line(text: str) -> Text:
    """A cell that ends in "…" where its column is too narrow, instead of wrapping onto more lines."""
    return Text(" ".join(text.split()), no_wrap=True, overflow="ellipsis")


def _minute(stamp: str) -> str:
    """An ISO timestamp to the minute (``2026-12-07 14:12``): the history's order is the id's."""
    return stamp.replace("T", " ")[:16]


@pfp.command("restore")
def pfp_restore(
    change_id: int = typer.Argument(..., help="the id from `mikubot pfp history`"),
    dry_run: bool = typer.Option(False, "--dry-run"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Apply the avatar of an earlier change again."""
    from mikubot.pipeline import AvatarPipeline

    settings = _settings()
    console = Console(stderr=as_json)

    async def go() -> ChangeRecord:
        async with AvatarPipeline(settings) as pipeline:
            return await pipeline.restore(change_id, dry_run=True if dry_run else None)

    try:
        record = asyncio.run(go())
    except HistoryError as exc:
        _die(str(exc), code=1)
    if as_json:
        sys.stdout.write(json.dumps(record.to_json(), indent=2) + "\n")
    elif record.status == "failed":
        console.print(f"[bold red]❌ restore of change {change_id} failed:[/] {record.error}", highlight=False, soft_wrap=True)
    else:
        how = "applied to Discord" if record.status == "applied" else "dry run: Discord not called"
        if record.guild_id:
            how += f" (server {record.guild_id} only)"
        console.print(f"[bold green]✅ avatar of change {change_id} {how}:[/] {record.avatar_path} "
                      f"(recorded as change {record.id})", highlight=False, soft_wrap=True)
        if record.banner_path or record.banner_reason:
            console.print(f"   banner:     {record.banner_path or record.banner_reason}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if record.status == "failed" else 0)


@config_app.command("show")
def config_show(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every setting with its value (secrets masked)."""
    settings = _settings()
    values = settings.masked()
    if as_json:
        sys.stdout.write(json.dumps(values, indent=2, default=str) + "\n")
        return
    # Names are never cut (they are what a person types) and each is shown once, as its environment variable
    # (a MIKU_CONFIG file uses the same name in lower case without MIKU_): the value folds in what is left.
    table = Table(show_edge=False)
    table.add_column("environment variable", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in values.items():
        env = "FACE_DETECTOR_URL" if name == "face_detector_url" else f"MIKU_{name.upper()}"
        shown = "(unset)" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        table.add_row(env, Text(shown))
    console = Console()
    console.print(table)
    console.print(f"in a {CONFIG_ENV} file: the same names in lower case without MIKU_ (danbooru_url, ...)",
                  highlight=False)
    console.print(f"dry run in effect: {settings.effective_dry_run}", highlight=False)


@app.command("doctor")
def doctor(as_json: bool = typer.Option(False, "--json")) -> None:
    """Check the detector, llama-swap, the GPU probe, the Discord token and the image source."""
    from mikubot.doctor import run_checks

    settings = _settings()
    checks = asyncio.run(run_checks(settings))
    if as_json:
        sys.stdout.write(json.dumps([c.to_json() for c in checks], indent=2) + "\n")
    else:
        console = Console()
        for c in checks:
            console.print(c.line, highlight=False, soft_wrap=True)
            if c.fix and c.state in ("fail", "warn"):
                console.print(f"   fix: {c.fix}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if any(c.state == "fail" for c in checks) else 0)


@app.command("run")
def run(
    host: str = typer.Option(PANEL_HOST, "--host", help="panel address; anything but loopback needs MIKU_WEB_TOKEN"),
    port: int = typer.Option(PANEL_PORT, "--port", min=1, max=65535, help="panel port"),
    no_bot: bool = typer.Option(False, "--no-bot", help="serve the panel (and schedule) without connecting to Discord"),
) -> None:
    """The Discord bot, the :3939 panel and the rotation schedule in one process (one event loop)."""
    import logging

    from mikubot.bot.app import serve

    from mikubot.web import BindRefused, check_bind

    settings = _settings()
    try:
        check_bind(host, settings)
    except BindRefused as exc:
        _die(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the rest
    try:
        asyncio.run(serve(settings, host=host, port=port, bot=not no_bot))
    except KeyboardInterrupt:
        pass


@app.command("web")
def web(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; any but loopback needs MIKU_WEB_TOKEN"),
    port: int = typer.Option(3939, "--port", min=1, max=65535),
) -> None:
    """The control panel and API alone (no Discord bot): http://127.0.0.1:3939."""
    from mikubot.web.command import run_web

    run_web(_settings(), host, port)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
