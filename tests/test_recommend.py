"""Scoring against brute force on a small synthetic catalog: max-similarity, then the hybrid blend."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicrec.index.catalog import TrackTable
from musicrec.index.colisten import ColistenTable
from musicrec.indexer.colisten import table_from_pairs
from musicrec.index.faiss_index import build_index
from musicrec.index.recommend import Filters, Query, Recommender, ScoringParams, Seed, seeds_from_events

N, DIM = 600, 32
GENRES = ["pop", "rock", "jazz", "folk", "metal", "rare"]


def _catalog(seed: int = 0) -> tuple[np.ndarray, TrackTable]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    genre = [GENRES[i % 5] for i in range(N)]
    for i in range(0, N, 100):  # a rare genre: 6 tracks
        genre[i] = "rare"
    frame = pd.DataFrame({
        "id": [f"t{i:04d}" for i in range(N)],
        "name": [f"Song {i}" for i in range(N)],
        "artists": [f"Artist {i % 40}" for i in range(N)],
        "artist": [f"Artist {i % 40}" for i in range(N)],
        "album": [f"Album {i % 120}" for i in range(N)],
        "genre": genre, "genres": genre,
        "popularity": rng.integers(0, 101, N), "explicit": rng.random(N) < 0.3,
        "danceability": rng.random(N),
    })
    return vectors, TrackTable.from_frame(frame, ["danceability"])


VECTORS, TRACKS = _catalog()
PURE = ScoringParams().content_only()


def _recommender(params: ScoringParams = PURE, tracks: TrackTable = TRACKS, vectors: np.ndarray = VECTORS) -> Recommender:
    return Recommender(vectors, build_index(vectors, "flat"), tracks, params)


def brute_force(seeds: list[Seed], k: int, exclude: set[int] = frozenset()) -> list[tuple[int, float, int]]:
    rows = np.array([s.row for s in seeds])
    weights = np.array([s.weight for s in seeds], dtype=np.float32)
    per_seed = (VECTORS @ VECTORS[rows].T) * weights
    best = per_seed.argmax(axis=1)
    score = per_seed.max(axis=1)
    ranked = [(int(r), float(score[r]), int(rows[best[r]])) for r in np.argsort(-score, kind="stable")
              if r not in set(rows) | set(exclude)]
    return ranked[:k]


def test_max_aggregation_matches_brute_force() -> None:
    seeds = [Seed(r, 1.0) for r in (3, 77, 150, 420)]
    hits = _recommender().recommend(Query(seeds=seeds, k=25, artist_weight=0.0))
    expected = brute_force(seeds, 25)
    assert [h.row for h in hits] == [r for r, _, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s, _ in expected], rtol=1e-5)
    assert [h.because for h in hits] == [b for _, _, b in expected]


def test_seed_weights_scale_each_seeds_similarity() -> None:
    seeds = [Seed(10, 1.0), Seed(20, 0.3), Seed(30, 0.6)]
    hits = _recommender().recommend(Query(seeds=seeds, k=15))
    assert [(h.row, h.because) for h in hits] == [(r, b) for r, _, b in brute_force(seeds, 15)]


def test_seeds_are_never_returned_and_exclusions_still_fill_k() -> None:
    seeds = [Seed(5, 1.0), Seed(6, 1.0)]
    top = [h.row for h in _recommender().recommend(Query(seeds=seeds, k=40))]
    exclude = top[:30]
    hits = _recommender().recommend(Query(seeds=seeds, k=40, exclude=exclude))
    assert len(hits) == 40
    assert not {h.row for h in hits} & (set(exclude) | {5, 6})
    assert [h.row for h in hits] == [r for r, _, _ in brute_force(seeds, 40, set(exclude))]


def test_a_skip_pushes_its_neighbours_down() -> None:
    seeds = [Seed(100, 1.0)]
    before = _recommender().recommend(Query(seeds=seeds, k=10))
    skipped = before[0].row
    close_to_skip = int(np.argsort(-(VECTORS @ VECTORS[skipped]))[1])
    after = _recommender().recommend(Query(seeds=seeds, k=10, negatives=[skipped]))
    assert skipped not in {h.row for h in after}
    rank = {h.row: i for i, h in enumerate(after)}
    old_rank = {h.row: i for i, h in enumerate(before)}
    if close_to_skip in old_rank:
        assert rank.get(close_to_skip, 99) >= old_rank[close_to_skip]
    for hit in after:
        raw = float(VECTORS[hit.row] @ VECTORS[100])
        penalty = PURE.skip_penalty * max(0.0, float(VECTORS[hit.row] @ VECTORS[skipped]))
        assert hit.score == pytest.approx(raw - penalty, abs=1e-5)


def test_session_events_become_weighted_seeds_and_negatives() -> None:
    row_of = TRACKS.row_of
    events = [("skip", "t0002"), ("like", "t0001"), ("track_view", "t0002"), ("track_view", "t0003"),
              ("track_view", "t0001"), ("track_view", "gone")]  # newest first
    params = ScoringParams()
    session = seeds_from_events(events, row_of, params)
    assert session.negatives == [2]
    weights = {s.row: s.weight for s in session.seeds}
    assert set(weights) == {1, 3}
    assert weights[1] == pytest.approx(params.like_weight * params.recency_decay ** 1)
    assert weights[3] == pytest.approx(params.view_weight * params.recency_decay ** 3)
    assert sorted(session.seen) == [1, 2, 3]


def test_likes_outweigh_views() -> None:
    params = ScoringParams()
    liked = seeds_from_events([("like", "t0010")], TRACKS.row_of, params).seeds[0].weight
    viewed = seeds_from_events([("track_view", "t0010")], TRACKS.row_of, params).seeds[0].weight
    assert liked > viewed


@pytest.mark.parametrize("filters", [
    Filters(genres=frozenset({"rare"})),
    Filters(explicit=True),
    Filters(min_popularity=95),
    Filters(genres=frozenset({"jazz", "rare"}), explicit=False, max_popularity=50),
], ids=["rare-genre", "explicit", "popular", "combined"])
def test_filters_still_fill_k_when_k_exist(filters: Filters) -> None:
    rec = _recommender()
    allowed = np.flatnonzero(rec._filter_mask(np.arange(N), filters))
    k = min(20, len(allowed) - 1)
    hits = rec.recommend(Query(seeds=[Seed(7, 1.0)], k=k, filters=filters))
    assert len(hits) == k
    assert {h.row for h in hits} <= set(allowed.tolist())


def test_the_same_song_under_two_ids_appears_once() -> None:
    vectors = VECTORS.copy()
    vectors[201] = vectors[200]  # a duplicate listing: same name and artist, another id
    frame_tracks = _catalog()[1]
    name = frame_tracks.name.copy()
    name[201] = name[200]
    artist = frame_tracks.artist.copy()
    artist[201] = artist[200]
    frame = pd.DataFrame({"id": frame_tracks.ids, "name": name, "artists": artist, "artist": artist,
                          "album": frame_tracks.album, "genre": frame_tracks.genre, "genres": frame_tracks.genres,
                          "popularity": frame_tracks.popularity, "explicit": frame_tracks.explicit,
                          "danceability": frame_tracks.features[:, 0]})
    tracks = TrackTable.from_frame(frame, ["danceability"])
    rec = _recommender(tracks=tracks, vectors=vectors)
    hits = rec.recommend(Query(seeds=[Seed(int(np.argsort(-(vectors @ vectors[200]))[2]), 1.0)], k=30))
    assert len({200, 201} & {h.row for h in hits}) == 1
    # The listing kept is the one people play: the more popular, whichever row comes first.
    for popular in (200, 201):
        popularity = frame_tracks.popularity.copy()
        popularity[[200, 201]] = 5
        popularity[popular] = 90
        ranked = _recommender(tracks=TrackTable.from_frame(frame.assign(popularity=popularity), ["danceability"]),
                              vectors=vectors)
        hits = ranked.recommend(Query(seeds=[Seed(int(np.argsort(-(vectors @ vectors[200]))[2]), 1.0)], k=30))
        assert {200, 201} & {h.row for h in hits} == {popular}
    # And a seed's duplicate listing is not recommended back.
    hits = rec.recommend(Query(seeds=[Seed(200, 1.0)], k=30))
    assert 201 not in {h.row for h in hits}


def test_artist_affinity_lifts_same_artist_tracks() -> None:
    seed = Seed(12, 1.0)
    content = _recommender().recommend(Query(seeds=[seed], k=20, artist_weight=0.0))
    boosted = _recommender().recommend(Query(seeds=[seed], k=20, artist_weight=0.5))
    same_artist = set(TRACKS.artist_rows[TRACKS.artist[12]].tolist()) - {12}
    assert len(same_artist & {h.row for h in boosted}) > len(same_artist & {h.row for h in content})
    same_album = set(TRACKS.album_rows[TRACKS.album_key[12]].tolist()) - {12}
    for hit in boosted:
        cos = float(VECTORS[hit.row] @ VECTORS[12])
        a = 1.0 if hit.row in same_album else (PURE.artist_share if hit.row in same_artist else 0.0)
        assert hit.score == pytest.approx(cos + 0.5 * a, abs=1e-5)


def test_diversity_spreads_the_answer() -> None:
    seeds = [Seed(r, 1.0) for r in (1, 2)]

    def spread(diversity: float) -> float:
        rows = [h.row for h in _recommender().recommend(Query(seeds=seeds, k=15, diversity=diversity))]
        sims = VECTORS[rows] @ VECTORS[rows].T
        return float(sims[np.triu_indices(len(rows), 1)].mean())

    assert spread(0.7) < spread(0.0)


def test_cold_start_spreads_popular_tracks_across_genres() -> None:
    hits = _recommender().recommend(Query(seeds=[], k=12))
    assert len(hits) == 12 and all(h.because == -1 for h in hits)
    first_round = [TRACKS.genre[h.row] for h in hits[:len(GENRES)]]
    assert sorted(first_round) == sorted(GENRES)
    top = max(range(N), key=lambda r: (TRACKS.popularity[r], -r))
    assert hits[0].row == top


def _repeating_catalog() -> TrackTable:
    """600 ids for 150 songs (each listed 4 times, as releases and compilations do)."""
    rng = np.random.default_rng(5)
    genre = [GENRES[i % 6] for i in range(N)]
    frame = pd.DataFrame({
        "id": [f"r{i:04d}" for i in range(N)], "name": [f"Song {i % 150}" for i in range(N)],
        "artists": [f"Artist {i % 30}" for i in range(N)], "artist": [f"Artist {i % 30}" for i in range(N)],
        "album": ["A"] * N, "genre": genre, "genres": genre, "popularity": rng.integers(0, 101, N),
        "explicit": rng.random(N) < 0.5, "danceability": rng.random(N),
    })
    return TrackTable.from_frame(frame, ["danceability"])


REPEATING = _repeating_catalog()


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 200),
    genres=st.sets(st.sampled_from(GENRES), max_size=2),
    explicit=st.sampled_from([None, True, False]),
    popularity=st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted),
    exclude=st.lists(st.integers(0, N - 1), max_size=300),
)
def test_cold_start_equals_deduplicating_the_whole_order(k, genres, explicit, popularity, exclude) -> None:
    """``popular`` looks only at a prefix of the cold-start order; the answer is the whole order's."""
    filters = Filters(frozenset(genres), explicit, popularity[0], popularity[1])
    recommender = _recommender(tracks=REPEATING)
    order = REPEATING.popular_spread
    order = order[recommender._filter_mask(order, filters) & ~np.isin(order, exclude)]
    _, first = np.unique(REPEATING.song_key[order], return_index=True)
    expected = order[np.sort(first)][:k].tolist()
    assert [h.row for h in recommender.popular(k, filters, exclude)] == expected


