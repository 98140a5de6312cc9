"""Song list search, filters, sort and paging over precomputed arrays (no pandas per request)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from musicrec.index.catalog import TrackTable

SORTS = ("-popularity", "popularity", "name", "-name", "artist", "-artist")


@dataclass(frozen=True)
class BrowseQuery:
    q: str = ""
    genre: str | None = None
    explicit: bool | None = None
    min_popularity: int = 0
    max_popularity: int = 100
    sort: str = "-popularity"
    page: int = 1
    per_page: int = 20


class Browser:
    """Built once per artefact version; a query is a few vectorised passes over the catalog."""

    def __init__(self, tracks: TrackTable) -> None:
        self.tracks = tracks
        # The text and the name and artist orders come with the table (saved by the build).
        self._search_text = tracks.search_text
        by_pop = np.lexsort((np.arange(len(tracks)), -tracks.popularity.astype(np.int32)))
        self._orders = {
            "-popularity": by_pop, "popularity": by_pop[::-1].copy(),
            "name": tracks.name_order, "-name": tracks.name_order[::-1].copy(),
            "artist": tracks.artist_order, "-artist": tracks.artist_order[::-1].copy(),
        }

    def search(self, query: BrowseQuery) -> tuple[np.ndarray, int]:
        """Rows of the requested page and the total number of matches."""
        t = self.tracks
        mask = np.ones(len(t), dtype=bool)
        needle = query.q.strip().casefold()
        if needle:
            mask &= pc.match_substring(self._search_text, needle).to_numpy(zero_copy_only=False)
        if query.genre:
            in_genre = np.zeros(len(t), dtype=bool)
            in_genre[t.genre_rows.get(query.genre, np.empty(0, np.int32))] = True
            mask &= in_genre
        if query.explicit is not None:
            mask &= t.explicit == query.explicit
        if query.min_popularity > 0 or query.max_popularity < 100:
            mask &= (t.popularity >= query.min_popularity) & (t.popularity <= query.max_popularity)
        order = self._orders[query.sort]
        matches = order[mask[order]]
        start = (query.page - 1) * query.per_page
        return matches[start:start + query.per_page], int(len(matches))

