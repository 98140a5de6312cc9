"""The serving-side track table: column arrays plus the lookups scoring needs.

Built once at start-up from ``tracks.parquet``; requests only index numpy arrays and
dicts. Inverted lists (genre, artist, album → rows) let filters and artist/album
candidates work without scanning the catalog.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TEXT_COLUMNS = ("id", "name", "artists", "artist", "album", "genre", "genres")


def _inverted(keys: pd.Series, priority: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """key → int32 row numbers, for a Series whose index is the row number.

    Rows come in ascending order, or by descending ``priority`` (indexed by row) when given.
    """
    keys = keys[keys != ""]
    if keys.empty:
        return {}
    codes, uniques = pd.factorize(keys, sort=False)
    rows = keys.index.to_numpy()
    order = np.lexsort((rows, codes)) if priority is None else np.lexsort((rows, -priority[rows], codes))
    rows = rows[order].astype(np.int32)
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return {str(k): part for k, part in zip(uniques, np.split(rows, bounds))}


@dataclass(frozen=True, eq=False)
class TrackTable:
    ids: np.ndarray          # object array of str
    name: np.ndarray
    artists: np.ndarray      # ';'-joined, as in the source
    artist: np.ndarray       # first artist
    album: np.ndarray
    genre: np.ndarray        # primary genre
    genres: np.ndarray       # '|'-joined
    popularity: np.ndarray   # int16
    explicit: np.ndarray     # bool
    features: np.ndarray     # (n, f) float32 raw (imputed) values
    feature_names: tuple[str, ...]
    row_of: dict[str, int] = field(repr=False)
    song_key: np.ndarray = field(repr=False)          # int32: same (name, first artist) → same key
    genre_rows: dict[str, np.ndarray] = field(repr=False)
    artist_rows: dict[str, np.ndarray] = field(repr=False)  # most popular first
    album_rows: dict[str, np.ndarray] = field(repr=False)  # key "artist\x1falbum": album names repeat across artists
    album_key: np.ndarray = field(repr=False)         # per row, the album_rows key
    popular_spread: np.ndarray = field(repr=False)    # rows: most popular first, round-robin across genres

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def genre_names(self) -> list[str]:
        return sorted(self.genre_rows)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, feature_names: list[str] | tuple[str, ...]) -> "TrackTable":
        frame = frame.reset_index(drop=True)
        text = {col: frame[col].fillna("").astype(str) for col in TEXT_COLUMNS}
        ids = text["id"].to_numpy(dtype=object)
        row_of = {track_id: row for row, track_id in enumerate(ids)}
        if len(row_of) != len(ids):
            raise ValueError("track table has duplicate ids")
        song_key = pd.factorize(text["name"].str.casefold().str.strip() + "\x1f" + text["artist"].str.casefold().str.strip())[0]
        album_key = text["artist"] + "\x1f" + text["album"]
        genres_long = text["genres"].str.split("|").explode()
        artists_long = text["artists"].str.split(";").explode().str.strip()
        genre_rows = _inverted(genres_long)
        popularity = frame["popularity"].to_numpy(dtype=np.int16)
        return cls(
            ids=ids,
            name=text["name"].to_numpy(dtype=object),
            artists=text["artists"].to_numpy(dtype=object),
            artist=text["artist"].to_numpy(dtype=object),
            album=text["album"].to_numpy(dtype=object),
            genre=text["genre"].to_numpy(dtype=object),
            genres=text["genres"].to_numpy(dtype=object),
            popularity=popularity,
            explicit=frame["explicit"].to_numpy(dtype=bool),
            features=frame[list(feature_names)].to_numpy(dtype=np.float32),
            feature_names=tuple(feature_names),
            row_of=row_of,
            song_key=song_key.astype(np.int32),
            genre_rows=genre_rows,
            artist_rows=_inverted(artists_long, popularity.astype(np.int64)),
            album_rows=_inverted(album_key.where(text["album"] != "", ""), popularity.astype(np.int64)),
            album_key=album_key.to_numpy(dtype=object),
            popular_spread=_popular_spread(text["genre"], popularity),
        )

    @classmethod
    def from_parquet(cls, path: str | Path, feature_names: list[str] | tuple[str, ...]) -> "TrackTable":
        return cls.from_frame(pd.read_parquet(path), feature_names)


def _popular_spread(genre: pd.Series, popularity: np.ndarray) -> np.ndarray:
    """Cold-start order: each genre's most popular track, then each genre's second, …

    Within a round, genres are ordered by the popularity of that round's track, so the
    list starts with hits yet no genre gets a second slot before every genre had one.
    """
    frame = pd.DataFrame({"genre": genre.to_numpy(), "pop": popularity, "row": np.arange(len(genre))})
    frame = frame.sort_values(["pop", "row"], ascending=[False, True], kind="stable")
    frame["rank"] = frame.groupby("genre", sort=False).cumcount()
    frame = frame.sort_values(["rank", "pop", "row"], ascending=[True, False, True], kind="stable")
    return frame["row"].to_numpy(dtype=np.int32)
