"""Demo generator: deterministic, plausible, loadable, and with a known artist/genre structure."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from musicrec.data.demo import GENRES, demo_catalog, generate_demo_frame, main, write_csv
from musicrec.data.loader import catalog_from_frame, load_csv
from musicrec.data.schema import FEATURES

REPO = Path(__file__).resolve().parents[1]
CSV_COLUMNS = ["track_id", "artists", "album_name", "track_name", "popularity", "duration_ms", "explicit",
               "danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
               "instrumentalness", "liveness", "valence", "tempo", "time_signature", "track_genre"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_demo_frame(3000, seed=11)


def test_deterministic_frame() -> None:
    a, b = generate_demo_frame(500, seed=5), generate_demo_frame(500, seed=5)
    pd.testing.assert_frame_equal(a, b)
    c = generate_demo_frame(500, seed=6)
    assert not a["track_id"].equals(c["track_id"])


@pytest.mark.parametrize("name", ["demo.csv", "demo.csv.gz"])
def test_byte_identical_csv(tmp_path: Path, name: str) -> None:
    first = write_csv(generate_demo_frame(400, seed=2), tmp_path / "one" / name)
    second = write_csv(generate_demo_frame(400, seed=2), tmp_path / "two" / name)
    assert first.read_bytes() == second.read_bytes()


def test_schema_and_ranges(frame: pd.DataFrame) -> None:
    n = 3000
    assert list(frame.columns) == CSV_COLUMNS
    assert len(frame) == n + round(0.05 * n)
    assert frame["track_id"].nunique() == n
    assert frame["track_id"].str.fullmatch(r"[0-9A-Za-z]{22}").all()
    assert frame["track_name"].str.fullmatch(r"Demo Track \d{5}").all()
    assert frame["album_name"].str.fullmatch(r"Demo Album \d+").all()
    assert frame["artists"].str.fullmatch(r"Demo Artist \d+(;Demo Artist \d+)?").all()
    assert 0.03 < frame["artists"].str.contains(";").mean() < 0.15
    assert set(frame["track_genre"]) == set(GENRES) and len(GENRES) == 12
    assert all(g.startswith("demo-") for g in GENRES)
    for c in ("popularity", "duration_ms", "key", "mode", "time_signature"):
        assert frame[c].dtype == np.int64, c
    assert frame["explicit"].dtype == bool and 0.05 < frame["explicit"].mean() < 0.15
    for c in ("danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence"):
        assert frame[c].between(0.0, 1.0).all(), c
    assert frame["key"].between(0, 11).all() and set(frame["mode"]) == {0, 1}
    assert frame["loudness"].between(-40.0, 0.0).all()
    assert frame["tempo"].between(60.0, 200.0).all()
    assert frame["duration_ms"].between(90_000, 420_000).all()
    assert set(frame["time_signature"]) <= {3, 4, 5} and frame["time_signature"].mode()[0] == 4
    pop = frame["popularity"]
    assert pop.between(0, 100).all() and pop.median() < 40 and pop.mean() < pop.max() / 2


def test_albums_group_one_artists_tracks(frame: pd.DataFrame) -> None:
    tracks = frame.drop_duplicates("track_id")
    first_artist = tracks["artists"].str.split(";").str[0]
    per_album = first_artist.groupby(tracks["album_name"]).agg(["nunique", "size"])
    assert (per_album["nunique"] == 1).all()
    assert per_album["size"].max() <= 12
    assert (per_album["size"] >= 5).sum() >= len(per_album) - 1  # only the last album may be cut short


def test_second_genre_rows_exercise_dedup(frame: pd.DataFrame) -> None:
    extra = frame.iloc[3000:]
    originals = frame.iloc[:3000].set_index("track_id").loc[extra["track_id"]]
    assert (originals["track_genre"].to_numpy() != extra["track_genre"].to_numpy()).all()
    same = originals.drop(columns="track_genre").reset_index()
    pd.testing.assert_frame_equal(same, extra.drop(columns="track_genre").reset_index(drop=True),
                                  check_dtype=False)


def test_loads_through_catalog_from_frame(frame: pd.DataFrame) -> None:
    cat = catalog_from_frame(frame, source=None, demo=True)
    r = cat.report
    assert cat.demo and cat.source is None
    assert cat.features == list(FEATURES) and r.missing_features == [] and r.warnings == []
    assert (r.rows_read, r.n_tracks, r.merged_rows, r.exact_duplicate_rows) == (3150, 3000, 150, 0)
    assert cat.tracks["genres"].str.contains("|", regex=False).sum() == 150
    assert cat.tracks["id"].tolist() == frame["track_id"].iloc[:3000].tolist()
    assert not cat.tracks.isna().any().any()
    small = demo_catalog(200, seed=1)
    assert small.demo and small.report.n_tracks == 200 and len(small.tracks) == 200


def _mean_pair_distance(x: np.ndarray, groups: np.ndarray, rng: np.random.Generator, pairs: int) -> float:
    """Mean distance between random pairs of distinct rows that share a group label."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
    ends = np.searchsorted(sorted_groups, sorted_groups, side="right")
    eligible = np.flatnonzero(ends - starts >= 2)
    i = rng.choice(eligible, size=pairs)
    offset = rng.integers(1, ends[i] - starts[i])
    j = starts[i] + (i - starts[i] + offset) % (ends[i] - starts[i])  # another member of the same group
    return float(np.linalg.norm(x[order[i]] - x[order[j]], axis=1).mean())


def test_same_artist_closer_than_same_genre(frame: pd.DataFrame) -> None:
    cat = catalog_from_frame(frame, source=None, demo=True)
    t = cat.tracks
    x = t[cat.features].to_numpy()
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    rng = np.random.default_rng(0)
    artist = pd.factorize(t["artist"])[0]
    genre = pd.factorize(t["genre"])[0]
    same_artist = _mean_pair_distance(x, artist, rng, 5000)
    same_genre = _mean_pair_distance(x, genre, rng, 5000)
    anywhere = _mean_pair_distance(x, np.zeros(len(t), dtype=np.int64), rng, 5000)
    assert same_artist < 0.9 * same_genre < 0.9 * anywhere


def test_cli_writes_loadable_gzip(tmp_path: Path) -> None:
    out = tmp_path / "cli" / "demo.csv.gz"
    assert main(["--n", "300", "--seed", "3", "--out", str(out)]) == 0
    cat = load_csv(out)
    assert cat.report.n_tracks == 300 and cat.report.merged_rows == 15
    pd.testing.assert_frame_equal(cat.tracks, demo_catalog(300, seed=3).tracks)


def test_module_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "musicrec.data.demo", "--n", "50", "--seed", "1", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr
    assert out.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)


def test_rejects_empty_catalogue() -> None:
    with pytest.raises(ValueError, match="n_tracks"):
        generate_demo_frame(0)


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    big = generate_demo_frame(100_000, seed=7)
    elapsed = time.perf_counter() - start
    assert big["track_id"].nunique() == 100_000
    assert elapsed < 3.0, f"100k demo tracks took {elapsed:.2f} s"
