"""What a search found: per query, its ranked gallery matches, and their JSON form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ecnreid.inference.images import ImageEntry


@dataclass(frozen=True)
class Match:
    """A gallery image at ``rank`` (1-based) of a query's list; ``row`` is its row in the gallery features."""

    rank: int
    row: int
    image: ImageEntry
    similarity: float  # cosine of the two features
    rerank_distance: float | None = None  # k-reciprocal distance (smaller is closer) when re-ranked


@dataclass(frozen=True)
class QueryResult:
    query: ImageEntry
    matches: list[Match]

    def same_person(self, match: Match) -> bool | None:
        """Whether ``match`` shows the query's person by the ids in the file names (None: unknown)."""
        if self.query.pid is None or match.image.pid is None:
            return None
        return self.query.pid == match.image.pid

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": _image_dict(self.query),
            "matches": [
                {
                    "rank": m.rank,
                    "row": m.row,
                    **_image_dict(m.image),
                    "similarity": m.similarity,
                    **({"rerank_distance": m.rerank_distance} if m.rerank_distance is not None else {}),
                    "same_person": self.same_person(m),
                }
                for m in self.matches
            ],
        }


def _image_dict(image: ImageEntry) -> dict[str, Any]:
    return {"path": image.path, "pid": image.pid, "camid": image.camid}
