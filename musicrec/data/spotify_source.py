"""Spotify playlists → a Catalog, for ``python -m musicrec.indexer build --spotify-playlist URL_OR_ID``.

Fetches every playlist's tracks (paged), their first artists (for genres) and their audio
features, writes what it fetched as a CSV snapshot (so the manifest records the exact input
and its checksum), and cleans it with ``musicrec.data.loader.catalog_from_frame`` like any CSV.

Spotify closed ``audio-features`` to new apps on 2024-11-27, so a 403 there is the usual
answer: each track then takes its features from the local catalog (``--csv``, or
data/dataset.csv) when that has its id, and a track with no features from either is left
out of the build and named in the report (it cannot be embedded).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from musicrec.data.spotify import SpotifyClient, SpotifyConfig, SpotifyError, playlist_id
from musicrec.data.loader import Catalog, catalog_from_frame
from musicrec.data.schema import FEATURES, DataError

log = logging.getLogger(__name__)
WHERE = "spotify"


@dataclass
class FetchReport:
    playlists: list[str]
    tracks: int = 0                          # distinct tracks found in the playlists
    features_forbidden: bool = False         # audio-features answered 403
    from_spotify: int = 0
    from_local: int = 0
    without_features: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, artist), left out

    def lines(self) -> list[str]:
        out = [f"spotify: {len(self.playlists)} playlist(s), {self.tracks} distinct tracks"]
        if self.features_forbidden:
            out.append("spotify: audio-features answered 403 (closed to new apps since 2024-11-27): "
                       "features taken from the local catalog where it has the track")
        out.append(f"spotify: features from Spotify for {self.from_spotify} track(s), "
                   f"from the local catalog for {self.from_local}")
        if self.without_features:
            names = "; ".join(f"{i} ({n} — {a})" for i, n, a in self.without_features[:10])
            more = f"; and {len(self.without_features) - 10} more" if len(self.without_features) > 10 else ""
            out.append(f"spotify: {len(self.without_features)} track(s) have no audio features and were left out "
                       f"of the build: {names}{more}")
        return out


def _row(track: Mapping[str, Any], genres: Mapping[str, list[str]]) -> dict[str, Any]:
    artists = [a for a in track.get("artists") or [] if a]
    first = artists[0].get("id") if artists else None
    genre = (genres.get(first) or [""])[0] if first else ""
    return {
        "track_id": track["id"],
        "track_name": track.get("name") or "",
        "artists": ";".join(a.get("name") or "" for a in artists),
        "album_name": (track.get("album") or {}).get("name") or "",
        "popularity": track.get("popularity"),
        "explicit": bool(track.get("explicit")),
        "track_genre": genre,
        "duration_ms": track.get("duration_ms"),
    }


def fetch_frame(client: SpotifyClient, playlists: list[str], local: Catalog | None = None
                ) -> tuple[pd.DataFrame, FetchReport]:
    """One row per distinct track that has features, in the loader's 114k spelling, and the report."""
    report = FetchReport(playlists=[playlist_id(p) for p in playlists])
    tracks: dict[str, Mapping[str, Any]] = {}
    for pid in report.playlists:
        for track in client.playlist_tracks(pid):
            tracks.setdefault(track["id"], track)
    report.tracks = len(tracks)
    if not tracks:
        raise DataError(WHERE, f"the playlist(s) {', '.join(report.playlists)} hold no tracks")
    first_artists = [a["id"] for t in tracks.values() for a in (t.get("artists") or [])[:1] if a and a.get("id")]
    try:
        genres = {i: list(a.get("genres") or []) for i, a in client.artists(first_artists).items()}
    except SpotifyError as exc:  # genres only label tracks; the build goes on without them
        log.warning("spotify: artist genres unavailable (%s); tracks get no genre", exc)
        genres = {}
    features = client.audio_features(list(tracks))
    report.features_forbidden = features.forbidden
    local_features = _local_features(local)
    rows = []
    for track_id, track in tracks.items():
        row = _row(track, genres)
        found = features.by_id.get(track_id)
        if found:
            report.from_spotify += 1
            row |= found
        elif track_id in local_features:
            report.from_local += 1
            row |= local_features[track_id]
        else:
            artist = row["artists"].split(";")[0]
            report.without_features.append((track_id, row["track_name"], artist))
            continue
        rows.append(row)
    return pd.DataFrame(rows, columns=_columns(rows)), report


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    head = ["track_id", "artists", "album_name", "track_name", "popularity", "duration_ms", "explicit"]
    present = {k for r in rows for k in r}
    return head + [f for f in FEATURES if f in present and f != "duration_ms"] + ["track_genre"]


def _local_features(local: Catalog | None) -> dict[str, dict[str, float]]:
    if local is None:
        return {}
    frame = local.tracks
    values = frame[local.features].to_numpy(dtype=np.float64)
    return {i: dict(zip(local.features, row)) for i, row in zip(frame["id"].tolist(), values.tolist())}


def load_spotify_catalog(playlists: list[str], *, config: SpotifyConfig | None = None, snapshot: Path,
                         local_csv: Path | None = None, client: SpotifyClient | None = None) -> tuple[Catalog, FetchReport]:
    """Fetch, snapshot to ``snapshot`` (CSV) and clean. Spotify failures become one-line DataErrors."""
    local = None
    if local_csv is not None:
        from musicrec.data.loader import load_csv

        local = load_csv(local_csv)
    try:
        if client is None:
            if config is None:
                raise ValueError("give the Spotify config or a client")
            client = SpotifyClient(config)
        frame, report = fetch_frame(client, playlists, local)
    except ValueError as exc:
        raise DataError(WHERE, str(exc)) from None
    except SpotifyError as exc:
        raise DataError(WHERE, str(exc)) from None
    if frame.empty:
        raise DataError(WHERE, f"none of the {report.tracks} track(s) has audio features: Spotify "
                        + ("refused them (403)" if report.features_forbidden else "had none")
                        + (" and the local catalog has none of them" if local is not None
                           else "; pass --csv with a local catalog that has these ids"))
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(snapshot, index=False)
    catalog = catalog_from_frame(frame, source=str(snapshot), demo=False)
    notes = [line for line in report.lines()[1:] if "left out" in line or "403" in line]
    catalog = dataclasses.replace(catalog, report=dataclasses.replace(catalog.report,
                                                                      warnings=[*catalog.report.warnings, *notes]))
    return catalog, report
