"""Which consumers to unload: the fewest that cover the missing memory, evicting low priority first.

Kept apart from the coordinator because it is pure: a list of candidates and a deficit in, a choice out.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from .config import Consumer


def choose_victims(candidates: Sequence[Consumer], deficit_mib: float) -> list[Consumer]:
    """The smallest set of `candidates` whose declared VRAM covers `deficit_mib`.

    Among sets of that size: the one whose most important member is least important, then the least total
    priority, then the least memory freed (do not unload 5 GB when 1 GB will do). If no set covers the deficit,
    all candidates (the declared figures may be low; the probe then tells the truth). An empty list when
    nothing is missing or nothing can be unloaded.
    """
    if deficit_mib <= 0 or not candidates:
        return []
    best: tuple | None = None
    for k in range(1, len(candidates) + 1):
        for combo in combinations(candidates, k):
            freed = sum(c.vram_mib for c in combo)
            if freed < deficit_mib:
                continue
            key = (max(c.priority for c in combo), sum(c.priority for c in combo), freed,
                   [c.name for c in combo])
            if best is None or key < best[0]:
                best = (key, list(combo))
        if best is not None:
            return best[1]
    return sorted(candidates, key=lambda c: (c.priority, c.vram_mib, c.name))
