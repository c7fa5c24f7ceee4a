"""Running the panel: ``mikubot web`` on its own, or ``serve()`` inside the bot's event loop.

The bind rule lives here so both paths enforce it: the panel listens on 127.0.0.1 unless told
otherwise, and refuses any other address without ``MIKU_WEB_TOKEN`` — a generated token (see
auth.py) is fine for a panel only this machine can reach, not for one the network can. A container is
the exception its owner declares: it must listen on 0.0.0.0 for its published port to work, and with
``MIKU_WEB_PUBLISHED_ON_LOOPBACK`` (docker-compose.yml publishes the panel on 127.0.0.1 only) the
generated token, kept in the data volume, guards it. The server runs
under the repository's one serving policy (httpserve): deadlines for slow clients and a connection cap.
"""

from __future__ import annotations

import logging

import uvicorn

from httpserve import ServeLimits, is_loopback, uvicorn_config
from mikubot.config import Settings
from mikubot.errors import MikubotError
from mikubot.runner import ChangeRunner

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3939


class BindRefused(MikubotError):
    """The panel would be reachable from the network without a configured token."""


def check_bind(host: str, settings: Settings) -> None:
    """Raise ``BindRefused`` (with what to do) for a non-loopback bind without ``MIKU_WEB_TOKEN``."""
    token = settings.web_token.get_secret_value().strip() if settings.web_token is not None else ""
    if not is_loopback(host) and not token and not settings.web_published_on_loopback:
        raise BindRefused(
            f"refusing to listen on {host}: the panel would be reachable from the network without a token. "
            f"Set MIKU_WEB_TOKEN to a long random secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
            f"or bind {DEFAULT_HOST} (in a container whose port is published on the host's loopback only, "
            f"MIKU_WEB_PUBLISHED_ON_LOOPBACK=true allows the generated token)."
        )
    if not is_loopback(host) and token and len(token) < 16:
        log.warning("MIKU_WEB_TOKEN is short (%d characters); use 16 or more for a panel on the network", len(token))


def serve_limits(settings: Settings) -> ServeLimits:
    return ServeLimits(header_timeout_s=settings.web_header_timeout_s, body_timeout_s=settings.web_body_timeout_s,
                       keep_alive_s=settings.web_keep_alive_s, max_connections=settings.web_max_connections)


def make_server(settings: Settings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                runner: ChangeRunner | None = None, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for the panel, after the bind check. ``await server.serve()`` runs it in the
    current event loop (the bot does this beside its gateway connection)."""
    from mikubot.web.app import create_app

    check_bind(host, settings)
    config = uvicorn_config(create_app(settings, runner=runner), host=host, port=port, limits=serve_limits(settings),
                            log_level=log_level, proxy_headers=False, server_header=False,
                            # An open event stream must not hold a shutdown for long.
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


async def serve(settings: Settings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                runner: ChangeRunner | None = None) -> None:
    await make_server(settings, host=host, port=port, runner=runner).serve()
