"""What every route of one panel app shares, kept on ``app.state.panel``."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import HTTPException, Request

from mikubot.config import Settings
from mikubot.history import History
from mikubot.runner import ChangeRunner
from mikubot.web.auth import Auth
from mikubot.web.metrics import PanelMetrics
from mikubot.web.sse import HistoryWatch, StreamLimits
from mikubot.web.upload import PreviewGate


@dataclass
class PanelState:
    settings: Settings
    auth: Auth
    metrics: PanelMetrics
    runner: ChangeRunner | None = None  # set at start-up (given, or built by the app's lifespan)
    streams: StreamLimits = field(init=False)  # open event streams, per client and in all
    watch: HistoryWatch = field(init=False)  # one history poll per change of another process
    previews: PreviewGate = field(init=False)  # upload previews at work and waiting

    def __post_init__(self) -> None:
        self.streams = StreamLimits(self.settings.web_max_streams, self.settings.web_max_streams_per_client)
        self.watch = HistoryWatch()
        self.previews = PreviewGate(self.settings)

    @property
    def history(self) -> History:
        return self.require_runner().pipeline.history

    def require_runner(self) -> ChangeRunner:
        if self.runner is None:
            raise HTTPException(503, "the panel is still starting")
        return self.runner


class Panel:
    """``PanelState`` with ``runner`` guaranteed (routes run only after start-up)."""

    def __init__(self, state: PanelState) -> None:
        self._state = state
        self.settings = state.settings
        self.auth = state.auth
        self.metrics = state.metrics
        self.streams, self.watch, self.previews = state.streams, state.watch, state.previews
        self.runner = state.require_runner()

    @property
    def history(self) -> History:
        return self.runner.pipeline.history


def panel(request: Request) -> Panel:
    return Panel(request.app.state.panel)
