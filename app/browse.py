"""Song list search, filters, sort and paging over precomputed arrays (no pandas per request)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.catalog import SEP, TrackTable, casefold_strip

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
        # Arrow, not Python loops: at 1M tracks these took 3.6 s of the service's start-up.
        name, artists, album, artist = (pa.array(col, type=pa.large_string())
                                        for col in (tracks.name, tracks.artists, tracks.album, tracks.artist))
        # Stripping the ends changes no match: the needle is stripped too.
        self._search_text = casefold_strip(pc.binary_join_element_wise(name, artists, album, SEP))
        by_pop = np.lexsort((np.arange(len(tracks)), -tracks.popularity.astype(np.int32)))
        by_name = _stable_order(pc.utf8_lower(name))
        by_artist = _stable_order(pc.utf8_lower(artist))
        self._orders = {
            "-popularity": by_pop, "popularity": by_pop[::-1].copy(),
            "name": by_name, "-name": by_name[::-1].copy(),
            "artist": by_artist, "-artist": by_artist[::-1].copy(),
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


def _stable_order(keys: pa.Array) -> np.ndarray:
    """Row order by ``keys`` (code point order; equal keys keep row order, as Arrow's sort is stable)."""
    return pc.sort_indices(keys).to_numpy().astype(np.int64)
