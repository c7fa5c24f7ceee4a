"""Discord's INTERACTION_CREATE payload for the tests: what the gateway hands discord.py for a slash command."""

from __future__ import annotations

import discord

from emulators.discord import APPLICATION_ID
from mikubot.bot.context import Invoker


def interaction_payload(invoker: Invoker, n: int, permissions: discord.Permissions, *, name: str = "pfp",
                        sub: str | None = None) -> dict:
    """An INTERACTION_CREATE for /pfp in server 99, shaped as Discord sends it (Interactions ›
    Receiving and Responding › Interaction Object)."""
    return {
        "id": str(9000 + n), "application_id": APPLICATION_ID, "type": 2, "token": f"itoken-{n}", "version": 1,
        "guild_id": "99", "channel_id": "4242", "locale": "en-US", "guild_locale": "en-US",
        "channel": {"id": "4242", "type": 0, "guild_id": "99", "name": "general", "position": 0,
                    "permission_overwrites": [], "nsfw": False, "parent_id": None},
        "member": {"user": {"id": str(invoker.user_id), "username": invoker.name or "someone", "discriminator": "0",
                            "avatar": None, "global_name": None},
                   "roles": [str(r) for r in invoker.role_ids], "permissions": str(permissions.value),
                   "joined_at": "2024-01-01T00:00:00.000000+00:00", "deaf": False, "mute": False, "flags": 0},
        "app_permissions": str(discord.Permissions.all().value), "entitlements": [],
        "attachment_size_limit": 10 * 1024 * 1024,
        "authorizing_integration_owners": {"0": "99"}, "context": 0,
        "data": {"id": "1", "name": name, "type": 1, "options": [{"name": sub, "type": 1, "options": []}] if sub else []},
    }
