"""Prometheus metrics of the detector API, on a registry of their own.

A per-app ``CollectorRegistry`` (not the process-global one) lets tests and embedders build many apps
in one process without "duplicated timeseries" errors.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, *, model_loaded: Callable[[], float], queue_depth: Callable[[], float]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facedetect_requests", "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "facedetect_request_seconds", "Time to answer a request, queueing included, by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.faces = Counter("facedetect_faces_found", "Faces returned by /detect", registry=self.registry)
        self.rejected = Counter(
            "facedetect_rejected_busy", "Detections refused with 503 because the queue was full",
            registry=self.registry,
        )
        # Read on scrape, so they can never drift from the truth (e.g. a lazy reload inside /detect).
        self.loaded = Gauge("facedetect_model_loaded", "1 when the detector model is loaded", registry=self.registry)
        self.loaded.set_function(model_loaded)
        self.queue = Gauge("facedetect_queue_depth", "Detections waiting for a worker", registry=self.registry)
        self.queue.set_function(queue_depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
