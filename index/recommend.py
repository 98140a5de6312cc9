"""Max-similarity scoring over per-seed ANN candidates (the heart of "what next?").

score(c) = max over seeds s of  w(s) · (cos(s, c) + artist_weight · a(s, c))
           − skip_penalty · max(0, max over skipped n of cos(n, c))

w(s) grows for likes and decays with the seed's age in the session; a(s, c) is 1 for
the same album, ``artist_share`` for a shared artist, else 0. Taking the maximum (not
the mean) over seeds keeps a varied playlist varied: a candidate only has to be close
to *one* seed. ``because`` is the seed that attains the maximum.

Everything here is vectorised numpy over a few thousand candidates; the catalog is
only scanned in full when filters leave too few ANN hits (exact fallback).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import faiss
import numpy as np

from index.catalog import TrackTable

VIEW, SKIP, LIKE = "track_view", "skip", "like"


@dataclass(frozen=True)
class ScoringParams:
    like_weight: float = 1.0
    view_weight: float = 0.8
    recency_decay: float = 0.95     # weight × decay**age, age 0 = newest event of the session
    skip_penalty: float = 0.25
    artist_weight: float = 0.25     # affinity default, from benchmarks/quality.py; 0 = pure content
    artist_share: float = 0.75      # a(s, c) for a shared artist (same album counts 1.0)
    per_artist_candidates: int = 200
    min_depth: int = 64             # ANN hits per seed, at least
    max_rounds: int = 3             # deeper ANN rounds before the exact fallback


@dataclass(frozen=True)
class Filters:
    genres: frozenset[str] = frozenset()
    explicit: bool | None = None
    min_popularity: int = 0
    max_popularity: int = 100

    @property
    def active(self) -> bool:
        return bool(self.genres) or self.explicit is not None or self.min_popularity > 0 or self.max_popularity < 100


@dataclass(frozen=True)
class Seed:
    row: int
    weight: float


@dataclass(frozen=True)
class Query:
    seeds: Sequence[Seed]
    k: int = 20
    negatives: Sequence[int] = ()
    exclude: Sequence[int] = ()
    filters: Filters = Filters()
    diversity: float = 0.0
    artist_weight: float | None = None  # None: ScoringParams.artist_weight


@dataclass(frozen=True)
class Hit:
    row: int
    score: float
    because: int  # seed row, or -1 for cold-start picks


@dataclass(frozen=True)
class SessionQuery:
    """What a session's events mean for scoring: seeds, negatives and rows to leave out."""

    seeds: list[Seed]
    negatives: list[int]
    seen: list[int] = field(default_factory=list)


def seeds_from_events(events: Iterable[tuple[str, str]], row_of: dict[str, int],
                      params: ScoringParams = ScoringParams()) -> SessionQuery:
    """Turn (type, track_id) events, newest first, into weighted seeds and negatives.

    The newest event about a track decides its role: a skip after a view makes it a
    negative; a like (even an older one) lifts a played track's weight. Unknown ids
    (a track removed by a rebuild) are ignored.
    """
    role: dict[int, str] = {}
    age: dict[int, int] = {}
    liked: set[int] = set()
    for position, (kind, track_id) in enumerate(events):
        row = row_of.get(track_id)
        if row is None:
            continue
        if kind == LIKE:
            liked.add(row)
        if row not in role:
            role[row] = kind
            age[row] = position
    seeds, negatives = [], []
    for row, kind in role.items():
        if kind == SKIP:
            negatives.append(row)
            continue
        base = params.like_weight if (kind == LIKE or row in liked) else params.view_weight
        seeds.append(Seed(row, base * params.recency_decay ** age[row]))
    return SessionQuery(seeds, negatives, list(role))


