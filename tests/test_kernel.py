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

    monkeypatch.setattr(recommend, "_kernel", type("Refusing", (), {"score": staticmethod(refuse)}))
    for params, diversity in ((ScoringParams(), 0.5), (ScoringParams(seed_power=2.0), 0.0)):
        rec = Recommender(VECTORS, INDEX, TRACKS, params)
        assert len(rec.rank(Query(seeds=[Seed(1, 1.0), Seed(2, 0.5)], k=10, diversity=diversity)).rows) == 10


@needs_kernel
def test_bad_arrays_are_refused_and_leave_the_position_map_clean() -> None:
    kernel = recommend._kernel
    positions = np.full(N, -1, dtype=np.int32)
    sims = np.zeros((3, 1), dtype=np.float32)  # candidates x seeds
    good = dict(sims=sims, candidates=np.array([1, 2, 3]), seed_rows=np.array([0]),
                weights=np.ones(1, np.float32))

    def call(**change: object) -> object:
        a = {**good, **change}
        return kernel.score(a["sims"], a["candidates"], a["seed_rows"], a["weights"],
                            a.get("links", [(np.array([2]), np.array([1.0], np.float32))]), 1.0, None, 0.0, False,
                            False, TRACKS.popularity, 0.0, None, TRACKS.song_key, 2, positions,
                            recommend._REASON_NAMES)

    rows, scores, because, reasons = call()
    runner_up = 3 if TRACKS.popularity[3] > TRACKS.popularity[1] else 1  # a tie at 0: popularity, then row
    assert rows == [2, runner_up] and scores == [1.0, 0.0] and because == [0, 0]
    assert reasons == ["same artist", "sounds like"]
    with pytest.raises(TypeError, match="candidates"):
        call(candidates=np.array([1, 2, 3], dtype=np.int32))
    with pytest.raises(ValueError, match="shapes"):
        call(weights=np.ones(2, np.float32))
    with pytest.raises(IndexError, match="outside the catalog"):
        call(candidates=np.array([1, 2, N]))
    with pytest.raises(TypeError, match="links"):
        call(links=[(np.array([2]), np.array([1.0]))])  # float64 values
    assert (positions == -1).all()


@needs_kernel
def test_the_candidate_union_is_sorted_unique_and_leaves_the_bitmap_clean() -> None:
    kernel = recommend._kernel
    marks = np.zeros(kernel.bitmap_words(N), dtype=np.uint64)
    seeds = np.array([4, 70])
    extras = [np.array([899, 5, 5, 640]), np.array([], dtype=np.int64)]
    banned = TRACKS.song_key.take(np.array([4, 70, 5]))  # seeds' and one extra's songs
    out = np.empty(2 * 10 + 4, dtype=np.int64)
    count = kernel.candidates(TABLE, seeds, 10, extras, TRACKS.song_key, banned, marks, out)
    union = np.unique(np.concatenate([TABLE[seeds, :10].ravel(), *extras]))
    expected = union[~np.isin(TRACKS.song_key[union], banned)]
    assert out[:count].tolist() == expected.tolist() and not marks.any()
    for bad, match in (({"out": np.empty(3, np.int64)}, "too small"), ({"seeds": np.array([N])}, "seed row"),
                       ({"extras": [np.array([N + 5])]}, "extra row"), ({"depth": 500}, "shapes"),
                       ({"extras": [np.array([1], np.int32)]}, "extras")):
        a = {"seeds": seeds, "depth": 10, "extras": extras, "out": out, **bad}
        with pytest.raises((ValueError, IndexError, TypeError), match=match):
            kernel.candidates(TABLE, a["seeds"], a["depth"], a["extras"], TRACKS.song_key, banned, marks, a["out"])
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
