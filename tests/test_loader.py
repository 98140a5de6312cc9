"""Loader: every accepted spelling, every bad input, imputation, dedup, and the real 114k file."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from musicrec.data.demo import generate_demo_frame, write_csv
from musicrec.data.loader import Catalog, catalog_from_frame, load_csv
from musicrec.data.schema import FEATURE_RANGES, FEATURES, MIN_FEATURES, DataError, impute_features

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MUSICREC_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL_CSV = SHARED_DATA / "spotify_tracks_114k.csv.gz"

HEADER_114K = ("track_id,artists,album_name,track_name,popularity,duration_ms,explicit,danceability,energy,"
               "key,loudness,mode,speechiness,acousticness,instrumentalness,liveness,valence,tempo,"
               "time_signature,track_genre")
TRACK_COLUMNS = ["id", "name", "artists", "artist", "album", "genre", "genres", "popularity", "explicit"]


def row(
    tid: str = "t1",
    *,
    artists: str = "A One;B Two",
    album: str = "Album",
    name: str = "Song",
    popularity: str = "50",
    duration: str = "200000",
    explicit: str = "FALSE",
    energy: str = "0.5",
    tempo: str = "120.0",
    time_signature: str = "4",
    genre: str = "acoustic",
) -> str:
    """One line in the 114k file's spelling; keyword overrides make each test's point visible."""
    return (f"{tid},{artists},{album},{name},{popularity},{duration},{explicit},0.6,{energy},5,-7.5,1,"
            f"0.05,0.3,1.01e-6,0.1,0.4,{tempo},{time_signature},{genre}")


def write(tmp_path: Path, name: str, lines: list[str], *, gz: bool = False) -> Path:
    """Write a CSV (gzip-compressed when asked) and return its path."""
    path = tmp_path / name
    text = "\n".join(lines) + "\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def check_clean(catalog: Catalog) -> None:
    """Invariants every Catalog must hold, whatever the input spelling."""
    t = catalog.tracks
    assert list(t.columns) == TRACK_COLUMNS + catalog.features
    assert catalog.features == [f for f in FEATURES if f in catalog.features]
    assert isinstance(t.index, pd.RangeIndex) and t.index.start == 0
    assert t["id"].is_unique
    assert not t.isna().any().any()
    for c in ("id", "name", "artists", "artist", "album", "genre", "genres"):
        assert pd.api.types.is_string_dtype(t[c]), c
        assert all(isinstance(v, str) for v in t[c].head(50)), c
    assert t["popularity"].dtype == np.int64 and t["popularity"].between(0, 100).all()
    assert t["explicit"].dtype == bool
    for f in catalog.features:
        assert t[f].dtype == np.float64, f
    r = catalog.report
    assert r.n_tracks == len(t)
    assert r.features == catalog.features
    assert set(r.imputed) == set(r.medians) == set(catalog.features)


# ---------------------------------------------------------------- spellings


def test_114k_spelling(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", [
        HEADER_114K,
        row("t1", explicit="TRUE"),
        row("t2", artists="Solo", popularity="7"),
        "t3,NA,NA,NA,0,200000,FALSE,0.6,0.5,5,-7.5,1,0.05,0.3,1.01e-6,0.1,0.4,120,4,k-pop",
    ])
    cat = load_csv(path)
    check_clean(cat)
    t = cat.tracks
    assert cat.source == str(path) and cat.demo is False
    assert t["id"].tolist() == ["t1", "t2", "t3"]
    assert t.loc[0, "artists"] == "A One;B Two" and t.loc[0, "artist"] == "A One"
    assert t["explicit"].tolist() == [True, False, False]
    assert t["popularity"].tolist() == [50, 7, 0]
    assert t.loc[0, "instrumentalness"] == pytest.approx(1.01e-6)
    assert t.loc[2, ["name", "artists", "artist", "album"]].tolist() == ["", "", "", ""]
    assert cat.features == list(FEATURES)
    assert cat.report.missing_features == [] and cat.report.warnings == []


@pytest.mark.parametrize("index_header", ["", "Unnamed: 0"], ids=["empty-header", "unnamed-0"])
def test_kaggle_spelling_matches_r_spelling(tmp_path: Path, index_header: str) -> None:
    frame = generate_demo_frame(300, seed=3)
    r_path = tmp_path / "r.csv"
    r_frame = frame.assign(explicit=frame["explicit"].map({True: "TRUE", False: "FALSE"}))
    write_csv(r_frame, r_path)
    k_path = tmp_path / "kaggle.csv"
    frame.to_csv(k_path, index=True, index_label=index_header or None)  # True/False, leading index column
    if index_header == "":
        assert k_path.read_text().startswith(",track_id,")
    r_cat, k_cat = load_csv(r_path), load_csv(k_path)
    check_clean(k_cat)
    pd.testing.assert_frame_equal(r_cat.tracks, k_cat.tracks)
    assert k_cat.report.exact_duplicate_rows == r_cat.report.exact_duplicate_rows == 0
    assert k_cat.report.merged_rows == 15


@pytest.mark.parametrize(
    ("true", "false"), [("TRUE", "FALSE"), ("True", "False"), ("true", "false"), ("1", "0")],
)
def test_explicit_spellings(tmp_path: Path, true: str, false: str) -> None:
    path = write(tmp_path, "e.csv", [HEADER_114K, row("a", explicit=true), row("b", explicit=false),
                                     row("c", explicit="")])
    assert load_csv(path).tracks["explicit"].tolist() == [True, False, False]


def test_seed_design_schema_with_some_features(tmp_path: Path) -> None:
    path = write(tmp_path, "seed.csv", [
        "id,artist_name,genre,danceability,energy,valence,tempo,name",
        "s1,Ann,rock,0.5,0.7,0.3,120,First",
        "s2,Bob,pop,0.6,0.8,0.4,0,Second",
        "s3,Cy,jazz,0.4,0.2,0.9,100,Third",
    ])
    cat = load_csv(path)
    check_clean(cat)
    assert cat.features == ["danceability", "energy", "valence", "tempo"]
    missing = [f for f in FEATURES if f not in cat.features]
    assert cat.report.missing_features == missing
    (warning,) = cat.report.warnings
    assert all(f in warning for f in missing)
    t = cat.tracks
    assert t["artists"].tolist() == t["artist"].tolist() == ["Ann", "Bob", "Cy"]
    assert t["genre"].tolist() == t["genres"].tolist() == ["rock", "pop", "jazz"]
    assert t["name"].tolist() == ["First", "Second", "Third"]
    assert t["album"].tolist() == ["", "", ""]
    assert t["popularity"].tolist() == [0, 0, 0] and not t["explicit"].any()
    assert t.loc[1, "tempo"] == 110.0 and cat.report.imputed["tempo"] == 1  # zero tempo = missing


def test_column_names_case_insensitive_and_stripped(tmp_path: Path) -> None:
    header = ",".join(f"  {c.upper()} " if i % 2 else c.title() for i, c in enumerate(HEADER_114K.split(",")))
    path = write(tmp_path, "case.csv", [header, row("a"), row("b")])
    cat = load_csv(path)
    check_clean(cat)
    assert cat.features == list(FEATURES) and cat.tracks["id"].tolist() == ["a", "b"]


def test_numeric_ids_stay_text(tmp_path: Path) -> None:
    path = write(tmp_path, "num.csv", ["id,energy,valence,tempo", "007,0.1,0.2,100", "42,0.3,0.4,110"])
    assert load_csv(path).tracks["id"].tolist() == ["007", "42"]


@pytest.mark.parametrize("name", ["data.csv.gz", "no-suffix.csv"], ids=["gz-suffix", "gzip-sniffed"])
def test_gzip(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, [HEADER_114K, row("a"), row("b")], gz=True)
    cat = load_csv(path)
    assert cat.tracks["id"].tolist() == ["a", "b"]


def test_in_memory_frame_any_spelling() -> None:
    frame = pd.DataFrame({
        " ID ": ["x", "y", None, "x"],
        "Artist_Name": ["Ann", None, "Cy", "Ann"],
        "Genre": ["rock", "pop", "jazz", "metal"],
        "Energy": [0.1, 0.2, 0.3, 0.1],
        "Valence": ["0.5", "NA", "0.7", "0.5"],
        "Tempo": [120.0, np.nan, 90.0, 120.0],
        "explicit": [True, None, False, True],
    })
    before = frame.copy()
    cat = catalog_from_frame(frame, source=None, demo=False)
    check_clean(cat)
    pd.testing.assert_frame_equal(frame, before)  # input untouched
    t = cat.tracks
    assert t["id"].tolist() == ["x", "y"]
    assert t["artists"].tolist() == ["Ann", ""]
    assert t["genres"].tolist() == ["rock|metal", "pop"]
    assert t["explicit"].tolist() == [True, False]
    assert t["valence"].tolist() == [0.5, 0.5] and t["tempo"].tolist() == [120.0, 120.0]
    assert cat.report.imputed == {"energy": 0, "valence": 1, "tempo": 1}
    assert cat.report.merged_rows == 1 and cat.report.exact_duplicate_rows == 0
    assert any("1 row(s) with an empty id" in w for w in cat.report.warnings)


# ---------------------------------------------------------------- cleaning rules


def test_zero_and_missing_imputation(tmp_path: Path) -> None:
    path = write(tmp_path, "z.csv", [
        HEADER_114K,
        row("a", tempo="100", duration="100000", time_signature="4"),
        row("b", tempo="0", duration="0", time_signature="0", energy="0"),
        row("c", tempo="", duration="300000", time_signature="3", energy=""),
        row("d", tempo="140", duration="200000", time_signature="NA", energy="NaN"),
        row("a", tempo="0", duration="0", time_signature="0", genre="folk"),  # merged: must not count
    ])
    cat = load_csv(path)
    check_clean(cat)
    r = cat.report
    assert r.imputed["tempo"] == 2 and r.medians["tempo"] == 120.0
    assert r.imputed["duration_ms"] == 1 and r.medians["duration_ms"] == 200000.0
    assert r.imputed["time_signature"] == 2 and r.medians["time_signature"] == 3.5
    # A zero energy is a real value; only NaN/empty is missing there.
    assert r.imputed["energy"] == 2 and r.medians["energy"] == 0.25
    assert all(r.imputed[f] == 0 for f in ("danceability", "key", "loudness", "mode"))
    t = cat.tracks.set_index("id")
    assert t.loc["b", "tempo"] == 120.0 and t.loc["c", "tempo"] == 120.0 and t.loc["a", "tempo"] == 100.0
    assert t.loc["b", "energy"] == 0.0 and t.loc["c", "energy"] == 0.25
    assert t.loc["b", "duration_ms"] == 200000.0 and t.loc["d", "time_signature"] == 3.5


def test_duplicate_ids_merge_and_genres_accumulate(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.csv", [
        HEADER_114K,
        row("a", genre="acoustic", name="First A", popularity="10"),
        row("b", genre="rock"),
        row("a", genre="folk", name="Later A", popularity="99", energy="0.9"),
        row("a", genre="acoustic", name="First A", popularity="10"),  # exact duplicate of row 1
        row("b", genre="rock"),  # exact duplicate of row 2
        row("c", genre=""),
        row("c", genre="jazz"),  # first non-empty genre is the primary one
    ])
    cat = load_csv(path)
    check_clean(cat)
    t = cat.tracks.set_index("id")
    assert list(t.index) == ["a", "b", "c"]
    assert t.loc["a", "genres"] == "acoustic|folk" and t.loc["a", "genre"] == "acoustic"
    assert t.loc["a", "name"] == "First A" and t.loc["a", "popularity"] == 10 and t.loc["a", "energy"] == 0.5
    assert t.loc["b", "genres"] == "rock" and t.loc["c", "genres"] == "jazz" and t.loc["c", "genre"] == "jazz"
    r = cat.report
    assert (r.rows_read, r.merged_rows, r.exact_duplicate_rows, r.n_tracks) == (7, 4, 2, 3)


def test_empty_ids_dropped_with_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.csv", [HEADER_114K, row("a"), row(""), row("  "), row("b")])
    cat = load_csv(path)
    assert cat.tracks["id"].tolist() == ["a", "b"]
    assert cat.report.rows_read == 4
    assert any("dropped 2 row(s) with an empty id" in w for w in cat.report.warnings)


def test_popularity_clipped_with_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", [HEADER_114K, row("a", popularity="150"), row("b", popularity="-3"),
                                     row("c", popularity="")])
    cat = load_csv(path)
    assert cat.tracks["popularity"].tolist() == [100, 0, 0]
    assert any("clipped 2 popularity" in w for w in cat.report.warnings)


# ---------------------------------------------------------------- bad input


def bad_input(tmp_path: Path, name: str, content: bytes | None) -> DataError:
    """Write ``content`` (None: no file) and return the DataError load_csv raises for it."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_csv(path)
    err = info.value
    assert "\n" not in str(err)
    assert str(err).startswith(f"{path}: ")
    assert err.path == str(path)
    return err


