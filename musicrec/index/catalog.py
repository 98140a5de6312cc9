"""The serving-side track table: column arrays plus the lookups scoring and browsing need.

Built once at start-up from ``tracks.parquet`` and, when the build saved them, its derived
lookups (``track_lookups.npz``); requests only index numpy arrays and dicts. Inverted lists (genre, artist, album → rows) let filters and artist/album
candidates work without scanning the catalog.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from musicrec.index.packing import (
    pack_inverted, pack_rows, pack_strings, pack_text, unpack_inverted, unpack_strings, unpack_text,
)

TEXT_COLUMNS = ("id", "name", "artists", "artist", "album", "genre", "genres")


# What str.strip() removes from ASCII text (Arrow's own whitespace set lacks \x1c-\x1f).
_PY_ASCII_WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
SEP = pa.scalar("\x1f", type=pa.large_string())  # joins (name, artist) and (artist, album) into one key


def _arrow_text(text: pd.Series) -> pa.Array:
    """One contiguous Arrow string array for a text column (already filled and cast to str)."""
    arr = pa.array(text, type=pa.large_string(), from_pandas=True)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _parquet_text(column: pa.ChunkedArray) -> pa.Array:
    """A text column as read from Parquet, as ``_arrow_text`` gives it from pandas: nulls as ""."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.fill_null(column.cast(pa.large_string()), "").combine_chunks()
    return _arrow_text(column.to_pandas().fillna("").astype(str))  # not text in the file: str() each value


def casefold_strip(arr: pa.Array) -> pa.Array:
    """``s.casefold().strip()`` for every string: Arrow for ASCII ones (where casefold is lower),
    Python for the rest, so the result is exactly Python's."""
    out = pc.utf8_trim(pc.utf8_lower(arr), characters=_PY_ASCII_WHITESPACE)
    other = pc.invert(pc.string_is_ascii(arr))
    if pc.any(other).as_py():
        fixed = [v.casefold().strip() for v in pc.filter(arr, other).to_pylist()]
        out = pc.replace_with_mask(out, other, pa.array(fixed, type=pa.large_string()))
    return out


# Listings of one song under another title: "(feat. …)", "- Remastered 2011", "- Radio Edit", …
# Stripped from the name before the song key is made, so they count as one song; live versions,
# remixes and acoustic takes are other recordings and keep their own key. The patterns are in the
# syntax Python's re and Arrow's RE2 share, so both spellings of ``song_title`` agree.
_TITLE_SUFFIXES = (
    r"(?i)\s*[\(\[](?:feat\.?|ft\.?|featuring|with)\s[^\)\]]*[\)\]]",
    r"(?i)\s*[\(\[][^\)\]]*remaster[^\)\]]*[\)\]]",
    r"(?i)\s+-\s+[^-]*\b(?:remaster\w*|radio edit|radio version|radio mix|single version|album version|mono"
    r"|stereo|original mix|bonus track)\b[^-]*$",
    r"(?i)\s+-\s+edit$",
)
_TITLE_PATTERNS = tuple(re.compile(p) for p in _TITLE_SUFFIXES)


def song_title(name: str) -> str:
    """The song a listing's name is of: ``name`` without the suffixes above."""
    for pattern in _TITLE_PATTERNS:
        name = pattern.sub("", name)
    return name


def _song_titles(names: pa.Array) -> pa.Array:
    """``song_title`` for every name, in Arrow."""
    for pattern in _TITLE_SUFFIXES:
        names = pc.replace_substring_regex(names, pattern, "")
    return names


