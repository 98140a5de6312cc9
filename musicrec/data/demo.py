"""Deterministic synthetic catalogue in the 114k CSV's schema, for demos, tests and CI.

Why synthetic: the service must start with no dataset at hand, and tests need a catalogue whose
structure is known. Each genre is a cluster centre in feature space; each artist sits at a small
fixed offset from its genre's centre, so same-artist tracks are measurably closer than same-genre
ones (a ground truth recommenders can be checked against). Names ("Demo Track 00042") cannot be
mistaken for real songs. Everything is vectorised numpy: a million tracks take a few seconds.

CLI: ``python -m musicrec.data.demo --n 5000 --seed 7 --out demo.csv[.gz]``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from musicrec.data.loader import Catalog, catalog_from_frame
from musicrec.data.schema import FEATURES

__all__ = ["GENRES", "demo_catalog", "generate_demo_frame", "main", "write_csv"]

log = logging.getLogger(__name__)

_BASE62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_ID_LEN = 22

# Continuous features generated around a genre centre, with their within-artist noise (sd) and
# valid range. duration is in seconds here, written as integer ms.
_CONT = ("danceability", "energy", "loudness", "speechiness", "acousticness", "instrumentalness",
         "liveness", "valence", "tempo", "duration_s")
_NOISE_SD = np.array([0.05, 0.05, 1.3, 0.02, 0.07, 0.08, 0.05, 0.07, 7.0, 25.0])
_ARTIST_SD = np.array([0.09, 0.09, 2.2, 0.035, 0.12, 0.14, 0.07, 0.11, 11.0, 40.0])
_LOW = np.array([0.0, 0.0, -40.0, 0.0, 0.0, 0.0, 0.0, 0.0, 60.0, 90.0])
_HIGH = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 200.0, 420.0])

# genre: (centre over _CONT, P(mode=1), P(time signature 3, 4, 5), P(explicit), spread factor)
_GENRE_TABLE: dict[str, tuple[tuple[float, ...], float, tuple[float, float, float], float, float]] = {
    "demo-ambient":   ((0.30, 0.20, -22.0, 0.04, 0.85, 0.85, 0.11, 0.15, 90.0, 330.0), 0.60, (0.20, 0.78, 0.02), 0.01, 1.2),
    "demo-rock":      ((0.50, 0.80, -6.0, 0.05, 0.08, 0.05, 0.20, 0.50, 128.0, 230.0), 0.70, (0.05, 0.93, 0.02), 0.08, 1.0),
    "demo-metal":     ((0.40, 0.93, -4.5, 0.09, 0.01, 0.15, 0.22, 0.30, 140.0, 260.0), 0.50, (0.05, 0.90, 0.05), 0.15, 0.9),
    "demo-edm":       ((0.68, 0.85, -5.0, 0.07, 0.03, 0.50, 0.18, 0.40, 126.0, 240.0), 0.50, (0.01, 0.98, 0.01), 0.06, 0.9),
    "demo-hiphop":    ((0.78, 0.65, -6.5, 0.28, 0.15, 0.01, 0.17, 0.50, 95.0, 210.0), 0.55, (0.02, 0.97, 0.01), 0.45, 1.0),
    "demo-jazz":      ((0.55, 0.35, -12.0, 0.05, 0.70, 0.35, 0.15, 0.50, 110.0, 300.0), 0.45, (0.15, 0.80, 0.05), 0.01, 1.3),
    "demo-classical": ((0.30, 0.15, -22.0, 0.04, 0.95, 0.80, 0.12, 0.25, 100.0, 360.0), 0.60, (0.25, 0.70, 0.05), 0.00, 1.1),
    "demo-folk":      ((0.52, 0.35, -11.0, 0.04, 0.75, 0.05, 0.14, 0.45, 112.0, 220.0), 0.75, (0.20, 0.78, 0.02), 0.02, 1.0),
    "demo-pop":       ((0.68, 0.68, -5.5, 0.07, 0.18, 0.01, 0.15, 0.58, 118.0, 205.0), 0.60, (0.03, 0.96, 0.01), 0.12, 0.9),
    "demo-latin":     ((0.74, 0.74, -5.5, 0.09, 0.22, 0.01, 0.18, 0.72, 105.0, 215.0), 0.55, (0.05, 0.94, 0.01), 0.15, 0.9),
    "demo-reggae":    ((0.76, 0.55, -8.0, 0.12, 0.15, 0.03, 0.20, 0.75, 82.0, 230.0), 0.50, (0.04, 0.95, 0.01), 0.05, 1.0),
    "demo-blues":     ((0.50, 0.50, -10.0, 0.06, 0.45, 0.05, 0.25, 0.55, 105.0, 250.0), 0.60, (0.20, 0.78, 0.02), 0.02, 1.1),
}
GENRES: tuple[str, ...] = tuple(_GENRE_TABLE)

_CSV_COLUMNS = ("track_id", "artists", "album_name", "track_name", "popularity", "duration_ms", "explicit",
                *FEATURES[:-2], "time_signature", "track_genre")
_SECOND_GENRE_SHARE = 0.05  # tracks listed again under another genre, as in the real file
_FEATURED_SHARE = 0.08  # tracks with a second artist
_ALBUM_SIZES = (5, 12)


def generate_demo_frame(n_tracks: int = 5000, seed: int = 7) -> pd.DataFrame:
    """Raw rows in the 114k CSV's schema: ``n_tracks`` distinct ids plus ~5 % second-genre rows.

    Same (n_tracks, seed) gives an identical frame. Rows of distinct tracks come first, the
    repeated-genre rows after them, so first-seen order is the track order.
    """
    if n_tracks < 1:
        raise ValueError(f"n_tracks must be >= 1, got {n_tracks}")
    rng = np.random.default_rng(seed)
    n = int(n_tracks)
    n_genres = len(GENRES)
    table = list(_GENRE_TABLE.values())
    centres = np.array([t[0] for t in table])
    p_mode = np.array([t[1] for t in table])
    ts_cum = np.cumsum(np.array([t[2] for t in table]), axis=1)
    p_explicit = np.array([t[3] for t in table])
    spread = np.array([t[4] for t in table])

    # Albums of 5-12 consecutive slots; each album belongs to one artist, artists own ~2 albums.
    sizes = rng.integers(_ALBUM_SIZES[0], _ALBUM_SIZES[1] + 1, size=n // _ALBUM_SIZES[0] + 1)
    n_albums = int(np.searchsorted(np.cumsum(sizes), n) + 1)
    album_of_slot = np.repeat(np.arange(n_albums), sizes[:n_albums])[:n]
    n_artists = max(1, (n_albums + 1) // 2)
    album_artist = rng.integers(0, n_artists, size=n_albums)
    artist_genre = rng.integers(0, n_genres, size=n_artists)
    # Artists mostly stay in their genre: 1 album in 10 strays to another one.
    stray = rng.random(n_albums) < 0.1
    album_genre = np.where(stray, rng.integers(0, n_genres, size=n_albums), artist_genre[album_artist])

    # Catalogue order is shuffled so albums are not contiguous.
    album = album_of_slot[rng.permutation(n)]
    artist = album_artist[album]
    genre = album_genre[album]

    artist_offset = rng.standard_normal((n_artists, len(_CONT))) * _ARTIST_SD
    noise = rng.standard_normal((n, len(_CONT))) * _NOISE_SD
    cont = centres[genre] + (artist_offset[artist] + noise) * spread[genre][:, None]
    cont = np.clip(cont, _LOW, _HIGH)

    # Artists favour a key and a mode, as real ones do; the rest is per-track chance.
    artist_key = rng.integers(0, 12, size=n_artists)
    key = np.where(rng.random(n) < 0.5, artist_key[artist], rng.integers(0, 12, size=n))
    artist_mode = rng.random(n_artists) < p_mode[artist_genre]
    mode = np.where(rng.random(n) < 0.5, artist_mode[artist], rng.random(n) < p_mode[genre]).astype(np.int64)
    time_signature = np.array([3, 4, 5])[(rng.random(n)[:, None] > ts_cum[genre]).sum(axis=1).clip(0, 2)]
    explicit = rng.random(n) < p_explicit[genre]
    artist_pop = rng.beta(1.3, 3.5, size=n_artists) * 100.0
    popularity = np.clip(np.rint(artist_pop[artist] + rng.normal(0.0, 10.0, size=n)), 0, 100).astype(np.int64)
    popularity[rng.random(n) < 0.03] = 0  # the real file has a mass of never-played tracks

    featured = rng.random(n) < _FEATURED_SHARE if n_artists > 1 else np.zeros(n, dtype=bool)
    other = rng.integers(0, n_artists, size=n)
    other = np.where(other == artist, (other + 1) % n_artists, other)

    ids = _base62_ids(rng, n)
    width = max(5, len(str(n)))
    number = pd.Series(np.arange(1, n + 1)).astype(str).str.zfill(width)
    artists = "Demo Artist " + pd.Series(artist + 1).astype(str)
    second = ";Demo Artist " + pd.Series(other + 1).astype(str)
    artists = artists.where(~featured, artists + second)

    frame = pd.DataFrame(
        {
            "track_id": pd.Series(ids, dtype=str),
            "artists": artists.astype(str),
            "album_name": ("Demo Album " + pd.Series(album + 1).astype(str)).astype(str),
            "track_name": ("Demo Track " + number).astype(str),
            "popularity": popularity,
            "duration_ms": np.rint(cont[:, 9] * 1000.0).astype(np.int64),
            "explicit": explicit,
            "danceability": cont[:, 0].round(3),
            "energy": cont[:, 1].round(3),
            "key": key.astype(np.int64),
            "loudness": cont[:, 2].round(3),
            "mode": mode,
            "speechiness": cont[:, 3].round(4),
            "acousticness": cont[:, 4].round(4),
            "instrumentalness": cont[:, 5].round(4),
            "liveness": cont[:, 6].round(4),
            "valence": cont[:, 7].round(3),
            "tempo": cont[:, 8].round(3),
            "time_signature": time_signature.astype(np.int64),
            "track_genre": pd.Series(np.array(GENRES, dtype=object)[genre], dtype=str),
        },
        columns=list(_CSV_COLUMNS),
    )

    # ~5 % of tracks appear again under a second genre: same id and values, other track_genre.
    m = int(round(n * _SECOND_GENRE_SHARE))
    if m:
        again = rng.choice(n, size=m, replace=False)
        other_genre = (genre[again] + rng.integers(1, n_genres, size=m)) % n_genres
        extra = frame.iloc[again].copy()
        extra["track_genre"] = pd.Series(np.array(GENRES, dtype=object)[other_genre], dtype=str).to_numpy()
        frame = pd.concat([frame, extra], ignore_index=True)
    return frame


def _base62_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unique 22-char base62 strings (Spotify-id lookalikes), drawn from ``rng``."""
    digits = rng.integers(0, 62, size=(n, _ID_LEN), dtype=np.uint8)
    while True:
        ids = np.ascontiguousarray(_BASE62[digits]).view(f"S{_ID_LEN}").ravel()
        _, first = np.unique(ids, return_index=True)
        if len(first) == n:
            return ids.astype(f"U{_ID_LEN}")
        dup = np.ones(n, dtype=bool)
        dup[first] = False  # 62**22 possibilities: practically never taken
        digits[dup] = rng.integers(0, 62, size=(int(dup.sum()), _ID_LEN), dtype=np.uint8)


def demo_catalog(n_tracks: int = 5000, seed: int = 7) -> Catalog:
    """The generated frame cleaned by the same code path as a real CSV (``demo=True``)."""
    frame = generate_demo_frame(n_tracks, seed)
    return catalog_from_frame(frame, source=None, demo=True)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` as CSV, gzip when the name ends in .gz, byte-identical for identical frames.

    The gzip header gets no file name and mtime 0, so the bytes depend only on the data.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".gz":
        with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                io.TextIOWrapper(gz, encoding="utf-8", newline="") as text:
            frame.to_csv(text, index=False, lineterminator="\n")
    else:
        with out.open("w", encoding="utf-8", newline="") as text:
            frame.to_csv(text, index=False, lineterminator="\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m musicrec.data.demo``: write a demo CSV in the 114k file's schema."""
    parser = argparse.ArgumentParser(prog="python -m musicrec.data.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="distinct tracks (default 5000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", required=True, help="output path; .gz suffix writes gzip")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frame = generate_demo_frame(args.n, args.seed)
    out = write_csv(frame, args.out)
    log.info("wrote %s: %d rows, %d tracks, seed %d", out, len(frame), args.n, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
