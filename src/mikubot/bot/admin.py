"""Who may run /pfp: configured user ids, configured role ids, or anyone with Manage Server.

Changing the bot's face is visible to every server it is in, and Discord allows only a few avatar
changes per hour, so the commands are admin-only. Discord's own command permissions
(``default_member_permissions``) hide the commands from others too, but a server owner can
override those, so the bot checks again itself.
"""

from __future__ import annotations

from mikubot.bot.context import Invoker
from mikubot.config import Settings


def is_admin(invoker: Invoker, settings: Settings) -> bool:
    if invoker.user_id in settings.admin_user_ids:
        return True
    if invoker.manage_guild:
        return True
    return bool(invoker.role_ids & set(settings.admin_role_ids))


NOT_ADMIN = ("🔒 Only the bot's admins can change its avatar: ask someone with **Manage Server**, "
             "or have your user/role id added to MIKU_ADMIN_USER_IDS / MIKU_ADMIN_ROLE_IDS.")