def _csv(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


_GOOD_GZ = gzip.compress(_csv(HEADER_114K, row("a"), row("b")) * 50)


BAD_INPUTS: list[tuple[str, bytes | None, str]] = [
    ("missing.csv", None, "file not found"),
    ("empty.csv", b"", "empty file (0 bytes)"),
    ("blank.csv", b"\n\n", "empty file"),
    ("header.csv", _csv(HEADER_114K), "no data rows"),
    ("header.csv.gz", gzip.compress(_csv(HEADER_114K)), "no data rows"),
    ("noid.csv", _csv("name,energy,valence,tempo", "x,0.1,0.2,100"), "no id column"),
    ("few.csv", _csv("id,energy,valence", "x,0.1,0.2"), f"need at least {MIN_FEATURES}"),
    ("allempty.csv", _csv("id,energy,valence,tempo", ",0.1,0.2,100", ",0.3,0.4,110"), "nothing usable"),
    ("dupcol.csv", _csv("id,Energy,energy,valence,tempo", "x,0.1,0.1,0.2,100"), "duplicate column"),
    ("notgzip.csv.gz", b"this is plain text, not gzip\n" * 20, "corrupt or not a CSV/gzip"),
    ("corrupt.csv.gz", _GOOD_GZ[:20] + bytes(range(256)) * 4 + _GOOD_GZ[-8:], "corrupt"),
    ("truncated.csv.gz", _GOOD_GZ[: len(_GOOD_GZ) // 2], "corrupt"),
    ("binary-in-gzip.csv", gzip.compress(bytes(range(128, 256)) * 64), "not UTF-8"),
    ("image.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not UTF-8"),
    ("ragged.csv", _csv("id,energy,valence,tempo", "x,0.1,0.2,100", "y,0.1,0.2,100,5,6"), "not a valid CSV"),
]


@pytest.mark.parametrize(("name", "content", "fragment"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_raises_one_line_data_error(tmp_path: Path, name: str, content: bytes | None,
                                              fragment: str) -> None:
    err = bad_input(tmp_path, name, content)
    assert fragment in str(err)


def test_directory_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        load_csv(tmp_path)


def test_non_numeric_value_names_column_row_and_value(tmp_path: Path) -> None:
    content = _csv(HEADER_114K, row("a"), row("b"), row("c", energy="abc"), row("d", energy="x"))
    err = bad_input(tmp_path, "data.csv", content)
    assert (err.column, err.row) == ("energy", 3)
    assert str(err) == f"{tmp_path / 'data.csv'}: column 'energy', row 3: non-numeric value 'abc'"


def test_non_numeric_popularity_and_explicit(tmp_path: Path) -> None:
    err = bad_input(tmp_path, "pop.csv", _csv(HEADER_114K, row("a", popularity="lots")))
    assert (err.column, err.row) == ("popularity", 1) and "'lots'" in str(err)
    err = bad_input(tmp_path, "exp.csv", _csv(HEADER_114K, row("a"), row("b", explicit="maybe")))
    assert (err.column, err.row) == ("explicit", 2) and "'maybe'" in str(err)


def test_infinite_value_is_data_error(tmp_path: Path) -> None:
    err = bad_input(tmp_path, "inf.csv", _csv(HEADER_114K, row("a", tempo="inf")))
    assert (err.column, err.row) == ("tempo", 1) and "non-finite" in str(err)


def test_feature_with_no_value_at_all_counts_as_missing(tmp_path: Path) -> None:
    ok = load_csv(write(tmp_path, "a.csv", ["id,energy,valence,tempo,loudness", "x,0.1,0.2,100,", "y,0.3,0.4,0,"]))
    assert ok.features == ["energy", "valence", "tempo"] and "loudness" in ok.report.missing_features
    err = bad_input(tmp_path, "b.csv", _csv("id,energy,valence,tempo", "x,0.1,0.2,0", "y,0.3,0.4,0"))
    assert "need at least" in str(err)


def test_data_error_format_and_pickle() -> None:
    assert str(DataError("f.csv", "boom")) == "f.csv: boom"
    assert str(DataError("f.csv", "boom", column="tempo")) == "f.csv: column 'tempo': boom"
    assert str(DataError("f.csv", "boom", row=4)) == "f.csv: row 4: boom"
    err = DataError("f.csv", "two\nlines", column="energy", row=17)
    assert str(err) == "f.csv: column 'energy', row 17: two lines"
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.message, back.column, back.row, str(back)) == (
        err.path, err.message, err.column, err.row, str(err))


# ---------------------------------------------------------------- impute_features

MEDIANS = {"energy": 0.5, "tempo": 120.0, "duration_ms": 200000.0, "time_signature": 4.0}
FEATS = ["energy", "tempo", "duration_ms", "time_signature"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"energy": 0.7, "tempo": 90, "duration_ms": 1000, "time_signature": 3}, [0.7, 90.0, 1000.0, 3.0]),
        ({}, [0.5, 120.0, 200000.0, 4.0]),
        ({"energy": None, "tempo": math.nan}, [0.5, 120.0, 200000.0, 4.0]),
        ({"energy": 0.0, "tempo": 0, "duration_ms": 0.0, "time_signature": 0}, [0.0, 120.0, 200000.0, 4.0]),
        ({"energy": "0.25", "extra": 9.0}, [0.25, 120.0, 200000.0, 4.0]),
    ],
    ids=["all-given", "none-given", "none-and-nan", "zeros", "string-and-extra"],
)
def test_impute_features(values: dict[str, float | None], expected: list[float]) -> None:
    assert impute_features(values, MEDIANS, FEATS) == expected


@pytest.mark.parametrize(
    ("values", "medians", "match"),
    [
        ({"energy": "loud"}, MEDIANS, "non-numeric"),
        ({"energy": math.inf}, MEDIANS, "non-finite"),
        ({}, {"energy": 0.5}, "no median"),
    ],
    ids=["non-numeric", "infinite", "no-median"],
)
def test_impute_features_rejects(values: dict[str, float | None], medians: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        impute_features(values, medians, FEATS)


def test_impute_features_matches_catalog_cleaning(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", [HEADER_114K, row("a", tempo="100"), row("b", tempo="0"), row("c", tempo="140")])
    cat = load_csv(path)
    raw = {"danceability": 0.6, "energy": 0.5, "key": 5, "loudness": -7.5, "mode": 1, "speechiness": 0.05,
           "acousticness": 0.3, "instrumentalness": 1.01e-6, "liveness": 0.1, "valence": 0.4, "tempo": 0,
           "duration_ms": 200000, "time_signature": 4}
    expected = cat.tracks.loc[1, cat.features].astype(float).tolist()
    assert impute_features(raw, cat.report.medians, cat.features) == expected


# ---------------------------------------------------------------- the real 114k file


@pytest.fixture(scope="module")
def real() -> tuple[Catalog, float]:
    if not REAL_CSV.exists():
        pytest.skip(f"real dataset not found at {REAL_CSV} (set MUSICREC_SHARED_DATA to its folder)")
    start = time.perf_counter()
    cat = load_csv(REAL_CSV)
    return cat, time.perf_counter() - start


@pytest.mark.real_data
def test_real_file_counts(real: tuple[Catalog, float]) -> None:
    cat, _ = real
    check_clean(cat)
    r = cat.report
    assert (r.rows_read, r.n_tracks, r.merged_rows, r.exact_duplicate_rows) == (114_000, 89_741, 24_259, 450)
    assert cat.features == list(FEATURES) and r.missing_features == [] and r.warnings == []
    assert {f: n for f, n in r.imputed.items() if n} == {"tempo": 157, "duration_ms": 1, "time_signature": 162}
    t = cat.tracks
    assert (t["tempo"] > 0).all() and (t["duration_ms"] > 0).all() and (t["time_signature"] > 0).all()
    assert t["genres"].str.contains("|", regex=False).sum() > 10_000
    assert (t["genre"] == t["genres"].str.split("|").str[0]).all()
    assert t["genres"].str.split("|").explode().nunique() == 114


@pytest.mark.real_data
def test_real_file_na_row(real: tuple[Catalog, float]) -> None:
    t = real[0].tracks
    na = t[t["id"] == "1kR4gIb7nGxHPI3D2ifs59"]
    assert len(na) == 1
    assert na[["name", "artists", "artist", "album"]].iloc[0].tolist() == ["", "", "", ""]
    assert na["genre"].iloc[0] == "k-pop"
    assert t.loc[0, "id"] == "5SuOikwiRyPMVoIQDJUgSV" and t.loc[0, "artist"] == "Gen Hoshino"


@pytest.mark.real_data
def test_real_file_loads_fast(real: tuple[Catalog, float]) -> None:
    assert real[1] < 3.0, f"load_csv took {real[1]:.2f} s"


# ---------------------------------------------------------------- absurd values and headers (issue 13)

@pytest.mark.parametrize(("feature", "value"), [
    ("energy", "1e308"), ("energy", "-0.01"), ("energy", "1.5"), ("tempo", "-3"), ("tempo", "1e9"),
    ("duration", "-1"), ("time_signature", "99"),
], ids=lambda v: v)
def test_a_value_outside_its_features_range_is_a_bad_row(tmp_path: Path, feature: str, value: str) -> None:
    """One danceability=1e308 row used to make the scaler's scale inf and zero the feature for the whole catalog."""
    content = _csv(HEADER_114K, row("a"), row("b"), row("c", **{feature: value}))
    err = bad_input(tmp_path, "range.csv", content)
    column = {"duration": "duration_ms"}.get(feature, feature)
    low, high = FEATURE_RANGES[column]
    assert (err.column, err.row) == (column, 3)
    assert str(err) == (f"{tmp_path / 'range.csv'}: column '{column}', row 3: value {float(value):g} outside "
                        f"{column}'s valid range {low:g}..{high:g}")


def test_the_ranges_accept_real_spotify_values_and_the_missing_spellings(tmp_path: Path) -> None:
    lines = [HEADER_114K, row("a", energy="0", tempo="0", duration="0", time_signature="0"),
             row("b", energy="1", tempo="243.372", duration="5237295", time_signature="5"), row("c", energy="")]
    catalog = load_csv(write(tmp_path, "edges.csv", lines))
    assert catalog.report.n_tracks == 3 and catalog.report.imputed["energy"] == 1


def test_every_feature_has_a_range() -> None:
    assert set(FEATURE_RANGES) == set(FEATURES)
    assert all(low < high for low, high in FEATURE_RANGES.values())


def test_a_repeated_column_in_the_header_is_refused(tmp_path: Path) -> None:
    """pandas renames a repeated column ("energy.1"), so the first one used to be taken silently."""
    err = bad_input(tmp_path, "dup.csv", _csv("id,energy,valence,tempo,energy", "x,0.1,0.2,100,0.9"))
    assert "duplicate column 'energy'" in str(err)
    err = bad_input(tmp_path, "dup2.csv", _csv(HEADER_114K + ",track_name", row("a") + ",Other"))
    assert "duplicate column 'track_name'" in str(err)