@settings(max_examples=40, deadline=None)
@given(
    seed_rows=st.lists(st.integers(0, N - 1), min_size=1, max_size=12, unique=True),
    k=st.integers(1, 60),
    negatives=st.lists(st.integers(0, N - 1), max_size=4, unique=True),
    artist_weight=st.sampled_from([0.0, 0.15, 1.0]),
)
def test_answers_are_sorted_complete_and_clean(seed_rows, k, negatives, artist_weight) -> None:
    hits = _recommender().recommend(Query(seeds=[Seed(r, 1.0) for r in seed_rows], k=k, negatives=negatives,
                                          artist_weight=artist_weight))
    assert len(hits) == min(k, N - len(set(seed_rows) | set(negatives)))
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert not {h.row for h in hits} & (set(seed_rows) | set(negatives))
    assert all(h.because in seed_rows for h in hits)


def _colisten_table(seed: int = 3, pairs: int = 900) -> ColistenTable:
    """Random symmetric co-listening weights on the test catalog (a few tracks per track)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, N, pairs), rng.integers(0, N, pairs)
    keep = a != b
    a, b = a[keep], b[keep]
    key = np.unique(np.minimum(a, b) * N + np.maximum(a, b))
    lo, hi = key // N, key % N
    w = rng.uniform(0.01, 0.5, len(key)).astype(np.float32)
    return table_from_pairs(np.concatenate([lo, hi]), np.concatenate([hi, lo]), np.concatenate([w, w]), N,
                                    top_n=N)


COLISTEN = _colisten_table()


def hybrid_brute_force(seeds: list[Seed], params: ScoringParams, k: int) -> list[tuple[int, float, int, str]]:
    """The module docstring's score for every catalog row, in plain numpy over the dense matrices."""
    rows = np.array([s.row for s in seeds])
    if not any(len(COLISTEN.neighbours(int(r))[0]) for r in rows):  # no co-listening: a version without events
        params = params.with_blend({name: getattr(ScoringParams(), name) for name in ScoringParams.BLEND})
    weights = np.array([s.weight for s in seeds])[:, None]
    cos = (VECTORS[rows] @ VECTORS.T).astype(np.float64)
    if not np.isinf(params.seed_power):
        cos = np.maximum(cos, 0.0)
    affinity = np.zeros_like(cos)
    colisten = np.zeros_like(cos)
    for i, s in enumerate(rows):
        for artist in TRACKS.artists[s].split(";"):
            affinity[i, TRACKS.artist_rows[artist]] = params.artist_share
        affinity[i, TRACKS.album_rows[TRACKS.album_key[s]]] = 1.0
        others, w = COLISTEN.neighbours(int(s))
        colisten[i, others] = w
    per_seed = weights * (cos + params.artist_weight * affinity + params.colisten_weight * colisten)
    if np.isinf(params.seed_power):
        score = per_seed.max(axis=0)
    else:
        score = np.mean(per_seed ** params.seed_power, axis=0) ** (1 / params.seed_power)
    score = score + params.popularity_weight * TRACKS.popularity / 100.0
    best = per_seed.argmax(axis=0)
    out = []
    for r in np.lexsort((-TRACKS.popularity.astype(np.int64), -score)):
        if r in set(rows.tolist()):
            continue
        s = best[r]
        reason = ("co-listened" if colisten[s, r] > 0 else  # only terms in the score count as reasons
                  "same artist" if params.artist_weight > 0 and affinity[s, r] > 0 else "sounds like")
        out.append((int(r), float(score[r]), int(rows[s]), reason))
    return out[:k]