class Recommender:
    """Scores candidates for one artefact version; immutable, safe for concurrent searches."""

    def __init__(self, embeddings: np.ndarray, index: faiss.Index, tracks: TrackTable,
                 params: ScoringParams = ScoringParams()) -> None:
        self.embeddings = embeddings
        self.index = index
        self.tracks = tracks
        self.params = params
        self.n = len(tracks)

    # -- public ---------------------------------------------------------------------------
    def recommend(self, query: Query) -> list[Hit]:
        if query.k < 1:
            return []
        if not query.seeds:
            return self.popular(query.k, query.filters, query.exclude)
        p = self.params
        seed_rows = np.fromiter((s.row for s in query.seeds), dtype=np.int64)
        weights = np.fromiter((s.weight for s in query.seeds), dtype=np.float32)
        seed_vecs = np.ascontiguousarray(self.embeddings[seed_rows], dtype=np.float32)
        neg_rows = np.unique(np.asarray(query.negatives, dtype=np.int64))
        banned = np.unique(np.concatenate([seed_rows, neg_rows, np.asarray(query.exclude, dtype=np.int64)]))
        artist_weight = p.artist_weight if query.artist_weight is None else query.artist_weight
        ctx = _Context(query, seed_rows, seed_vecs, weights, neg_rows, banned,
                       np.unique(self.tracks.song_key[banned]), artist_weight)
        affinity_rows = self._affinity_candidates(seed_rows) if artist_weight > 0 else np.empty(0, np.int64)

        depth = max(p.min_depth, query.k + len(banned) + 16)
        for _ in range(p.max_rounds):
            if depth * 4 >= self.n:
                break  # a search this deep costs as much as the exact scan below
            _, ann = self.index.search(seed_vecs, depth)
            hits = self._score(np.union1d(ann[ann >= 0], affinity_rows), ctx)
            if len(hits) >= query.k:
                return hits
            depth *= 4
        # Exact fallback: every row that passes the filters, so k hits come back whenever k exist.
        everything = np.arange(self.n, dtype=np.int64)
        return self._score(everything[self._filter_mask(everything, query.filters)], ctx)

    def popular(self, k: int, filters: Filters = Filters(), exclude: Sequence[int] = ()) -> list[Hit]:
        """Cold start: popular tracks spread across genres, honouring filters and exclusions."""
        order = self.tracks.popular_spread
        keep = self._filter_mask(order, filters)
        if len(exclude):
            keep &= ~np.isin(order, np.asarray(exclude, dtype=np.int64))
        order = order[keep]
        _, first = np.unique(self.tracks.song_key[order], return_index=True)
        order = order[np.sort(first)][:k]
        return [Hit(int(r), float(self.tracks.popularity[r]) / 100.0, -1) for r in order]

    # -- internals ------------------------------------------------------------------------
    def _score(self, candidates: np.ndarray, ctx: "_Context") -> list[Hit]:
        t, p, q = self.tracks, self.params, ctx.query
        keep = ~np.isin(candidates, ctx.banned) & ~np.isin(t.song_key[candidates], ctx.banned_songs)
        candidates = candidates[keep]
        candidates = candidates[self._filter_mask(candidates, q.filters)]
        if not len(candidates):
            return []
        vecs = np.asarray(self.embeddings[candidates], dtype=np.float32)
        per_seed = vecs @ ctx.seed_vecs.T
        if ctx.artist_weight > 0:
            per_seed += ctx.artist_weight * self._affinity(candidates, ctx.seed_rows)
        per_seed *= ctx.weights
        best = np.argmax(per_seed, axis=1)
        score = per_seed[np.arange(len(candidates)), best]
        if len(ctx.neg_rows):
            neg_vecs = np.asarray(self.embeddings[ctx.neg_rows], dtype=np.float32)
            score -= p.skip_penalty * np.maximum((vecs @ neg_vecs.T).max(axis=1), 0.0)
        order = np.argsort(-score, kind="stable")
        # The same song under several ids: keep its best-scoring id only.
        _, first = np.unique(t.song_key[candidates[order]], return_index=True)
        order = order[np.sort(first)]
        if q.diversity > 0:
            order = _mmr(vecs, score, order, q.k, q.diversity)
        else:
            order = order[:q.k]
        return [Hit(int(candidates[i]), float(score[i]), int(ctx.seed_rows[best[i]])) for i in order]

    def _artist_rows(self, row: int) -> list[np.ndarray]:
        t = self.tracks
        return [r for a in t.artists[row].split(";") if (r := t.artist_rows.get(a.strip())) is not None]

    def _affinity_candidates(self, seed_rows: np.ndarray) -> np.ndarray:
        """The seeds' artists' tracks (capped, most popular first): candidates the ANN may miss."""
        cap = self.params.per_artist_candidates
        parts = [rows[:cap] for row in seed_rows for rows in self._artist_rows(int(row))]
        return np.unique(np.concatenate(parts)).astype(np.int64) if parts else np.empty(0, np.int64)

    def _affinity(self, candidates: np.ndarray, seed_rows: np.ndarray) -> np.ndarray:
        """a(s, c) for every candidate (rows) and seed (columns)."""
        t = self.tracks
        out = np.zeros((len(candidates), len(seed_rows)), dtype=np.float32)
        for j, row in enumerate(seed_rows):
            for rows in self._artist_rows(int(row)):
                out[np.isin(candidates, rows), j] = self.params.artist_share
            if t.album[row]:
                album_rows = t.album_rows.get(t.album_key[row])
                if album_rows is not None:
                    out[np.isin(candidates, album_rows), j] = 1.0
        return out

    def _filter_mask(self, rows: np.ndarray, filters: Filters) -> np.ndarray:
        t = self.tracks
        mask = np.ones(len(rows), dtype=bool)
        if not filters.active:
            return mask
        if filters.min_popularity > 0 or filters.max_popularity < 100:
            pop = t.popularity[rows]
            mask &= (pop >= filters.min_popularity) & (pop <= filters.max_popularity)
        if filters.explicit is not None:
            mask &= t.explicit[rows] == filters.explicit
        if filters.genres:
            in_genre = np.zeros(len(rows), dtype=bool)
            for genre in filters.genres:
                members = t.genre_rows.get(genre)
                if members is not None:
                    in_genre |= np.isin(rows, members)
            mask &= in_genre
        return mask


@dataclass(frozen=True)
class _Context:
    query: Query
    seed_rows: np.ndarray
    seed_vecs: np.ndarray
    weights: np.ndarray
    neg_rows: np.ndarray
    banned: np.ndarray
    banned_songs: np.ndarray
    artist_weight: float


def _mmr(vecs: np.ndarray, score: np.ndarray, order: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Maximal marginal relevance over the best few candidates: relevance vs. redundancy."""
    pool = order[: max(4 * k, 100)]
    pool_vecs = vecs[pool]
    relevance = score[pool]
    redundancy = np.zeros(len(pool), dtype=np.float32)
    taken = np.zeros(len(pool), dtype=bool)
    picked = []
    for _ in range(min(k, len(pool))):
        mmr = (1.0 - diversity) * relevance - diversity * redundancy
        mmr[taken] = -np.inf
        i = int(np.argmax(mmr))
        picked.append(i)
        taken[i] = True
        redundancy = np.maximum(redundancy, pool_vecs @ pool_vecs[i])
    return pool[np.asarray(picked, dtype=np.int64)]
