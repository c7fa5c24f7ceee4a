"""The Discord bot: /pfp slash commands, announcements, role colour and scheduled rotation.

``mikubot run`` (``mikubot.bot.app.serve``) runs it with the panel in one process. The command logic
lives in ``commands`` as plain async functions over ``context.CommandContext``; ``client`` is the thin
discord.py layer. This module stays import-light: the CLI reads the panel's defaults from here.
"""

PANEL_HOST = "127.0.0.1"
PANEL_PORT = 3939