def _first_seen_codes(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(codes, distinct values) numbered by first appearance, as ``pd.factorize(sort=False)``; null → -1."""
    encoded = arr.dictionary_encode()
    return encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary


def _album_keys(text: dict[str, pa.Array], coded: dict[str, tuple[np.ndarray, pa.Array]]
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per row the key "artist\x1falbum" (object array), its code by first appearance, and the keys.

    Built from (artist, album) code pairs, so only distinct pairs are joined in Python; when an
    artist or album itself contains the separator, pairs could collide as strings, so then the
    joined strings are encoded instead.
    """
    (artist_codes, artists), (album_codes, albums) = coded["artist"], coded["album"]
    if pc.any(pc.match_substring(artists, "\x1f")).as_py() or pc.any(pc.match_substring(albums, "\x1f")).as_py():
        codes, keys = _first_seen_codes(pc.binary_join_element_wise(text["artist"], text["album"], SEP))
        key_list = keys.to_pylist()
    else:
        codes, pairs = pd.factorize(artist_codes * max(1, len(albums)) + album_codes, sort=False)
        artist_names, album_names = artists.to_pylist(), albums.to_pylist()
        key_list = [f"{artist_names[p // max(1, len(albums))]}\x1f{album_names[p % max(1, len(albums))]}"
                    for p in pairs.tolist()]
    key_objects = np.empty(len(key_list), dtype=object)
    key_objects[:] = key_list
    return key_objects[codes], codes.astype(np.int64), key_list


def _refactorized(codes: np.ndarray, keys: list[str]) -> tuple[np.ndarray, list[str]]:
    """Codes of a subset of rows renumbered by first appearance within it, with their keys."""
    new_codes, old = pd.factorize(codes, sort=False)
    return new_codes.astype(np.int64), [keys[c] for c in old.tolist()]


def _exploded(codes: np.ndarray, distinct: pa.Array, sep: str, strip: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``text.str.split(sep).explode()`` (``.str.strip()`` too when asked) without the empty parts,
    as (row of each part, key code of each part, keys by first appearance).

    Only the distinct values are split in Python (a catalog has far fewer distinct artist
    strings than rows); the per-row expansion is numpy.
    """
    parts_of = [[p.strip() for p in v.split(sep)] if strip else v.split(sep) for v in distinct.to_pylist()]
    names: dict[str, int] = {}
    flat = np.array([names.setdefault(part, len(names)) for parts in parts_of for part in parts], dtype=np.int64)
    lengths = np.array([len(parts) for parts in parts_of], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    per_row = lengths[codes]
    rows = np.repeat(np.arange(len(codes), dtype=np.int64), per_row)
    within = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    part = flat[offsets[codes][rows] + within]
    empty = names.get("")
    if empty is not None:
        keep = part != empty
        rows, part = rows[keep], part[keep]
    key_codes, first = pd.factorize(part, sort=False)
    by_code = list(names)
    return rows, key_codes.astype(np.int64), [by_code[c] for c in first]


def _inverted(rows: np.ndarray, codes: np.ndarray, keys: list[str],
              priority: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """key → int32 row numbers, from parallel (row, key code) arrays; keys in code order.

    Rows come in ascending order, or by descending ``priority`` (indexed by row) when given.
    """
    if not len(rows):
        return {}
    order = _sort_order(codes, rows, None if priority is None else priority[rows])
    rows = rows[order].astype(np.int32)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(codes[order])) + 1, [len(rows)]]).tolist()
    return {str(k): rows[a:b] for k, a, b in zip(keys, bounds[:-1], bounds[1:])}


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
    song_key: np.ndarray = field(repr=False)          # int32: same (song_title(name), first artist) → same key
    genre_rows: dict[str, np.ndarray] = field(repr=False)
    artist_rows: dict[str, np.ndarray] = field(repr=False)  # most popular first
    album_rows: dict[str, np.ndarray] = field(repr=False)  # key "artist\x1falbum": album names repeat across artists
    album_key: np.ndarray = field(repr=False)         # per row, the album_rows key
    popular_spread: np.ndarray = field(repr=False)    # rows: most popular first, round-robin across genres
    name_order: np.ndarray = field(repr=False)        # rows by lowercased name (stable), for the song list
    artist_order: np.ndarray = field(repr=False)      # rows by lowercased first artist (stable)
    search_text: pa.Array = field(repr=False)         # per row casefold(name \x1f artists \x1f album), stripped

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def genre_names(self) -> list[str]:
        return sorted(self.genre_rows)

    @cached_property
    def link_tables(self) -> tuple[np.ndarray, ...]:
        """The artist and album links as flat tables, for the compiled scorer (``musicrec.index._kernel``).

        (track_bounds, track_artists): each track's artists as numbers (CSR, by row); (artist_bounds,
        artist_rows): each artist's tracks, most popular first, as ``artist_rows`` holds them;
        album_of: each track's album number, -1 for none; (album_bounds, album_rows): each album's
        tracks. A track's artists are those whose lists hold it: the ones its ``artists`` name.
        Derived once per table (a build's blend search makes many recommenders over one table).
        """
        n = len(self)
        artist_bounds, artist_rows = pack_rows(list(self.artist_rows.values()))
        owners = np.repeat(np.arange(len(artist_bounds) - 1, dtype=np.int32), np.diff(artist_bounds))
        track_artists = owners[np.argsort(artist_rows, kind="stable")]
        track_bounds = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(artist_rows, minlength=n), out=track_bounds[1:])
        album_bounds, album_rows = pack_rows(list(self.album_rows.values()))
        album_of = np.full(n, -1, dtype=np.int32)
        album_of[album_rows] = np.repeat(np.arange(len(album_bounds) - 1, dtype=np.int32), np.diff(album_bounds))
        return track_bounds, track_artists, artist_bounds, artist_rows, album_of, album_bounds, album_rows

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, feature_names: list[str] | tuple[str, ...],
                   lookups: Mapping[str, np.ndarray] | None = None) -> "TrackTable":
        """Column arrays and inverted lists, with the string work in Arrow and on distinct values.

        Why: start-up time. A 1M-track catalog took ~6 s here with pandas string methods; a
        repeated value (artist, album, genre) now becomes one Python string shared by its rows.
        ``lookups`` (``lookup_arrays()`` of this same table, saved by the build) supplies the
        song keys, album keys, inverted lists, cold-start order, song-list orders and search
        text instead of deriving them again: 3.3 s of a 1M catalog's 4.4 s here.
        """
        frame = frame.reset_index(drop=True)
        text = {col: _arrow_text(frame[col].fillna("").astype(str)) for col in TEXT_COLUMNS}
        return cls._from_columns(text, frame, feature_names, lookups)

    @classmethod
    def from_parquet(cls, path: str | Path, feature_names: list[str] | tuple[str, ...],
                     lookups: Mapping[str, np.ndarray] | None = None) -> "TrackTable":
        """``from_frame(pd.read_parquet(path))``, with the text columns kept in Arrow: pandas would first
        make a Python string per cell (7M at 1M tracks), only for them to be turned back into Arrow."""
        table = pq.read_table(path)
        text = {col: _parquet_text(table.column(col)) for col in TEXT_COLUMNS}
        numbers = table.select(["popularity", "explicit", *feature_names]).to_pandas()
        return cls._from_columns(text, numbers, feature_names, lookups)

    @classmethod
    def _from_columns(cls, text: dict[str, pa.Array], frame: pd.DataFrame, feature_names: list[str] | tuple[str, ...],
                      lookups: Mapping[str, np.ndarray] | None) -> "TrackTable":
        """The table from its text columns (Arrow, nulls as "") and the other columns (``frame``)."""
        coded = {col: _first_seen_codes(text[col]) for col in ("artists", "artist", "album", "genre", "genres")}
        obj = {col: codes_values[1].to_numpy(zero_copy_only=False)[codes_values[0]] if codes_values[0].size
               else np.empty(0, dtype=object) for col, codes_values in coded.items()}
        ids = text["id"].to_numpy(zero_copy_only=False)
        row_of = dict(zip(ids.tolist(), range(len(ids))))
        if len(row_of) != len(ids):
            raise ValueError("track table has duplicate ids")
        popularity = frame["popularity"].to_numpy(dtype=np.int16)
        columns = dict(
            ids=ids,
            name=text["name"].to_numpy(zero_copy_only=False),
            artists=obj["artists"],
            artist=obj["artist"],
            album=obj["album"],
            genre=obj["genre"],
            genres=obj["genres"],
            popularity=popularity,
            explicit=frame["explicit"].to_numpy(dtype=bool),
            features=frame[list(feature_names)].to_numpy(dtype=np.float32),
            feature_names=tuple(feature_names),
            row_of=row_of,
        )
        if lookups is not None:
            return cls(**columns, **_unpack_lookups(lookups, len(ids)))
        song = pc.binary_join_element_wise(casefold_strip(_song_titles(text["name"])), casefold_strip(text["artist"]),
                                           SEP)
        song_key, _ = _first_seen_codes(song)
        album_key, album_codes, album_keys = _album_keys(text, coded)
        priority = popularity.astype(np.int64)
        with_album = np.flatnonzero(obj["album"] != "") if len(ids) else np.empty(0, np.int64)
        return cls(
            **columns,
            song_key=song_key.astype(np.int32),
            genre_rows=_inverted(*_exploded(*coded["genres"], "|", strip=False)),
            artist_rows=_inverted(*_exploded(*coded["artists"], ";", strip=True), priority),
            album_rows=_inverted(with_album, *_refactorized(album_codes[with_album], album_keys), priority),
            album_key=album_key,
            popular_spread=_popular_spread(coded["genre"][0], popularity),
            name_order=_stable_order(pc.utf8_lower(text["name"])),
            artist_order=_stable_order(pc.utf8_lower(text["artist"])),
            # Stripping the ends changes no match: the song list strips its needle too.
            search_text=casefold_strip(pc.binary_join_element_wise(text["name"], text["artists"], text["album"], SEP)),
        )

    def lookup_arrays(self) -> dict[str, np.ndarray]:
        """What ``from_frame`` derives beyond the columns, as plain arrays for ``np.savez``
        (no pickle): the build saves them, and ``from_frame(..., lookups=)`` takes them back."""
        album_codes, album_keys = pd.factorize(self.album_key, sort=False)
        return {
            "song_key": self.song_key,
            "popular_spread": self.popular_spread,
            "name_order": self.name_order,
            "artist_order": self.artist_order,
            **pack_text("search_text", self.search_text),
            "album_code": album_codes.astype(np.int32),
            **pack_strings("album_keys", album_keys.tolist()),
            **pack_inverted("genre_rows", self.genre_rows),
            **pack_inverted("artist_rows", self.artist_rows),
            **pack_inverted("album_rows", self.album_rows),
        }


def _unpack_lookups(arrays: Mapping[str, np.ndarray], n: int) -> dict[str, object]:
    """``lookup_arrays()`` back into TrackTable fields, checked against the table's row count
    (every row number in range), so a bad file fails the load and never a request."""
    try:
        per_row = {name: arrays[name] for name in ("song_key", "popular_spread", "album_code", "name_order",
                                                   "artist_order")}
        if any(a.shape != (n,) for a in per_row.values()):
            raise ValueError(f"per-row arrays {[a.shape for a in per_row.values()]}, the table has {n} rows")
        album_keys = np.empty(len(arrays["album_keys__ends"]), dtype=object)
        album_keys[:] = unpack_strings(arrays, "album_keys")
        for name, bound in (("album_code", len(album_keys)), ("popular_spread", n), ("name_order", n),
                            ("artist_order", n)):
            if n and not 0 <= per_row[name].min() <= per_row[name].max() < bound:
                raise ValueError(f"{name} out of range")
        return {
            "song_key": per_row["song_key"].astype(np.int32, copy=False),
            "popular_spread": per_row["popular_spread"].astype(np.int32, copy=False),
            "name_order": per_row["name_order"].astype(np.int64, copy=False),
            "artist_order": per_row["artist_order"].astype(np.int64, copy=False),
            "search_text": unpack_text(arrays, "search_text", n),
            "album_key": album_keys[per_row["album_code"]] if n else np.empty(0, dtype=object),
            "genre_rows": unpack_inverted(arrays, "genre_rows", n),
            "artist_rows": unpack_inverted(arrays, "artist_rows", n),
            "album_rows": unpack_inverted(arrays, "album_rows", n),
        }
    except (KeyError, ValueError) as exc:
        raise ValueError(f"track lookups: {exc}") from exc


def _sort_order(major: np.ndarray, rows: np.ndarray, priority: np.ndarray | None) -> np.ndarray:
    """``np.lexsort((rows, -priority, major))`` (priority optional), by one int64 argsort when the three
    fit in 63 bits (a 1M catalog: ~4× faster), else by lexsort itself."""
    if not len(rows) or rows.min() < 0 or major.min() < 0:
        return np.lexsort((rows, major)) if priority is None else np.lexsort((rows, -priority, major))
    row_bits = int(rows.max()).bit_length()
    if priority is None:
        pri_bits, pri = 0, np.zeros(len(rows), dtype=np.int64)
    else:
        pri = int(priority.max()) - priority.astype(np.int64)  # descending priority, as non-negative
        pri_bits = int(pri.max()).bit_length() if priority.min() >= -(1 << 40) else 64
    if int(major.max()).bit_length() + pri_bits + row_bits > 63:
        return np.lexsort((rows, major)) if priority is None else np.lexsort((rows, -priority, major))
    key = (major.astype(np.int64) << (pri_bits + row_bits)) | (pri << row_bits) | rows.astype(np.int64)
    return np.argsort(key)  # keys are unique (they hold the row), so any sort gives the same order


def _stable_order(keys: pa.Array) -> np.ndarray:
    """Row order by ``keys`` (code point order; equal keys keep row order, as Arrow's sort is stable)."""
    return pc.sort_indices(keys).to_numpy().astype(np.int64)


def _popular_spread(genre_codes: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Cold-start order: each genre's most popular track, then each genre's second, …

    Within a round, genres are ordered by the popularity of that round's track, so the
    list starts with hits yet no genre gets a second slot before every genre had one.
    """
    rows = np.arange(len(genre_codes), dtype=np.int64)
    pop = popularity.astype(np.int64)
    by_pop = _sort_order(np.zeros(len(rows), dtype=np.int64), rows, pop)  # most popular first, then row
    in_genre = np.argsort(genre_codes[by_pop], kind="stable")
    sorted_codes = genre_codes[by_pop][in_genre]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_codes)) + 1])
    rank = np.empty(len(rows), dtype=np.int64)             # position within its genre, in by_pop order
    rank[by_pop[in_genre]] = np.arange(len(rows)) - np.repeat(starts, np.diff(np.append(starts, len(rows))))
    return _sort_order(rank, rows, pop).astype(np.int32)

