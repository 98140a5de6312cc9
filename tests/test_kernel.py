"""The compiled scorer (musicrec/index/_kernel.c) against the numpy path it replaces: the same bits.

Every answer is compared whole: rows, float scores, ``because`` and reasons, equal with ``==``,
not within a tolerance. The catalog repeats songs under several ids with identical vectors, so
ties between listings and the one-id-per-song rule are exercised, not only distinct scores.

On a machine with a C compiler the kernel must have been built (the first test fails otherwise);
on one without, the tests that need it skip and say why, and numpy serves alone.
"""
from __future__ import annotations

import math
import shutil
import sysconfig

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicrec.index import recommend
from musicrec.index.catalog import TrackTable
from musicrec.index.faiss_index import build_index
from musicrec.index.recommend import Filters, NeighbourMemo, Query, Recommender, ScoringParams, Seed
from musicrec.indexer.colisten import table_from_pairs

N, DIM = 900, 32


def _catalog() -> tuple[np.ndarray, TrackTable]:
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[600:] = vectors[:300]  # rows i and i + 600: one song (same name, same first artist), same sound
    frame = pd.DataFrame({
        "id": [f"t{i:04d}" for i in range(N)],
        "name": [f"Song {i % 600}" for i in range(N)],
        "artists": [f"Artist {i % 60}" + (f";Artist {(i * 7) % 60}" if i % 5 == 0 else "") for i in range(N)],
        "artist": [f"Artist {i % 60}" for i in range(N)],
        "album": [f"Album {i % 150}" if i % 9 else "" for i in range(N)],
        "genre": ["pop", "rock", "jazz"] * (N // 3), "genres": ["pop", "rock", "jazz"] * (N // 3),
        "popularity": rng.integers(0, 4, N) * 30,  # few values: ties on score are broken by popularity, then row
        "explicit": rng.random(N) < 0.3,
        "danceability": rng.random(N),
    })
    return vectors, TrackTable.from_frame(frame, ["danceability"])


VECTORS, TRACKS = _catalog()
INDEX = build_index(VECTORS, "flat")
TABLE = NeighbourMemo.for_index(INDEX, N, ScoringParams().min_depth).fill(INDEX, VECTORS)  # as a build ships it
_rng = np.random.default_rng(5)
_a, _b = _rng.integers(0, N, 4000), _rng.integers(0, N, 4000)
COLISTEN = table_from_pairs(np.concatenate([_a, _b]), np.concatenate([_b, _a]),
                            np.tile(_rng.uniform(0.01, 0.5, 4000).astype(np.float32), 2), N, top_n=30)


def _pair(params: ScoringParams, vectors: np.ndarray = VECTORS, table: bool = True) -> tuple[Recommender, Recommender]:
    """(compiled, numpy) recommenders over the same catalog and parameters.

    With the build's neighbour table the kernel also makes the candidates; without one (an older
    version, searched on demand) numpy does, and the kernel only scores.
    """
    index = INDEX if vectors is VECTORS else build_index(vectors, "flat")
    made = [Recommender(vectors, index, TRACKS, params, colisten=COLISTEN if params.colisten_weight > 0 else None,
                        neighbours=(TABLE if vectors is VECTORS else
                                    NeighbourMemo.for_index(index, N, params.min_depth).fill(index, vectors))
                        if table else None, compiled=compiled)
            for compiled in (True, False)]
    return made[0], made[1]


COMPILER = shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0])
needs_kernel = pytest.mark.skipif(recommend._kernel is None and COMPILER is None,
                                  reason="no C compiler here, so no musicrec.index._kernel: numpy scores alone")


@needs_kernel
def test_the_kernel_is_built() -> None:
    assert recommend._kernel is not None, (
        f"musicrec.index._kernel did not build although {COMPILER} is here: reinstall (pip install -e .) "
        "and read the compiler's error")


@needs_kernel
@settings(max_examples=150, deadline=None)
@given(
    seed_rows=st.lists(st.integers(0, N - 1), min_size=1, max_size=20, unique=True),
    weights=st.lists(st.sampled_from([1.0, 0.8, 0.76, 0.5, 0.1, 0.0]), min_size=20, max_size=20),
    negatives=st.lists(st.integers(0, N - 1), max_size=4, unique=True),
    exclude=st.lists(st.integers(0, N - 1), max_size=6),
    k=st.sampled_from([1, 5, 20, 60, 400]),
    seed_power=st.sampled_from([math.inf, 1.0]),
    artist_weight=st.sampled_from([0.0, 1.0, 2.0]),
    colisten_weight=st.sampled_from([0.0, 3.0, 30.0]),
    popularity_weight=st.sampled_from([0.0, 2.0]),
    table=st.booleans(),
)
def test_compiled_answers_are_numpys_bit_for_bit(seed_rows, weights, negatives, exclude, k, seed_power, artist_weight,
                                                 colisten_weight, popularity_weight, table) -> None:
    """Max and mean over seeds, every term on and off, negatives, exclusions, k from 1 to past the catalog."""
    params = ScoringParams(seed_power=seed_power, artist_weight=artist_weight, colisten_weight=colisten_weight,
                           popularity_weight=popularity_weight)
    compiled, reference = _pair(params, table=table)
    query = Query(seeds=[Seed(r, w) for r, w in zip(seed_rows, weights)], k=k,
                  negatives=[n for n in negatives if n not in seed_rows], exclude=exclude)
    got, expected = compiled.rank(query), reference.rank(query)
    assert got == expected
    assert (compiled._scratch.positions == -1).all()
    assert not getattr(compiled._scratch, "marks", np.zeros(1, np.uint64)).any()