@settings(max_examples=40, deadline=None)
@given(
    seed_rows=st.lists(st.integers(0, N - 1), min_size=1, max_size=8, unique=True),
    seed_weights=st.lists(st.floats(0.2, 1.0), min_size=8, max_size=8),
    colisten_weight=st.sampled_from([0.5, 3.0]),
    seed_power=st.sampled_from([1.0, 2.0, math.inf]),
    artist_weight=st.sampled_from([0.0, 0.5]),
    popularity_weight=st.sampled_from([0.0, 1.0]),
)
def test_hybrid_scores_match_brute_force(seed_rows, seed_weights, colisten_weight, seed_power, artist_weight,
                                         popularity_weight) -> None:
    """Co-listening, artist, popularity and the power mean over seeds, checked on every row.

    ANN depths as deep as the catalog make the scorer take its exact path (every row a candidate), so
    the brute force over the whole catalog is the answer to compare with, order, scores, seeds and reasons.
    """
    params = ScoringParams(colisten_weight=colisten_weight, seed_power=seed_power, artist_weight=artist_weight,
                           popularity_weight=popularity_weight, min_depth=N, colisten_depth=N)
    seeds = [Seed(r, w) for r, w in zip(seed_rows, seed_weights)]
    recommender = Recommender(VECTORS, build_index(VECTORS, "flat"), TRACKS, params, colisten=COLISTEN)
    hits = recommender.recommend(Query(seeds=seeds, k=150))
    expected = {e[0]: e for e in hybrid_brute_force(seeds, params, N)}
    np.testing.assert_allclose([h.score for h in hits], [expected[h.row][1] for h in hits], rtol=1e-4, atol=1e-5)
    # The best 150 rows, in order; rows whose scores differ only by float32 rounding may swap.
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == 150
    left_out = [e[1] for r, e in expected.items() if r not in {h.row for h in hits}]
    assert max(left_out) <= min(scores) + 1e-5
    assert [(h.because, h.reason) for h in hits] == [expected[h.row][2:] for h in hits]


