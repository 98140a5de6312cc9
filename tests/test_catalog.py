"""The track table's lookups: saved by the build and loaded by the service, they must equal
what the table derives itself, whatever the strings (separators, case, whitespace, non-ASCII)."""
from __future__ import annotations

import io
from dataclasses import fields

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicrec.index.catalog import TrackTable, _song_titles, song_title

FEATURES = ["danceability"]
# Strings that exercise the table's string work: its separators, casefold, strip and empties.
TEXT = st.text(alphabet=st.sampled_from(list("aAbß İ;|\x1f\t é")), max_size=6)


def _frame(rows: list[tuple[str, str, str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"t{i}" for i in range(len(rows))],
        "name": [r[0] for r in rows], "artists": [r[1] for r in rows], "artist": [r[2] for r in rows],
        "album": [r[3] for r in rows], "genre": [r[4] or "pop" for r in rows], "genres": [r[4] or "pop" for r in rows],
        "popularity": np.array([r[5] for r in rows], dtype=np.int64), "explicit": [i % 2 == 0 for i in range(len(rows))],
        "danceability": np.linspace(0, 1, len(rows)),
    })


def _saved_and_loaded(table: TrackTable) -> dict[str, np.ndarray]:
    """``lookup_arrays`` through ``np.savez``/``np.load`` exactly as the build and the loader do."""
    buf = io.BytesIO()
    np.savez(buf, **table.lookup_arrays())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        return dict(npz)


def assert_same_table(a: TrackTable, b: TrackTable) -> None:
    for f in fields(TrackTable):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert list(x) == list(y), f.name  # same keys in the same order
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{f.name}[{key!r}]")
                assert np.asarray(x[key]).dtype == np.asarray(y[key]).dtype, f.name
        elif isinstance(x, pa.Array):
            assert x.type == y.type and x.equals(y), f.name
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(TEXT, TEXT, TEXT, TEXT, TEXT, st.integers(0, 100)), min_size=1, max_size=30))
def test_loaded_lookups_equal_the_derived_ones(rows: list[tuple[str, str, str, str, str, int]]) -> None:
    frame = _frame(rows)
    if rows[0][0] == "":
        frame.loc[0, "name"] = None  # a null cell reads as "", from pandas and from Parquet alike
    derived = TrackTable.from_frame(frame, FEATURES)
    assert_same_table(TrackTable.from_frame(frame, FEATURES, _saved_and_loaded(derived)), derived)
    # The service reads the Parquet file with Arrow, not through pandas: the same table either way.
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    parquet.seek(0)
    assert_same_table(TrackTable.from_parquet(parquet, FEATURES), derived)  # type: ignore[arg-type]
    parquet.seek(0)
    assert_same_table(TrackTable.from_parquet(parquet, FEATURES, _saved_and_loaded(derived)), derived)  # type: ignore[arg-type]


def test_an_empty_table_round_trips() -> None:
    frame = _frame([]).astype({"popularity": np.int64, "danceability": np.float64})
    derived = TrackTable.from_frame(frame, FEATURES)
    assert_same_table(TrackTable.from_frame(frame, FEATURES, _saved_and_loaded(derived)), derived)


def test_lookups_of_another_table_are_refused() -> None:
    small = _frame([(f"s{i}", "a", "a", "x", "pop", i) for i in range(5)])
    large = _frame([(f"s{i}", "a", "a", "x", "pop", i) for i in range(9)])
    lookups = _saved_and_loaded(TrackTable.from_frame(large, FEATURES))
    with pytest.raises(ValueError, match="track lookups"):
        TrackTable.from_frame(small, FEATURES, lookups)
    broken = {**_saved_and_loaded(TrackTable.from_frame(small, FEATURES))}
    broken["artist_rows__rows"] = broken["artist_rows__rows"] + 100
    with pytest.raises(ValueError, match="artist_rows does not fit"):
        TrackTable.from_frame(small, FEATURES, broken)
    broken = {**_saved_and_loaded(TrackTable.from_frame(small, FEATURES))}
    broken["search_text__data"] = np.full_like(broken["search_text__data"], 0xFF)
    with pytest.raises(ValueError, match="search_text is not valid text"):
        TrackTable.from_frame(small, FEATURES, broken)


@pytest.mark.parametrize("listing, song", [
    ("Bohemian Rhapsody - Remastered 2011", "Bohemian Rhapsody"),
    ("Under Pressure - 2011 Remaster", "Under Pressure"),
    ("Yesterday - Remastered", "Yesterday"),
    ("Song (2011 Remaster)", "Song"),
    ("Hey Ya! - Radio Edit", "Hey Ya!"),
    ("Hey Ya! - Radio Mix", "Hey Ya!"),
    ("Hello - Edit", "Hello"),
    ("Help! - Single Version / Mono", "Help!"),
    ("Tusk - Stereo", "Tusk"),
    ("Levels - Original Mix", "Levels"),
    ("Stay (feat. Justin Bieber)", "Stay"),
    ("Stay [ft. Someone]", "Stay"),
    ("Tango (with Leopoldo Federico y Su Orquesta)", "Tango"),
    ("A - B - Remastered", "A - B"),
    # Other recordings, or words that only contain a keyword, keep their title.
    ("Bohemian Rhapsody - Live Aid", "Bohemian Rhapsody - Live Aid"),
    ("Song - Remix", "Song - Remix"),
    ("Song - Acoustic", "Song - Acoustic"),
    ("Song - Monologue", "Song - Monologue"),
    ("Edit Me", "Edit Me"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_a_song_title_without_its_listing_suffix(listing: str, song: str) -> None:
    assert song_title(listing) == song
    assert _song_titles(pa.array([listing], type=pa.large_string())).to_pylist() == [song]


def test_remastered_and_featuring_listings_share_the_songs_key() -> None:
    table = TrackTable.from_frame(_frame([
        ("Bohemian Rhapsody", "Queen", "Queen", "OST", "rock", 75),
        ("Bohemian Rhapsody - Remastered 2011", "Queen", "Queen", "A Night At The Opera", "rock", 82),
        ("Bohemian Rhapsody", "Hayseed Dixie", "Hayseed Dixie", "Killer Grass", "bluegrass", 22),
        ("Bohemian Rhapsody - Live Aid", "Queen", "Queen", "Live", "rock", 60),
    ]), FEATURES)
    keys = table.song_key.tolist()
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3
