"""The :3939 control panel and API (FastAPI): ``create_app`` builds it, ``serve``/``make_server`` run it
with the bind rule enforced (``check_bind``). See docs/panel.md."""

from mikubot.web.app import create_app
from mikubot.web.serve import DEFAULT_HOST, DEFAULT_PORT, BindRefused, check_bind, make_server, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "BindRefused", "check_bind", "create_app", "make_server", "serve"]
