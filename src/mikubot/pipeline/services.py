"""The long-lived parts a change's stages are handed: settings, the shared HTTP client, the VRAM
coordinator, the history, the in-process detectors, and the factories for a source and a verifier.

``Services`` is built once per ``AvatarPipeline`` (it owns the in-process detector and, unless given
one, the coordinator and the HTTP client). Stages take it as an argument; it knows nothing of changes.
"""

from __future__ import annotations

from typing import Any

import httpx

from httpretry import tls_context
from mikubot.config import Settings
from mikubot.detection import InProcessDetector
from mikubot.history import History
from mikubot.sources import Source, source_from_spec
from mikubot.verify import HeuristicVerifier, Verifier, VisionVerifier
from mikubot.vram import vram_settings
from vramctl.coordinator import Coordinator


class Services:
    """What stages use beyond the change's own state (see the module docstring)."""

    def __init__(self, settings: Settings, *, history: History | None = None, coordinator: Coordinator | None = None,
                 http: httpx.AsyncClient | None = None, source_options: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.history = history or History(settings.history_path)
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=settings.http_timeout_s, verify=tls_context())
        self._own_coordinator = coordinator is None
        self.coordinator = coordinator or Coordinator(vram_settings(settings), http=self.http)
        self.local_detector = InProcessDetector(settings.detector_backend, settings.detector_model_path)
        self.hair_detector = InProcessDetector("animeface")  # the heuristic's own look when it has no faces
        self.source_options = source_options or {}

    async def aclose(self) -> None:
        if self._own_coordinator:
            await self.coordinator.aclose()
        if self._own_http:
            await self.http.aclose()

    def make_source(self, spec: str, settings: Settings | None = None) -> Source:
        # Every source setting, straight from Settings (they share one model), plus the shared client.
        # ``settings``: a server's look (``Settings.for_guild``); by default the global ones.
        s = settings or self.settings
        return source_from_spec(spec, **{**s.source_settings(), "http": self.http, **self.source_options})

    @staticmethod
    def verifier_kind(settings: Settings) -> type[VisionVerifier] | type[HeuristicVerifier]:
        """The verifier a change makes with ``settings``: the vision model through llama-swap when there is
        one, else the heuristic."""
        return VisionVerifier if settings.llama_swap_url else HeuristicVerifier

    def make_verifier(self, settings: Settings | None = None) -> Verifier:
        s = settings or self.settings
        if self.verifier_kind(s) is VisionVerifier:
            assert s.llama_swap_url is not None
            key = s.llama_swap_api_key.get_secret_value() if s.llama_swap_api_key else None
            return VisionVerifier(s.llama_swap_url, s.vision_model, s.character_name, http=self.http,
                                  timeout_s=s.vision_timeout_s, api_key=key)
        return self.heuristic(s)

    def heuristic(self, settings: Settings | None = None) -> HeuristicVerifier:
        s = settings or self.settings
        return HeuristicVerifier(s.character_name, s.character_tag, s.hair_colours, self.hair_detector.get(),
                                 tolerance=s.hair_tolerance)
