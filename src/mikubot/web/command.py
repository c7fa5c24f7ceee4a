"""``mikubot web``: the panel alone, without a Discord bot (``mikubot run`` serves it beside the bot)."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from mikubot.config import Settings
from mikubot.web.auth import resolve_token
from mikubot.web.serve import BindRefused, make_server


def run_web(settings: Settings, host: str, port: int) -> None:
    """Serve the panel until interrupted. Exits 2 with the reason when the bind is refused."""
    err = Console(stderr=True)
    try:
        server = make_server(settings, host=host, port=port)
    except BindRefused as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _, where = resolve_token(settings.web_token, settings.data_dir)  # the same token the app uses; never printed
    shown = f"[{host}]" if ":" in host else host
    err.print(f"miku-bot panel on http://{shown}:{port}  (changes need the token from {where}"
              f"{'; dry run' if settings.effective_dry_run else ''})", highlight=False)
    server.run()
    if not server.started:  # the port was taken or the socket could not be opened: uvicorn logged why
        raise typer.Exit(1)
