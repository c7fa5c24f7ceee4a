"""The few Discord REST calls the bot makes besides the avatar upload: post a message with a file,
recolour a role, and answer a slash command through its interaction webhook.

They go over plain HTTP (``settings.discord_api``) rather than through discord.py's gateway client, so
the very same code runs in production and against the Discord REST emulator in tests. Errors become
``DiscordRestError`` with Discord's message: the caller logs it and carries on (an announcement that
cannot be posted must not turn a successful avatar change into a failure).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx

from mikubot.upload import retry_after_of

log = logging.getLogger(__name__)

MAX_429_RETRIES = 3
MAX_429_WAIT_S = 30.0


class DiscordRestError(Exception):
    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class DiscordRest:
    def __init__(self, api_base: str, token: str | None, *, http: httpx.AsyncClient,
                 user_agent: str = "DiscordBot (https://github.com/, 0.1) miku-discord", timeout_s: float = 30.0) -> None:
        self.api_base = api_base.rstrip("/")
        self._token = token
        self.http = http
        self.user_agent = user_agent
        self.timeout_s = timeout_s

    def _headers(self, auth: bool) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent}
        if auth:
            if not self._token:
                raise DiscordRestError("no Discord bot token configured (MIKU_DISCORD_TOKEN)")
            headers["Authorization"] = f"Bot {self._token}"
        return headers

    async def request(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> httpx.Response:
        """One call, with Discord's 429 ``retry_after`` honoured a bounded number of times."""
        waited = 0.0
        for attempt in range(MAX_429_RETRIES + 1):
            try:
                r = await self.http.request(method, f"{self.api_base}{path}", headers=self._headers(auth),
                                            timeout=self.timeout_s, **kw)
            except httpx.HTTPError as exc:
                raise DiscordRestError(f"cannot reach Discord at {self.api_base}: {type(exc).__name__}") from None
            if r.status_code != 429:
                break
            wait = retry_after_of(r)
            if attempt == MAX_429_RETRIES or waited + wait > MAX_429_WAIT_S:
                break
            await asyncio.sleep(wait)
            waited += wait
        if r.status_code >= 400:
            try:
                message = r.json().get("message", r.text[:200])
            except ValueError:
                message = r.text[:200]
            raise DiscordRestError(f"Discord answered {r.status_code} to {method} {path.split('/')[1]}: {message}",
                                   r.status_code)
        return r

    @staticmethod
    def _multipart(payload: dict[str, Any], files: list[Path]) -> dict[str, Any]:
        """Discord's multipart form: ``payload_json`` plus ``files[n]``, each declared in ``attachments``."""
        payload = {**payload, "attachments": [{"id": i, "filename": p.name} for i, p in enumerate(files)]}
        return {
            "data": {"payload_json": json.dumps(payload)},
            "files": [(f"files[{i}]", (p.name, p.read_bytes(), "image/png")) for i, p in enumerate(files)],
        }

    async def send_message(self, channel_id: int, content: str, *, embeds: list[dict[str, Any]] | None = None,
                           files: list[Path] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"content": content, "allowed_mentions": {"parse": []}}
        if embeds:
            payload["embeds"] = embeds
        if files:
            r = await self.request("POST", f"/channels/{channel_id}/messages", **self._multipart(payload, files))
        else:
            r = await self.request("POST", f"/channels/{channel_id}/messages", json=payload)
        return r.json()

    async def set_role_colour(self, guild_id: int, role_id: int, colour: int) -> dict[str, Any]:
        r = await self.request("PATCH", f"/guilds/{guild_id}/roles/{role_id}", json={"color": colour})
        return r.json()

    # --- interactions: the token in the URL is the credential, no bot token is sent --------------------
    async def defer(self, interaction_id: int | str, token: str, *, ephemeral: bool = False) -> None:
        body: dict[str, Any] = {"type": 5}  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
        if ephemeral:
            body["data"] = {"flags": 64}
        await self.request("POST", f"/interactions/{interaction_id}/{token}/callback", auth=False, json=body)

    async def edit_original(self, application_id: int | str, token: str, content: str, *,
                            files: list[Path] | None = None) -> dict[str, Any]:
        path = f"/webhooks/{application_id}/{token}/messages/@original"
        payload: dict[str, Any] = {"content": content, "allowed_mentions": {"parse": []}}
        if files:
            r = await self.request("PATCH", path, auth=False, **self._multipart(payload, files))
        else:
            r = await self.request("PATCH", path, auth=False, json=payload)
        return r.json()