@needs_kernel
@pytest.mark.parametrize("query", [
    Query(seeds=[Seed(3, 1.0), Seed(603, 0.8)], k=10),  # two listings of one song as seeds
    Query(seeds=[Seed(7, 1.0)], k=10, filters=Filters(explicit=False, min_popularity=30)),
    Query(seeds=[Seed(7, 1.0), Seed(8, 1.0)], k=10, artist_weight=0.0),
], ids=["duplicate-seeds", "filters", "per-query-artist-weight"])
def test_compiled_answers_match_on_special_queries(query: Query) -> None:
    compiled, reference = _pair(ScoringParams(colisten_weight=3.0))
    assert compiled.rank(query) == reference.rank(query)


@needs_kernel
def test_a_nan_vector_ranks_as_numpy_ranks_it() -> None:
    """A NaN score sorts after every number, and a NaN cell wins the best seed, as in numpy."""
    vectors = VECTORS.copy()
    vectors[[10, 11, 12]] = np.nan
    compiled, reference = _pair(ScoringParams(), vectors)
    for seeds in ([Seed(10, 1.0), Seed(20, 0.9)], [Seed(20, 1.0), Seed(21, 0.9)]):
        got, expected = compiled.rank(Query(seeds=seeds, k=N)), reference.rank(Query(seeds=seeds, k=N))
        assert (got.rows, got.because, got.reasons) == (expected.rows, expected.because, expected.reasons)
        assert np.array_equal(got.scores, expected.scores, equal_nan=True)


def test_diversity_and_other_power_means_stay_with_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the kernel does not cover (MMR, power means other than max and mean) never reaches it."""
    def refuse(*args: object) -> None:
        raise AssertionError("the kernel was called")

    monkeypatch.setattr(recommend, "_kernel", type("Refusing", (), {"catalog": staticmethod(lambda *args: object()),
                                                                    "score": staticmethod(refuse)}))
    for params, diversity in ((ScoringParams(), 0.5), (ScoringParams(seed_power=2.0), 0.0)):
        rec = Recommender(VECTORS, INDEX, TRACKS, params)
        assert len(rec.rank(Query(seeds=[Seed(1, 1.0), Seed(2, 0.5)], k=10, diversity=diversity)).rows) == 10


def _catalog_of(table: np.ndarray | None = TABLE, colisten: bool = True, **change: np.ndarray) -> object:
    arrays = dict(zip(("track_bounds", "track_artists", "artist_bounds", "artist_rows", "album_of", "album_bounds",
                       "album_rows"), TRACKS.link_tables))
    col = (COLISTEN.indptr, COLISTEN.indices, COLISTEN.weights) if colisten else (None,) * 3
    return recommend._kernel.catalog(TRACKS.song_key, TRACKS.popularity, table, *{**arrays, **change}.values(), *col)


@needs_kernel
def test_the_link_tables_are_the_per_track_links() -> None:
    """The kernel's artist and album tables say what ``_track_links`` finds by name, for every track."""
    track_bounds, track_artists, artist_bounds, artist_rows, album_of, album_bounds, album_rows = \
        TRACKS.link_tables
    rec = Recommender(VECTORS, INDEX, TRACKS, ScoringParams(), neighbours=TABLE)
    share = np.float32(rec.params.artist_share)
    for row in range(N):
        artists = track_artists[track_bounds[row]:track_bounds[row + 1]]
        by_artist = [artist_rows[artist_bounds[a]:artist_bounds[a + 1]] for a in artists]
        album = album_rows[album_bounds[album_of[row]]:album_bounds[album_of[row] + 1]] if album_of[row] >= 0 else []
        values = {int(r): share for rows in by_artist for r in rows} | {int(r): np.float32(1.0) for r in album}
        capped, rows, vals = rec._track_links(row)
        assert capped.tolist() == [int(r) for rows in by_artist for r in rows[:rec.params.per_artist_candidates]]
        assert dict(zip(rows.tolist(), vals.tolist())) == values


