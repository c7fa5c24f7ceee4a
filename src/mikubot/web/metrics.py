"""The panel's Prometheus metrics, in a registry per app (tests build many apps in one process), served
at ``/metrics`` together with vramctl's own registry (reservations, unloads, free VRAM)."""

from __future__ import annotations


from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mikubot.record import ChangeRecord
from vramctl import metrics as vram_metrics


class PanelMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.changes = Counter("mikubot_changes_total", "Avatar changes run through this process, by final status.",
                               ["status"], registry=self.registry)
        self.change_seconds = Histogram("mikubot_change_duration_seconds", "Sum of a change's stage times.",
                                        buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300), registry=self.registry)
        self.busy = Counter("mikubot_change_refused_busy_total", "Change requests refused (409) because one was running.",
                            registry=self.registry)
        self.running = Gauge("mikubot_change_running", "1 while an avatar change runs.", registry=self.registry)
        self.requests = Counter("mikubot_http_requests_total", "Panel HTTP requests by route and status code.",
                                ["method", "route", "code"], registry=self.registry)
        self.uploads = Counter("mikubot_uploads_total", "Custom images uploaded for a crop preview, by outcome.",
                               ["outcome"], registry=self.registry)

    async def on_change(self, record: ChangeRecord) -> None:
        """A ``ChangeRunner`` listener: count the finished change."""
        self.changes.labels(record.status).inc()
        total_ms = sum(record.timings_ms.values())
        self.change_seconds.observe(total_ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry) + vram_metrics.render()
