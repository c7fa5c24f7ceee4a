"""The VRAM consumers a change touches, declared to vramctl from mikubot's settings.

Two names matter to the pipeline: ``VISION`` (the vision model, reserved once around all K
verifications) and ``DETECTOR`` (the face detector, reserved once around all detections; with
``MIKU_DETECTOR_VIA=llama-swap`` it is the llama-swap model ``detector_model``). A full
vramctl file (``MIKU_VRAM_CONFIG``) may declare more consumers; it must use these two names.
"""

from __future__ import annotations

from vramctl.config import Consumer, VramSettings

from mikubot.config import Settings

VISION = "vision"
TEXT = "text"
DETECTOR = "face-detector"
CPU_BACKENDS = frozenset({"animeface", "cascade"})  # in-process backends that hold no VRAM


def vram_settings(settings: Settings) -> VramSettings:
    """vramctl's settings for this deployment: from ``vram_config`` if given, else derived."""
    common = {"probe": settings.gpu_probe, "probe_url": settings.gpu_probe_url, "settle_s": settings.settle_s}
    if settings.llama_swap_url:
        common["llama_swap_url"] = settings.llama_swap_url
    if settings.llama_swap_api_key is not None:
        common["llama_swap_api_key"] = settings.llama_swap_api_key
    if settings.vram_config is not None:
        return VramSettings.from_yaml(settings.vram_config, **common)
    consumers: list[Consumer] = []
    # With the detector under llama-swap, llama-swap's routing decides who holds the card: the reservations
    # only order this bot's own work and unload nothing (docs/vramctl.md, "Who arbitrates the card").
    routed = settings.detector_via == "llama-swap"
    if settings.llama_swap_url:
        if settings.text_model:
            consumers.append(Consumer(name=TEXT, kind="llama-swap", model=settings.text_model,
                                      vram_mib=settings.text_vram_mib, priority=0, routed=routed))
        consumers.append(Consumer(name=VISION, kind="llama-swap", model=settings.vision_model,
                                  vram_mib=settings.vision_vram_mib, priority=1, routed=routed))
    if routed:
        consumers.append(Consumer(name=DETECTOR, kind="llama-swap", model=settings.detector_model,
                                  vram_mib=settings.detector_vram_mib, priority=2, routed=True))
    elif settings.face_detector_url:
        consumers.append(Consumer(name=DETECTOR, kind="facedetect", url=settings.face_detector_url,
                                  vram_mib=settings.detector_vram_mib, priority=2))
    else:
        # In-process: vramctl cannot unload it, but it must know what it needs.
        need = 0 if settings.detector_backend in CPU_BACKENDS else settings.detector_vram_mib
        consumers.append(Consumer(name=DETECTOR, kind="external", vram_mib=need, priority=2))
    return VramSettings(consumers=consumers, **common)
