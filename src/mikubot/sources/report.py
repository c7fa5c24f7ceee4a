"""What the last search saw: pages asked, posts seen, why posts were turned away.

Returned lists can be empty for many reasons (all used before, all the wrong rating, the site had none);
the pipeline shows ``describe()`` so a person knows which setting to change.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mikubot.sources.filters import summarise


@dataclass
class SearchReport:
    query: str = ""
    pages: list[int] = field(default_factory=list)
    seen: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def describe(self) -> str:
        pages = f" on page{'s' if len(self.pages) != 1 else ''} {', '.join(map(str, self.pages))}" if self.pages else ""
        return (
            f"{self.query or 'search'}: {self.seen} seen{pages}, {self.accepted} accepted; "
            f"turned away: {summarise(self.rejected)}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "query": self.query,
            "pages": list(self.pages),
            "seen": self.seen,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
        }
