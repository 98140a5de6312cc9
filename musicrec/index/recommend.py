"""Hybrid scoring over per-seed candidates (the heart of "what next?").

x(s, c) = cos(s, c) + artist_weight · a(s, c) + colisten_weight · l(s, c)
score(c) = M_p over seeds s of w(s) · x(s, c)  +  popularity_weight · popularity(c) / 100
           − skip_penalty · max(0, max over skipped n of cos(n, c))

cos is audio similarity (the autoencoder's embedding); a(s, c) is 1 for the same album,
``artist_share`` for a shared artist, else 0; l(s, c) is the co-listening weight of the pair
(``musicrec.index.colisten``, built from the event log; 0 without one). w(s) grows for likes
and decays with the seed's age in the session.

M_p is the power mean over seeds, ``(mean_s v_s^p)^(1/p)``: p = ∞ is the maximum, where a
candidate only has to be close to *one* seed (a varied playlist stays varied), p = 1 the mean,
where agreement between seeds counts. Which serves listeners better is measured, not assumed:
the build chooses p and the weights on held-out sessions of the log and writes them to the
manifest (``musicrec.indexer.blend``); without a log the defaults below, measured the same way
on the dev playlists (benchmarks/quality.py), apply. ``because`` is the seed that gives the
candidate its largest term, and ``reason`` says what linked them.

Candidates are each seed's ANN neighbours, its artists' tracks and its co-listened tracks;
a few thousand of them per answer, scored with one BLAS product and vectorised numpy, and the
catalog is only scanned in full when filters leave too few hits (exact fallback). Where it
covers the query, the compiled kernel (``_kernel.c``) does the union of the candidates and the
scoring after the product in one call each, with numpy's arithmetic: the same answer, bit for bit.
It reads the seeds' artists', albums' and co-listened tracks from tables handed to it once per
version (``TrackTable.link_tables``), where numpy builds them per seed from per-track caches.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Iterable, Mapping, NamedTuple, Sequence

import faiss
import numpy as np

from musicrec.index.catalog import TrackTable
from musicrec.index.colisten import ColistenTable

try:
    from musicrec.index import _kernel
except ImportError:  # installed without a C compiler: numpy scores alone (Recommender warns)
    _kernel = None

log = logging.getLogger(__name__)

VIEW, SKIP, LIKE = "track_view", "skip", "like"
CO_LISTENED, SAME_ARTIST, SOUNDS_LIKE, POPULAR = "co-listened", "same artist", "sounds like", "popular"
REASONS = (CO_LISTENED, SAME_ARTIST, SOUNDS_LIKE, POPULAR)


@dataclass(frozen=True)
class ScoringParams:
    like_weight: float = 1.0
    view_weight: float = 0.8
    recency_decay: float = 0.95     # weight × decay**age, age 0 = newest event of the session
    skip_penalty: float = 0.25
    # The blend's defaults, for a version built without events: chosen by musicrec.indexer.blend's
    # search on the dev playlists (benchmarks/README.md); a build with events chooses its own.
    artist_weight: float = 1.0      # 0 = no artist/album affinity
    artist_share: float = 0.75      # a(s, c) for a shared artist (same album counts 1.0)
    colisten_weight: float = 0.0    # l(s, c)'s weight; 0 without a co-listening table
    popularity_weight: float = 2.0  # the catalog popularity prior
    seed_power: float = math.inf    # p of the power mean over seeds: inf = max, 1 = mean
    per_artist_candidates: int = 200
    min_depth: int = 64             # ANN hits per seed, at least, where they bring most candidates
    ann_rows: int = 256             # ... shared out when the seeds are many (down to colisten_depth each)
    colisten_depth: int = 16        # ANN hits per seed where the seeds' co-listened tracks bring most candidates
    max_rounds: int = 3             # deeper ANN rounds before the exact fallback

    BLEND = ("artist_weight", "colisten_weight", "popularity_weight", "seed_power")
    """The fields a build may choose and write to its manifest (``scoring``)."""

    def content_only(self) -> "ScoringParams":
        """Audio similarity alone, max over seeds: no artist, co-listening or popularity term."""
        return replace(self, artist_weight=0.0, colisten_weight=0.0, popularity_weight=0.0, seed_power=math.inf)

    def with_blend(self, blend: Mapping[str, float | None]) -> "ScoringParams":
        """These params with a manifest's ``scoring`` values; ValueError names a bad one.

        JSON has no infinity (msgspec writes it as null), so None stands for ∞ in ``seed_power``.
        """
        known = {f.name for f in fields(self)}
        values: dict[str, float] = {}
        for name, value in blend.items():
            if value is None and name == "seed_power":
                value = math.inf
            if name not in self.BLEND or name not in known:
                raise ValueError(f"scoring.{name} is not a blend parameter ({', '.join(self.BLEND)})")
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0 or \
                    (math.isinf(value) and name != "seed_power"):
                raise ValueError(f"scoring.{name} must be a number >= 0, got {value!r}")
            if name == "seed_power" and value < 1:
                raise ValueError(f"scoring.seed_power must be >= 1 (inf = max), got {value!r}")
            values[name] = float(value)
        return replace(self, **values)


@dataclass(frozen=True)
class Filters:
    genres: frozenset[str] = frozenset()
    explicit: bool | None = None
    min_popularity: int = 0
    max_popularity: int = 100

    @property
    def active(self) -> bool:
        return bool(self.genres) or self.explicit is not None or self.min_popularity > 0 or self.max_popularity < 100


class Seed(NamedTuple):
    """A seed track and its weight; a tuple, not a dataclass: a session builds one per event on every answer."""

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
    reason: str = SOUNDS_LIKE  # one of REASONS: what links ``because`` and this track


@dataclass(frozen=True)
class Ranked:
    """An answer as columns, best first: what ``recommend`` returns as Hits, one list per field.

    Why: the service shapes its answer from whole columns (one gather per field of the track
    table) instead of reading a Hit per track; a frozen dataclass per hit is most of the cost
    of building the list when nothing else needs it.
    """

    rows: list[int]
    scores: list[float]
    because: list[int]  # seed rows, -1 for cold-start picks
    reasons: list[str]

    def hits(self) -> list[Hit]:
        return [Hit(r, s, b, why) for r, s, b, why in zip(self.rows, self.scores, self.because, self.reasons)]


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
    role: dict[int, tuple[str, int]] = {}  # row -> (its newest event's type, that event's age)
    liked: set[int] = set()
    for position, (kind, track_id) in enumerate(events):
        row = row_of.get(track_id)
        if row is None:
            continue
        if kind == LIKE:
            liked.add(row)
        if row not in role:
            role[row] = (kind, position)
    seeds, negatives = [], []
    like, view, decay = params.like_weight, params.view_weight, params.recency_decay
    for row, (kind, age) in role.items():
        if kind == SKIP:
            negatives.append(row)
        else:
            seeds.append(Seed(row, (like if kind == LIKE or row in liked else view) * decay ** age))
    return SessionQuery(seeds, negatives, list(role))


class Recommender:
    """Scores candidates for one artefact version; safe for concurrent searches.

    Its mutable state is the neighbour memo and the numpy path's per-track link caches, which never
    change an answer, per-thread scratch maps (row -> position, banned songs, the candidate bitmap)
    that every scoring leaves as it found it, and a per-thread buffer for the kernel's candidate list.
    """

    def __init__(self, embeddings: np.ndarray, index: faiss.Index, tracks: TrackTable,
                 params: ScoringParams = ScoringParams(), *, memo: bool = True,
                 neighbours: np.ndarray | None = None, colisten: ColistenTable | None = None,
                 compiled: bool = True) -> None:
        self.embeddings = embeddings
        self._vectors = np.asarray(embeddings)  # a plain view of a memmap: cheaper to index per request
        self.index = index
        self.tracks = tracks
        self.params = params
        # Seeds nobody has played with anything get no co-listening term: they are scored with the
        # blend of a version without events, which the dev playlists measured better for them.
        self._no_colisten = params.with_blend({name: getattr(ScoringParams, name) for name in ScoringParams.BLEND})
        self.n = len(tracks)
        self.colisten = colisten
        self._colisten_indptr = np.asarray(colisten.indptr) if colisten is not None else None  # a memmap's plain view
        self._memo = None
        if memo and index is not None:
            self._memo = NeighbourMemo.for_index(index, self.n, params.min_depth, table=neighbours)
        self._links: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._colisten_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._links_max = 200_000
        self._scratch = threading.local()  # per thread: see _positions
        # The compiled kernel scores what it covers (``_score``); False keeps to numpy (the tests' reference).
        self._kernel = _kernel if compiled else None
        if compiled and _kernel is None:
            log.warning("musicrec.index._kernel is not built (no C compiler at install?): scoring with numpy "
                        "alone, several times slower per answer; reinstall with a compiler to build it")
        # What the kernel reads for every answer, handed over (and checked) once per version.
        self._catalog = None
        if self._kernel is not None:
            table = self._memo.table if self._memo is not None and self._memo.complete else None
            col = (colisten.indptr, colisten.indices, colisten.weights) if colisten is not None else (None,) * 3
            self._catalog = self._kernel.catalog(tracks.song_key, tracks.popularity, table,
                                                 *tracks.link_tables, *col)

    # -- public ---------------------------------------------------------------------------
    def recommend(self, query: Query) -> list[Hit]:
        return self.rank(query).hits()

    def rank(self, query: Query) -> Ranked:
        """``recommend``'s answer as columns (see ``Ranked``)."""
        if query.k < 1:
            return Ranked([], [], [], [])
        if not query.seeds:
            return self._popular(query.k, query.filters, query.exclude)
        p = self.params
        rows, seed_weights = zip(*query.seeds)
        seed_rows = np.array(rows, dtype=np.int64)
        weights = np.array(seed_weights, dtype=np.float32)
        seed_vecs = self._rows(seed_rows)
        # Sorted sets of a few dozen rows: Python's set and sort cost less than numpy's calls here.
        neg_rows = np.array(sorted(set(query.negatives)), dtype=np.int64) if len(query.negatives) else _NO_ROWS
        banned = np.array(sorted({*rows, *query.negatives, *query.exclude}), dtype=np.int64)
        colistened = False
        if self.colisten is not None and p.colisten_weight > 0:
            indptr = self._colisten_indptr
            colistened = bool((indptr[seed_rows + 1] != indptr[seed_rows]).any())
            if not colistened:
                p = self._no_colisten
        artist_weight = p.artist_weight if query.artist_weight is None else query.artist_weight
        ctx = _Context(query, p, seed_rows, seed_vecs, weights[:, None], neg_rows, banned,
                       self.tracks.song_key.take(banned), artist_weight, colistened, min(seed_weights) >= 0)

        depth = self._depth(query.k + len(banned), len(seed_rows), colistened)
        for _ in range(p.max_rounds):
            if depth * 4 >= self.n:
                break  # a search this deep costs as much as the exact scan below
            hits = self._score(self._candidates(depth, ctx), ctx)
            if len(hits.rows) >= query.k:
                return hits
            depth *= 4
        # Exact fallback: every row that passes the filters, so k hits come back whenever k exist.
        everything = np.arange(self.n, dtype=np.int64)
        everything = everything[self._song_allowed(ctx.banned_songs, self.tracks.song_key)]
        return self._score(everything[self._filter_mask(everything, query.filters)], ctx)

    def _depth(self, wanted: int, seeds: int, colistened: bool) -> int:
        """ANN hits per seed for a first round: together enough for ``wanted`` rows, and at least a floor.

        The floor is low when the seeds have co-listened tracks: those and the artists' tracks are
        then nearly all of the answer, and on the dev playlists every floor from 8 to 64 gave the
        same Recall@50 and R-precision; the deeper ones only added candidates to score. Audio
        similarity alone (no co-listening) needs the deeper floor for a few seeds, but many seeds
        share ``ann_rows`` (a long session's seeds each add neighbours the others already bring):
        on the dev playlists that kept the figures of 10 and 20 seeds while a 20-seed answer
        asked a fifth of the neighbour rows. A memo that serves one depth only (HNSW) keeps
        ``min_depth``; too few hits deepen the search anyway (``rank``).
        """
        p = self.params
        if self._memo is not None and not self._memo.prefix:
            floor = p.min_depth
        elif colistened:
            floor = p.colisten_depth
        else:
            floor = max(p.colisten_depth, min(p.min_depth, -(-p.ann_rows // seeds)))
        return max(floor, -(-(wanted + 16) // seeds))

    def _candidates(self, depth: int, ctx: "_Context") -> np.ndarray:
        """Sorted unique int64 rows: each seed's ``depth`` nearest tracks, its artists' tracks (capped) and its
        co-listened tracks, less banned songs."""
        memo, p = self._memo, ctx.params
        cap = p.per_artist_candidates if ctx.artist_weight > 0 else 0
        if self._catalog is not None and memo is not None and memo.complete and memo.serves(depth):
            out = self._out()
            count = self._kernel.candidates(self._catalog, ctx.seed_rows, depth, cap, ctx.colistened,
                                            ctx.banned_songs, self._marks(), out)
            return out[:count].copy()  # the scratch is reused by this thread's next answer
        extra = [self._link_terms(ctx).candidates] if cap else []
        if ctx.colistened:
            extra.append(self._colisten_terms(ctx).rows)
        rows = _unique_rows(self._search(ctx.seed_rows, ctx.seed_vecs, depth),
                            np.concatenate(extra) if extra else np.empty(0, np.int64))
        # A banned row's song key is among the banned songs, so one lookup covers both.
        return rows[self._song_allowed(ctx.banned_songs, self.tracks.song_key.take(rows))]

    def _search(self, seed_rows: np.ndarray, seed_vecs: np.ndarray, depth: int) -> np.ndarray:
        """Row numbers of each seed's ``depth`` nearest tracks (any order, repeats allowed).

        The one place candidates come from; a benchmark overrides it to compare sources.
        """
        if self._memo is not None and self._memo.serves(depth):
            return self._memo.search(self.index, seed_rows, seed_vecs, depth)
        _, ann = self.index.search(seed_vecs, depth)
        return ann[ann >= 0]

    def popular(self, k: int, filters: Filters = Filters(), exclude: Sequence[int] = ()) -> list[Hit]:
        return self._popular(k, filters, exclude).hits()

    def _popular(self, k: int, filters: Filters, exclude: Sequence[int]) -> Ranked:
        """Cold start: popular tracks spread across genres, honouring filters and exclusions.

        The first ``k`` songs of the cold-start order lie in a short prefix of it, so only a
        prefix is filtered and deduplicated (growing when too few pass): the whole order took
        8 ms per call at 114k tracks, and 130 ms at 1M, for a session of nothing but skips.
        """
        spread, song_key = self.tracks.popular_spread, self.tracks.song_key
        excluded = _unique(np.asarray(exclude, dtype=np.int64))
        size = max(4 * k, 256)
        while True:
            order = spread[:size]
            keep = self._filter_mask(order, filters)
            if len(excluded):
                keep &= ~_member(order.astype(np.int64), excluded)
            order = order[keep]
            _, first = np.unique(song_key[order], return_index=True)
            if len(first) >= k or size >= len(spread):
                break
            size *= 4
        order = order[np.sort(first)][:k]
        scores = [p / 100.0 for p in self.tracks.popularity.take(order).tolist()]
        return Ranked(order.tolist(), scores, [-1] * len(order), [POPULAR] * len(order))

    # -- internals ------------------------------------------------------------------------
    def _score(self, candidates: np.ndarray, ctx: "_Context") -> Ranked:
        """Score sorted, unique candidate rows (no banned song among them); the best ``k`` distinct songs, best first.

        The product is candidates × seeds, as the kernel reads it; the numpy path works on its
        transpose, seeds × candidates, so the max over seeds reduces along contiguous rows
        (numpy's max/argmax along a short last axis cost more than the product itself).
        """
        t, p, q = self.tracks, ctx.params, ctx.query
        if q.filters.active:
            candidates = candidates[self._filter_mask(candidates, q.filters)]
        if not len(candidates):
            return Ranked([], [], [], [])
        vecs = self._rows(candidates)
        # vecs @ seeds.T, not seeds @ vecs.T: BLAS rounds the two shapes differently in the last
        # bit, and this one keeps scores (and ties between duplicate listings) as they were.
        sims = vecs @ ctx.seed_vecs.T  # candidates x seeds
        penalty = None
        if len(ctx.neg_rows):
            neg = np.ascontiguousarray((vecs @ self._rows(ctx.neg_rows).T).T)
            penalty = p.skip_penalty * np.maximum(neg.max(axis=0), 0.0)
        mean = p.seed_power == 1.0 and len(ctx.seed_rows) > 1
        covered = math.isinf(p.seed_power) or mean or len(ctx.seed_rows) == 1  # max, mean, or one seed
        if self._catalog is not None and q.diversity <= 0 and covered:
            # The rest of this method, numpy's arithmetic in one compiled call (musicrec/index/_kernel.c),
            # on the product as BLAS wrote it: no transposing copy.
            prior_scale = p.popularity_weight / 100.0 if p.popularity_weight > 0 else 0.0
            return Ranked(*self._kernel.score(
                self._catalog, sims, candidates, ctx.seed_rows, ctx.weights, ctx.artist_weight,
                p.artist_share, p.colisten_weight if ctx.colistened else None, not math.isinf(p.seed_power), mean,
                prior_scale, penalty, q.k, self._positions(), _REASON_NAMES))
        per_seed = np.ascontiguousarray(sims.T)  # seeds x candidates: numpy reduces along contiguous rows
        # What linked each (seed, candidate) cell, for ``reason``: 1 artist/album, 2 co-listening (set last, wins).
        linked = np.zeros((len(ctx.seed_rows), len(candidates)), dtype=np.uint8) \
            if ctx.artist_weight > 0 or ctx.colistened else None
        if not math.isinf(p.seed_power):
            np.maximum(per_seed, 0.0, out=per_seed)  # a power mean needs terms >= 0
        positions = self._positions()
        positions[candidates] = np.arange(len(candidates), dtype=np.int32)
        try:
            if ctx.artist_weight > 0:
                _add_sparse(per_seed, linked, positions, *self._link_terms(ctx).terms.flat(), ctx.artist_weight, 1)
            if ctx.colistened:
                _add_sparse(per_seed, linked, positions, *self._colisten_terms(ctx).terms.flat(), p.colisten_weight, 2)
        finally:
            positions[candidates] = -1  # the map is back to all -1 for the next request
        per_seed *= ctx.weights
        popularity = t.popularity.take(candidates)
        prior = (p.popularity_weight / 100.0) * popularity if p.popularity_weight > 0 else None
        need = max(4 * q.k, 100) if q.diversity > 0 else q.k
        score, scored = _scores(per_seed, p.seed_power, prior, penalty, need if ctx.nonnegative else 0, t.song_key,
                                candidates)
        # Every column left unscored (-inf) ranks below every scored one: rank the scored ones.
        ranking = _ranking(score, popularity, need) if scored is None else \
            scored[_ranking(score.take(scored), popularity.take(scored), need)]
        order = _first_per_song(ranking, t.song_key, candidates, need, score, popularity)
        if q.diversity > 0:
            order = _mmr(vecs, score, order, q.k, q.diversity)
        else:
            order = order[:q.k]
        best_seed = per_seed[:, order].argmax(axis=0)
        reasons = _reasons(linked[best_seed, order] if linked is not None else None, len(order))
        return Ranked(candidates[order].tolist(), score[order].tolist(), ctx.seed_rows[best_seed].tolist(), reasons)

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        return self._vectors.take(rows, axis=0).astype(np.float32, copy=False)

    def _artist_rows(self, row: int) -> list[np.ndarray]:
        t = self.tracks
        return [r for a in t.artists[row].split(";") if (r := t.artist_rows.get(a.strip())) is not None]

    def _track_links(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One track's (capped artist candidates, affinity rows, affinity values), kept per track.

        a(s, c) for a fixed seed s is a fixed sparse row: ``artist_share`` on its artists' tracks,
        1 on its album's (an album match wins, as it did when marked after the artists). Seeds
        repeat across a listener's requests, so this is computed once per track, not per request.
        """
        links = self._links.get(row)
        if links is not None:
            return links
        t, p = self.tracks, self.params
        artist_parts = self._artist_rows(row)
        capped = (np.concatenate([rows[:p.per_artist_candidates] for rows in artist_parts]).astype(np.int64)
                  if artist_parts else np.empty(0, np.int64))
        album_rows = t.album_rows.get(t.album_key[row]) if t.album[row] else None
        parts = [*artist_parts, *([album_rows] if album_rows is not None else [])]
        if parts:
            # One value per row, sorted by row: the album's 1 wins over an artist's share.
            rows = _unique(np.concatenate(parts).astype(np.int64))
            vals = np.full(len(rows), p.artist_share, dtype=np.float32)
            if album_rows is not None:
                vals[np.searchsorted(rows, album_rows)] = 1.0
        else:
            rows, vals = np.empty(0, np.int64), np.empty(0, np.float32)
        links = (capped, rows, vals)
        if len(self._links) >= self._links_max:
            self._links.clear()  # crude bound: refills from the tracks being played now
        self._links[row] = links
        return links

    def _link_terms(self, ctx: "_Context") -> "_Links":
        """The numpy path's artist and album terms for this request's seeds, made once per request."""
        if ctx.links is None:
            ctx.links = self._seed_links(ctx.seed_rows)
        return ctx.links

    def _colisten_terms(self, ctx: "_Context") -> "_Colisten":
        """The numpy path's co-listening terms for this request's seeds, made once per request."""
        if ctx.colisten is None:
            ctx.colisten = self._seed_colisten(ctx.seed_rows)
        return ctx.colisten

    def _seed_links(self, seed_rows: np.ndarray) -> "_Links":
        """The seeds' artist and album tracks for one request.

        ``candidates`` are the seeds' artists' tracks (capped, most popular first): tracks the
        ANN may miss. ``terms`` are each seed's a(s, c) entries.
        """
        per_seed = [self._track_links(row) for row in seed_rows.tolist()]
        capped = [links[0] for links in per_seed if len(links[0])]
        candidates = np.concatenate(capped) if capped else np.empty(0, np.int64)  # made unique with the ANN rows
        return _Links(candidates, _Terms(per_seed))

    def _song_allowed(self, banned_songs: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Whether each song key is not among ``banned_songs``, from this thread's song-key-long flag map.

        Why: a gather from a flag map costs a fraction of a binary search per candidate; the
        map is all True again on return.
        """
        allowed = getattr(self._scratch, "song_allowed", None)
        if allowed is None:
            allowed = self._scratch.song_allowed = np.ones(int(self.tracks.song_key.max(initial=-1)) + 1, dtype=bool)
        allowed[banned_songs] = False
        try:
            return allowed.take(keys)
        finally:
            allowed[banned_songs] = True

    def _marks(self) -> np.ndarray:
        """This thread's catalog-long bitmap for the kernel's candidate union (``candidates``), zero between uses."""
        marks = getattr(self._scratch, "marks", None)
        if marks is None:
            marks = self._scratch.marks = np.zeros(self._kernel.bitmap_words(self.n), dtype=np.uint64)
        return marks

    def _out(self) -> np.ndarray:
        """This thread's catalog-long int64 array for the kernel's candidate union to be written into."""
        out = getattr(self._scratch, "out", None)
        if out is None:
            out = self._scratch.out = np.empty(self.n, dtype=np.int64)
        return out

    def _positions(self) -> np.ndarray:
        """This thread's catalog-long row -> candidate position map, all -1 between uses.

        Why: finding each seed's linked rows among the candidates by binary search cost more than
        the scoring around it; one gather from a catalog-long int32 map is a few microseconds.
        Whoever fills it (``_score`` or the kernel) sets it back to -1.
        """
        positions = getattr(self._scratch, "positions", None)
        if positions is None:
            positions = self._scratch.positions = np.full(self.n, -1, dtype=np.int32)
        return positions

    def _track_colisten(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """One track's co-listened (rows, weights), read from the memory-mapped table once per track."""
        found = self._colisten_rows.get(row)
        if found is None:
            rows, weights = self.colisten.neighbours(row)  # type: ignore[union-attr]
            found = (rows.astype(np.int64), np.array(weights, dtype=np.float32))
            if len(self._colisten_rows) >= self._links_max:
                self._colisten_rows.clear()  # the same crude bound as the artist links
            self._colisten_rows[row] = found
        return found

    def _seed_colisten(self, seed_rows: np.ndarray) -> "_Colisten":
        """``ColistenTable.gather`` for the seeds (same entries, same order), from the per-track cache."""
        per_seed = [self._track_colisten(row) for row in seed_rows.tolist()]
        if not any(len(rows) for rows, _ in per_seed):
            return _Colisten(np.empty(0, np.int64), _Terms(per_seed))
        return _Colisten(np.concatenate([rows for rows, _ in per_seed]), _Terms(per_seed))

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


class NeighbourMemo:
    """Each seed track's ANN answer: precomputed by the build, or kept after its first search.

    Seeds are always catalog tracks, so a track's neighbour list is a fixed function of its row:
    searching it again returns the same rows. The build searches every row once (``fill``) and
    ships the table (``neighbours.npy``, memory-mapped read-only, so the workers share one copy
    in the page cache: 46 MB at 114k, 512 MB at 1M); a request is then a table lookup. Without
    one (an older version), the table is ``n × width`` int32 allocated zeroed and filled on
    demand, so its resident memory grows with the tracks actually played.

    ``width`` answers serve every depth up to it only for indexes whose top-d is the prefix of
    their top-w (flat and IVF scan the same vectors whatever k is); HNSW's beam depends on k, so
    there the memo serves exactly ``width``. Concurrent fills of a row write identical values and
    set ``filled`` after the row, so readers never see half a row.
    """

    PREFIX_WIDTH = 128

    def __init__(self, n: int, width: int, prefix: bool, table: np.ndarray | None = None) -> None:
        self.width = width
        self.prefix = prefix
        if table is None:
            self.table = np.zeros((n, width), dtype=np.int32)
            self.filled = np.zeros(n, dtype=bool)
        else:  # precomputed at build time (``fill``): every row is there, nothing is written
            self.table = np.asarray(table)  # a plain view of a memmap: cheaper to index per request
            self.filled = np.ones(n, dtype=bool)
        self.complete = table is not None  # every row filled: a search reads, nothing to check

    @classmethod
    def for_index(cls, index: faiss.Index, n: int, min_depth: int, *, table: np.ndarray | None = None) -> "NeighbourMemo":
        """The memo this index needs; ``table`` (the build's, ``fill``-ed) is used when its shape fits."""
        inner = faiss.downcast_index(index)
        prefix = isinstance(inner, (faiss.IndexFlat, faiss.IndexIVF))
        width = max(min_depth, cls.PREFIX_WIDTH) if prefix else min_depth
        if table is not None and (table.shape != (n, width) or table.dtype != np.int32):
            log.warning("ignoring the precomputed neighbour table: %s %s, this index needs (%d, %d) int32",
                        table.shape, table.dtype, n, width)
            table = None
        return cls(n, width, prefix, table)

    def fill(self, index: faiss.Index, vectors: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """Search every row now (at build time), so a service never searches at request time.

        Why: at 1M tracks a seed's first search costs ~0.3 ms, and a listener's first request
        ~5 ms; a burst of new listeners queued behind them (benchmarks/README.md).
        """
        for start in range(0, len(self.filled), batch):
            stop = min(start + batch, len(self.filled))
            _, ann = index.search(np.ascontiguousarray(vectors[start:stop], dtype=np.float32), self.width)
            self.table[start:stop] = ann
        self.filled[:] = True
        self.complete = True
        return self.table

    def serves(self, depth: int) -> bool:
        return depth <= self.width if self.prefix else depth == self.width

    def search(self, index: faiss.Index, seed_rows: np.ndarray, seed_vecs: np.ndarray, depth: int) -> np.ndarray:
        missing = None if self.complete else ~self.filled[seed_rows]
        if missing is not None and missing.any():
            rows = seed_rows[missing]
            _, ann = index.search(seed_vecs[missing], self.width)
            self.table[rows] = ann
            self.filled[rows] = True
        found = self.table[seed_rows, :depth]
        return found[found >= 0]


@dataclass(frozen=True)
class _Terms:
    """One request's sparse (seed, row) terms: per seed a tuple ending in (rows int64, values float32).

    Kept per seed, as the per-track caches hold them: the kernel reads them so, and only the
    numpy path pays for flattening them.
    """

    per_seed: list[tuple[np.ndarray, ...]]

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, seed, values) of every entry, seed by seed: ``_add_sparse``'s input."""
        lengths = [len(entry[-2]) for entry in self.per_seed]
        return (np.concatenate([entry[-2] for entry in self.per_seed]),
                np.repeat(np.arange(len(self.per_seed), dtype=np.int64), lengths),
                np.concatenate([entry[-1] for entry in self.per_seed]))


@dataclass(frozen=True)
class _Links:
    """The seeds' artist and album tracks for one request (see ``Recommender._seed_links``)."""

    candidates: np.ndarray   # int64 rows, repeats allowed (``recommend`` uniques them with the ANN rows)
    terms: _Terms            # each seed's (…, rows it has an affinity with, a(s, c))


@dataclass(frozen=True)
class _Colisten:
    """The seeds' co-listened tracks for one request (``ColistenTable.gather``)."""

    rows: np.ndarray    # int64: every seed's co-listened rows, seed by seed
    terms: _Terms       # each seed's (rows, l(s, c))


@dataclass(slots=True)
class _Context:
    query: Query
    params: ScoringParams     # the blend for this request (see ``Recommender._no_colisten``)
    seed_rows: np.ndarray
    seed_vecs: np.ndarray
    weights: np.ndarray
    neg_rows: np.ndarray
    banned: np.ndarray
    banned_songs: np.ndarray
    artist_weight: float
    colistened: bool          # some seed has co-listened tracks (and the blend weighs them)
    nonnegative: bool = True  # every seed weight >= 0: no power mean exceeds its column's max (``_scores``)
    # The numpy path's per-seed terms, made when it first needs them (``Recommender._link_terms``, ``_colisten_terms``):
    # the kernel reads the catalog's tables instead.
    links: _Links | None = None
    colisten: _Colisten | None = None


def _find(sorted_set: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``sorted_set``, found?) of each value, by binary search; ``sorted_set`` non-empty."""
    pos = np.searchsorted(sorted_set, values)
    pos[pos == len(sorted_set)] = 0
    return pos, sorted_set[pos] == values


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_set)`` for a sorted set, by binary search (cheaper for small sets)."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    return _find(sorted_set, values)[1]


def _unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` for a small int array (a sort and a mask; numpy's hashing path costs more here)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _unique_rows(ann: np.ndarray, affinity_rows: np.ndarray) -> np.ndarray:
    """The sorted union of two row arrays as int64, sorted as int32 (half the bytes to sort)."""
    rows = _unique(np.concatenate([ann, affinity_rows], dtype=np.int32, casting="same_kind"))
    return rows.astype(np.int64)


def _power_mean(per_seed: np.ndarray, power: float) -> np.ndarray:
    """(mean over seeds of v^p)^(1/p) per candidate column: p = inf is the max, 1 the mean."""
    if math.isinf(power) or len(per_seed) == 1:
        return per_seed.max(axis=0)
    if power == 1.0:
        return per_seed.mean(axis=0)
    top = per_seed.max(axis=0)
    scale = np.where(top > 0, top, 1.0).astype(per_seed.dtype)
    return top * np.power(np.power(per_seed / scale, power).mean(axis=0), 1.0 / power)


_BOUNDED = 256  # columns scored exactly first: enough that the floor usually clears the rest


def _scores(per_seed: np.ndarray, power: float, prior: np.ndarray | None, penalty: np.ndarray | None, need: int,
            song_key: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(score, the columns scored) with score = M_p(per_seed) + prior − penalty; −inf where it cannot matter.

    A power mean costs a pow per cell, most of a request's scoring, yet only the columns that
    can reach the head of the ranking (its best ``need`` songs) are used. M_p never exceeds
    its column's max when no term is negative, so max + prior − penalty (a hair above, for
    rounding) bounds each score. The best-bounded columns are scored exactly; the ``need``-th
    distinct song among them is a floor that the answer's songs reach, and a column whose
    bound is below it scores below that many songs: it gets −inf, which ranks it where it
    could be used, nowhere. When the floor does not clear every column left out, those whose
    bound reaches it are scored instead. ``need`` 0 scores every column (and says None for
    which). Per column the arithmetic is that of the whole matrix, so the scores are the same bits.
    """
    def total(score: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
        if prior is not None:  # float64: added as the full-width prior always was
            score += prior if cols is None else prior.take(cols)
        if penalty is not None:
            score -= penalty if cols is None else penalty.take(cols)
        return score

    width, size = per_seed.shape[1], max(4 * (need + 32), _BOUNDED)
    if need < 1 or math.isinf(power) or power == 1.0 or len(per_seed) == 1 or 2 * size > width:
        return total(_power_mean(per_seed, power), None), None
    bound = total(per_seed.max(axis=0) * np.float32(1.0 + 1e-4), None)
    if np.isnan(bound).any():
        return total(_power_mean(per_seed, power), None), None
    part = np.argpartition(bound, width - size)
    cols = np.sort(part[width - size:])
    exact = total(_power_mean(np.take(per_seed, cols, axis=1), power), cols)
    by_score = np.argsort(-exact)
    first = _first_seen(song_key.take(candidates.take(cols.take(by_score[:need + 32]))))  # as a ranking head is
    if len(first) < need:
        first = _first_seen(song_key.take(candidates.take(cols.take(by_score))))
        if len(first) < need:
            return total(_power_mean(per_seed, power), None), None
    floor = exact[by_score[first[need - 1]]]
    if bound[part[width - size]] >= floor:  # a column left out may reach the floor
        cols = np.flatnonzero(bound >= floor)
        if len(cols) < 2:  # numpy sums a single column in another order: the whole mean, then
            return total(_power_mean(per_seed, power), None), None
        exact = total(_power_mean(np.take(per_seed, cols, axis=1), power), cols)
    score = np.full(width, -np.inf, dtype=exact.dtype)
    score[cols] = exact
    return score, cols


_NO_ROWS = np.empty(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False

_REASON_NAMES = (SOUNDS_LIKE, SAME_ARTIST, CO_LISTENED)  # by link flag
_REASON_OF = np.array(_REASON_NAMES, dtype=object)


def _reasons(linked: np.ndarray | None, count: int) -> list[str]:
    """Each chosen (seed, candidate) cell's link flag as a reason: co-listening, artist, else sound."""
    if linked is None:
        return [SOUNDS_LIKE] * count
    return _REASON_OF[linked].tolist()


def _add_sparse(per_seed: np.ndarray, linked: np.ndarray, positions: np.ndarray, rows: np.ndarray, seed: np.ndarray,
                value: np.ndarray, weight: float, flag: int) -> None:
    """per_seed[s, i] += weight · value for each (seed s, row) pair whose row is candidate i; flags those cells.

    Only those cells change: adding weight · 0 elsewhere would leave every score as it is, so
    the dense a(s, c) or l(s, c) matrix is never built. A seed's rows are unique, so no cell repeats.
    Cells are addressed by flat index (a 1-d gather and scatter cost half of a 2-d one), and the
    flag is set, not or-ed: the later call's flag is the one that wins the reason anyway.
    """
    if not len(rows):
        return
    pos = positions[rows]
    hit = pos >= 0
    cells = seed[hit] * per_seed.shape[1] + pos[hit]
    per_seed.reshape(-1)[cells] += weight * value[hit]
    linked.reshape(-1)[cells] = flag


def _ranking(score: np.ndarray, popularity: np.ndarray, need: int) -> np.ndarray:
    """Best score first; equal scores by popularity, then row: a prefix holding every score ≥ the best ``need``-th.

    Ties are kept whole, so the prefix equals the full ranking's head; sorting only it saves
    most of the sort. ``_first_per_song`` falls back to the full ranking when short. Why
    popularity breaks ties: one song listed under several ids (releases, compilations) has one
    set of features, hence equal scores, and the listener should get the release people play.
    """
    head = need + 48
    if len(score) <= 2 * head:
        return np.lexsort((-popularity, -score))
    threshold = np.partition(score, len(score) - head)[len(score) - head]
    top = np.flatnonzero(score >= threshold)
    return top[np.lexsort((-popularity[top], -score[top]))]


def _first_per_song(order: np.ndarray, song_key: np.ndarray, candidates: np.ndarray, need: int, score: np.ndarray,
                    popularity: np.ndarray) -> np.ndarray:
    """``order`` with every song after its first (best) id dropped; at least ``need`` long when possible.

    Deduplicating only a prefix of the ranking gives the same head as deduplicating it all,
    and the head is all that is used, so only the head's song keys are read. A short partial
    ranking (``_ranking``) is redone in full.
    """
    prefix = need + 32
    while True:
        head = order[:prefix]
        first = _first_seen(song_key.take(candidates.take(head)))
        if len(first) >= need:
            return head[first]
        if prefix >= len(order):
            if len(order) == len(score):
                return head[first]
            order = _ranking(score, popularity, len(score))  # the full ranking
        prefix *= 4


def _first_seen(keys: np.ndarray) -> np.ndarray:
    """Positions of each key's first occurrence, in order (``np.sort(np.unique(keys, return_index=True)[1])``).

    A set in Python is cheaper than numpy's unique for the short ranking heads of most requests.
    """
    if len(keys) > 256:
        return np.sort(np.unique(keys, return_index=True)[1])
    seen: set[int] = set()
    first = [i for i, key in enumerate(keys.tolist()) if not (key in seen or seen.add(key))]
    return np.array(first, dtype=np.int64)


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