@needs_kernel
def test_bad_arrays_are_refused_and_leave_the_position_map_clean() -> None:
    kernel = recommend._kernel
    positions = np.full(N, -1, dtype=np.int32)
    sims = np.zeros((3, 1), dtype=np.float32)  # candidates x seeds
    catalog = _catalog_of()
    # Row 1's album mate (1 + 300: same artist and album), an artist mate on another album (61) and a stranger (2).
    assert TRACKS.album_key[1] == TRACKS.album_key[301] != TRACKS.album_key[61] and TRACKS.artist[1] == TRACKS.artist[61]
    good = dict(sims=sims, candidates=np.array([2, 61, 301]), seed_rows=np.array([1]), weights=np.ones(1, np.float32))

    def call(**change: object) -> object:
        a = {**good, **change}
        return kernel.score(a.get("catalog", catalog), a["sims"].copy(), a["candidates"], a["seed_rows"], a["weights"],
                            1.0, 0.75, a.get("colisten"), False, False, 0.0, None, 3, positions,
                            recommend._REASON_NAMES)

    rows, scores, because, reasons = call()
    assert rows == [301, 61, 2] and scores == [1.0, 0.75, 0.0] and because == [1, 1, 1]
    assert reasons == ["same artist", "same artist", "sounds like"]
    with pytest.raises(TypeError, match="candidates"):
        call(candidates=np.array([1, 2, 3], dtype=np.int32))
    with pytest.raises(ValueError, match="shapes"):
        call(weights=np.ones(2, np.float32))
    with pytest.raises(IndexError, match="outside the catalog"):
        call(candidates=np.array([1, 2, N]))
    with pytest.raises(IndexError, match="seed row"):
        call(seed_rows=np.array([-1]))
    with pytest.raises(ValueError, match="co-listening"):
        call(catalog=_catalog_of(colisten=False), colisten=3.0)
    with pytest.raises((TypeError, ValueError)):
        call(catalog=object())
    assert (positions == -1).all()
    for bad, match in (({"artist_rows": np.array([N], np.int32)}, "artist_bounds"),
                       ({"album_of": np.full(N, 10**6, np.int32)}, "album_of"),
                       ({"track_artists": np.zeros(3, np.int64)}, "track_artists")):
        with pytest.raises((ValueError, TypeError), match=match):
            _catalog_of(**bad)


@needs_kernel
def test_the_candidate_union_is_sorted_unique_and_leaves_the_bitmap_clean() -> None:
    kernel = recommend._kernel
    catalog = _catalog_of()
    marks = np.zeros(kernel.bitmap_words(N), dtype=np.uint64)
    seeds = np.array([4, 70])
    track_bounds, track_artists, artist_bounds, artist_rows = TRACKS.link_tables[:4]
    artists = [artist_rows[artist_bounds[a]:artist_bounds[a] + 3] for s in seeds
               for a in track_artists[track_bounds[s]:track_bounds[s + 1]]]
    co_listened = [COLISTEN.indices[COLISTEN.indptr[s]:COLISTEN.indptr[s + 1]] for s in seeds]
    banned = TRACKS.song_key.take(np.array([4, 70, 5]))
    out = np.empty(N, dtype=np.int64)
    for cap, colisten, extras in ((0, False, []), (3, False, artists), (3, True, artists + co_listened)):
        count = kernel.candidates(catalog, seeds, 10, cap, colisten, banned, marks, out)
        union = np.unique(np.concatenate([TABLE[seeds, :10].ravel(), *extras]))
        expected = union[~np.isin(TRACKS.song_key[union], banned)]
        assert out[:count].tolist() == expected.tolist() and not marks.any()
    for bad, match in (({"out": np.empty(N - 1, np.int64)}, "shapes"), ({"seeds": np.array([N])}, "seed row"),
                       ({"depth": 500}, "shapes"), ({"catalog": _catalog_of(table=None)}, "neighbour table"),
                       ({"catalog": _catalog_of(colisten=False)}, "co-listening")):
        a = {"catalog": catalog, "seeds": seeds, "depth": 10, "out": out, **bad}
        with pytest.raises((ValueError, IndexError, TypeError), match=match):
            kernel.candidates(a["catalog"], a["seeds"], a["depth"], 3, True, banned, marks, a["out"])
        assert not marks.any()


def test_without_the_kernel_numpy_scores_and_the_log_says_so(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    query = Query(seeds=[Seed(1, 1.0), Seed(2, 0.8)], k=10)
    expected = _pair(ScoringParams())[0].rank(query)
    monkeypatch.setattr(recommend, "_kernel", None)
    with caplog.at_level("WARNING", logger="musicrec.index.recommend"):
        rec = Recommender(VECTORS, INDEX, TRACKS, ScoringParams(), neighbours=TABLE)
    assert "not built" in caplog.text
    assert rec.rank(query) == expected
