"""``mikubot run``: the Discord bot, the :3939 panel and the rotation schedule in ONE process and ONE
event loop, sharing one pipeline and one ``ChangeRunner`` (the bot serves :3939 itself).

Start-up runs the ``doctor`` checks and logs each line ("✅ Anime face detector API connected").
Without a Discord token the panel still runs and every change is a dry run. The process lives as
long as the panel's server: SIGINT/SIGTERM stop uvicorn, and then everything else is closed. A bot
that cannot log in (a wrong token) is logged with its fix and leaves the panel running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord
import httpx

from httpretry import tls_context
from mikubot.bot import PANEL_HOST, PANEL_PORT
from mikubot.bot.announce import AfterChange
from mikubot.bot.client import MikuClient
from mikubot.bot.commands import BotState
from mikubot.bot.schedule import Rotation, RotationScheduler
from mikubot.config import Settings
from mikubot.doctor import run_checks
from mikubot.pipeline import AvatarPipeline
from mikubot.runner import ChangeRunner

log = logging.getLogger("mikubot")



async def log_doctor(settings: Settings, http: httpx.AsyncClient) -> None:
    for check in await run_checks(settings, http):
        level = logging.WARNING if check.state in ("fail", "warn") else logging.INFO
        log.log(level, "%s", check.line)
        if check.fix and check.state in ("fail", "warn"):
            log.log(level, "   fix: %s", check.fix)


async def _bot(client: MikuClient, token: str) -> None:
    try:
        await client.start(token)
    except discord.LoginFailure:
        log.error("❌ Discord rejected the bot token; fix MIKU_DISCORD_TOKEN (Developer Portal → Bot → Reset "
                  "Token). The panel keeps running.")
    except discord.PrivilegedIntentsRequired:
        log.error("❌ Discord refused the gateway intents; the bot needs none privileged — report this.")


async def serve(settings: Settings, *, host: str = PANEL_HOST, port: int = PANEL_PORT, bot: bool = True) -> None:
    from mikubot.web import check_bind, make_server  # the panel; imported here so the bot modules stay light
    from mikubot.web.auth import resolve_token

    check_bind(host, settings)  # before anything starts: refuse a network bind without MIKU_WEB_TOKEN
    http = httpx.AsyncClient(timeout=settings.http_timeout_s, verify=tls_context())
    pipeline = AvatarPipeline(settings, http=http)
    runner = ChangeRunner(pipeline)
    client: MikuClient | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        await log_doctor(settings, http)
        rotation = Rotation.from_settings(settings)
        scheduler = RotationScheduler(runner, rotation) if rotation is not None else None
        state = BotState(runner, scheduler)
        token = settings.discord_token.get_secret_value() if settings.discord_token is not None else None
        if token and not settings.dry_run:
            runner.add_listener(AfterChange(settings))
        if settings.colour_role_id is not None and settings.guild_id is None:
            log.warning("MIKU_COLOUR_ROLE_ID is set but MIKU_GUILD_ID is not: the role colour is off")

        server = make_server(settings, host=host, port=port, runner=runner)
        panel = asyncio.create_task(server.serve(), name="panel")
        if token and bot:
            client = MikuClient(state)
            tasks.append(asyncio.create_task(_bot(client, token), name="discord"))
        else:
            log.warning("➖ Discord bot off (%s): the panel runs alone and changes are dry runs",
                        "no MIKU_DISCORD_TOKEN" if not token else "--no-bot")
        if scheduler is not None:
            tasks.append(asyncio.create_task(scheduler.run_forever(), name="rotation"))
        _, token_from = resolve_token(settings.web_token, settings.data_dir)  # where it is, never the token
        log.info("panel on http://%s:%d (changes need the token from %s)", host, port, token_from)
        await panel
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if client is not None and not client.is_closed():
            await client.close()
        await pipeline.aclose()
        await http.aclose()
