"""Prometheus metrics for VRAM coordination.

They live in a registry of their own (`REGISTRY`), created once at import, so any number of Coordinators
(tests create many) share them without "Duplicated timeseries" errors; a service that wants them on its
/metrics endpoint exposes `render()` or adds `REGISTRY` to its collector.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

RESERVATIONS = Counter("vramctl_reservations_total", "Reservations by consumer and outcome (granted, timeout, error).",
                       ["consumer", "outcome"], registry=REGISTRY)
WAIT_SECONDS = Histogram("vramctl_reservation_wait_seconds", "Time from asking for VRAM to being allowed to use it.",
                         ["consumer"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60),
                         registry=REGISTRY)
UNLOADS = Counter("vramctl_unloads_total", "Consumers unloaded to make room, by method.", ["consumer", "method"],
                  registry=REGISTRY)
HELD = Gauge("vramctl_reservations_held", "Reservations currently held.", ["consumer"], registry=REGISTRY)
FREE_MIB = Gauge("vramctl_gpu_free_mib", "Free VRAM at the last measurement (MiB).", registry=REGISTRY)
EVENTS = Counter("vramctl_timeline_events_total", "Timeline events by name.", ["event"], registry=REGISTRY)


def render() -> bytes:
    """The metrics in Prometheus text format."""
    return generate_latest(REGISTRY)