@settings(max_examples=60, deadline=None)
@given(
    data_seed=st.integers(0, 2**32 - 1),
    seeds=st.integers(2, 24),
    width=st.integers(512, 4000),
    power=st.sampled_from([1.5, 2.0, 4.0, 7.0]),
    need=st.integers(1, 120),
    songs=st.sampled_from([40, 400, 100_000]),
    with_prior=st.booleans(),
    with_penalty=st.booleans(),
    spikes=st.sampled_from([0.0, 0.3, 0.8]),
)
def test_bounded_power_mean_ranks_the_head_as_the_whole_one(data_seed, seeds, width, power, need, songs, with_prior,
                                                             with_penalty, spikes) -> None:
    """``_scores`` with a ``need`` scores only the columns that can reach the head: the head is the same bits.

    Oracle: every column scored (need 0). Songs listed twice (equal columns), few distinct songs
    and zero cells make ties and deep deduplication that the floor must survive; columns with one
    loud seed fill the first exactly scored columns with ones that rank low, so the floor is
    low and the bound itself decides which columns are scored; columns where every seed agrees
    score their bound exactly.
    """
    from musicrec.index.recommend import _first_per_song, _ranking, _scores

    rng = np.random.default_rng(data_seed)
    per_seed = rng.random((seeds, width), dtype=np.float32) * np.float32(rng.choice([0.5, 1.0, 3.0]))
    per_seed[rng.random((seeds, width)) < 0.4] = 0.0
    spiky = np.flatnonzero(rng.random(width) < spikes)  # one loud seed: a high max, a low mean
    per_seed[:, spiky] = 0.0
    per_seed[rng.integers(0, seeds, len(spiky)), spiky] = rng.random(len(spiky), dtype=np.float32) * np.float32(3.0)
    flat = rng.integers(0, width, width // 4)  # every seed alike: the mean is the max, the bound is tight
    per_seed[:, flat] = per_seed[0, flat]
    twins = rng.integers(0, width, width // 10)
    per_seed[:, twins] = per_seed[:, rng.integers(0, width, len(twins))]
    candidates = np.sort(rng.choice(100_000, width, replace=False)).astype(np.int64)
    song_key = rng.integers(0, songs, 100_000).astype(np.int32)
    popularity = rng.integers(0, 101, width).astype(np.int16)
    prior = (rng.choice([0.5, 4.0]) / 100.0) * popularity if with_prior else None
    penalty = (0.25 * rng.random(width, dtype=np.float32)) if with_penalty else None

    def head(score: np.ndarray) -> list[tuple[int, float]]:
        order = _first_per_song(_ranking(score, popularity, need), song_key, candidates, need, score, popularity)
        return [(int(i), float(score[i])) for i in order[:need]]

    bounded, scored = _scores(per_seed, power, prior, penalty, need, song_key, candidates)
    whole, everything = _scores(per_seed, power, prior, penalty, 0, song_key, candidates)
    assert everything is None and head(bounded) == head(whole)
    if scored is not None:  # the scored columns are the finite ones, and their ranking leads the whole one
        assert np.array_equal(scored, np.flatnonzero(np.isfinite(bounded)))
        assert np.array_equal(bounded[scored], whole[scored])


def test_co_listened_tracks_are_candidates_even_when_they_sound_nothing_alike() -> None:
    seed = 7
    far = int(np.argmin(VECTORS @ VECTORS[seed]))  # the least similar track in the catalog
    table = table_from_pairs(np.array([seed, far]), np.array([far, seed]), np.ones(2, np.float32), N, 10)
    params = ScoringParams(colisten_weight=10.0, popularity_weight=0.0, artist_weight=0.0)
    hits = Recommender(VECTORS, build_index(VECTORS, "flat"), TRACKS, params, colisten=table).recommend(
        Query(seeds=[Seed(seed, 1.0)], k=5))
    assert (hits[0].row, hits[0].because, hits[0].reason) == (far, seed, "co-listened")
    assert all(h.reason != "co-listened" for h in hits[1:])


def test_seeds_without_co_listening_are_scored_as_without_events() -> None:
    lonely = next(r for r in range(N) if not len(COLISTEN.neighbours(r)[0]))
    events_blend = ScoringParams(colisten_weight=30.0, seed_power=1.0, artist_weight=2.0, popularity_weight=0.5)
    with_table = Recommender(VECTORS, build_index(VECTORS, "flat"), TRACKS, events_blend, colisten=COLISTEN)
    without_events = Recommender(VECTORS, build_index(VECTORS, "flat"), TRACKS, ScoringParams())
    query = Query(seeds=[Seed(lonely, 1.0)], k=30)
    assert with_table.recommend(query) == without_events.recommend(query)
    played = Query(seeds=[Seed(lonely, 1.0), Seed(int(COLISTEN.neighbours(0)[0][0]), 1.0)], k=30)
    assert with_table.recommend(played) != without_events.recommend(played)


def test_scoring_in_threads_agrees_and_leaves_each_position_map_clean() -> None:
    """The scorer's row -> position map is per thread and reset by every scoring (answers never depend on it)."""
    from concurrent.futures import ThreadPoolExecutor

    table = table_from_pairs(np.arange(0, 40), np.arange(40, 80), np.ones(40, np.float32), N, 10)
    rec = Recommender(VECTORS, build_index(VECTORS, "flat"), TRACKS, ScoringParams(colisten_weight=2.0, seed_power=2.0),
                      colisten=table)
    queries = [Query(seeds=[Seed(i, 1.0), Seed(i + 3, 0.8)], k=12) for i in range(30)]
    alone = [rec.recommend(q) for q in queries]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(rec.recommend, queries * 3)) == alone * 3
    assert (rec._scratch.positions == -1).all() and rec._scratch.song_allowed.all()


def test_the_api_offers_exactly_the_scorers_reasons() -> None:
    from typing import get_args

    from musicrec.index.recommend import REASONS
    from musicrec.service.schemas import Reason

    assert set(get_args(Reason)) == set(REASONS)


def test_blend_from_a_manifest_is_checked() -> None:
    params = ScoringParams().with_blend({"colisten_weight": 3.0, "seed_power": None})
    assert params.colisten_weight == 3.0 and math.isinf(params.seed_power)
    for bad in ({"colisten_weight": -1.0}, {"seed_power": 0.5}, {"artist_weight": math.nan},
                {"skip_penalty": 1.0}, {"popularity_weight": math.inf}):
        with pytest.raises(ValueError, match="scoring"):
            ScoringParams().with_blend(bad)


def test_seeds_with_co_listened_tracks_or_many_seeds_search_the_ann_shallower() -> None:
    """A first round asks ``colisten_depth`` ANN rows per seed where the seeds have co-listened tracks (they
    bring most candidates), ``min_depth`` where they have none or the memo serves one depth only (HNSW),
    many seeds without them share ``ann_rows``, and never fewer than the wanted rows spread over the seeds."""
    depths: list[int] = []

    class Spy(Recommender):
        def _candidates(self, depth, ctx):  # type: ignore[no-untyped-def]
            depths.append(depth)
            return super()._candidates(depth, ctx)

    params = ScoringParams(colisten_weight=1.0, min_depth=64, ann_rows=256, colisten_depth=16)
    listened = [r for r in range(N) if len(COLISTEN.neighbours(r)[0])][:3]
    lonely = [r for r in range(N) if not len(COLISTEN.neighbours(r)[0])][:40]
    for index_type, rows, k, expected in (("flat", listened, 10, 16), ("flat", lonely[:3], 10, 64),
                                          ("flat", lonely[:10], 10, 26), ("flat", lonely, 10, 16),
                                          ("hnsw", lonely[:10], 10, 64), ("hnsw", listened, 10, 64),
                                          ("flat", listened[:1], 40, 40 + 1 + 16)):
        depths.clear()
        recommender = Spy(VECTORS, build_index(VECTORS, index_type), TRACKS, params, colisten=COLISTEN)
        assert len(recommender.rank(Query(seeds=[Seed(r, 1.0) for r in rows], k=k)).rows) == k
        assert depths[0] == expected, (index_type, rows, k)
