"""Recommendation quality on pseudo-playlists drawn from a real catalog.

We have no human playlists, so we build three kinds from the 114k file's genre and
artist structure and hold part of each out; a method is scored on how many held-out
tracks it returns in its top 50 (recall@50), or how on-genre its answer is:

* ``artist-mix``   5 artists of one genre, 3 tracks each: 2 seed + 1 held out per artist
                   (a curated playlist's usual shape: artists repeat).
* ``new-artist``   4 artists × 3 seed tracks, plus a 5th artist of the same genre whose
                   3 tracks are all held out (only content can find those).
* ``genre``        10 random tracks of one genre; precision@20 = share of the answer in
                   that genre (does the affinity term pull the answer off-style?).

`python -m benchmarks.quality --artifacts artifacts [--playlists 300]` prints one row per
artist_weight; the service's default comes from this table (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from musicrec.index.artifacts import load_artifacts
from musicrec.index.catalog import TrackTable
from musicrec.index.recommend import Query, Recommender, ScoringParams, Seed

WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Playlist:
    seeds: list[int]
    held_out: list[int]
    genre: str


def _artists_by_genre(tracks: TrackTable, min_tracks: int) -> dict[str, list[np.ndarray]]:
    """genre → artist track-row arrays (rows whose primary genre is that genre, distinct songs)."""
    out: dict[str, list[np.ndarray]] = {}
    for artist, rows in tracks.artist_rows.items():
        rows = rows[tracks.artist[rows] == artist]  # primary artist only
        _, first = np.unique(tracks.song_key[rows], return_index=True)
        rows = rows[np.sort(first)]
        if len(rows) < min_tracks:
            continue
        genre = tracks.genre[rows[0]]
        rows = rows[tracks.genre[rows] == genre]
        if len(rows) >= min_tracks:
            out.setdefault(genre, []).append(rows)
    return out


def make_playlists(tracks: TrackTable, kind: str, n: int, seed: int) -> list[Playlist]:
    rng = np.random.default_rng(seed)
    playlists: list[Playlist] = []
    if kind == "genre":
        genres = sorted(g for g, rows in tracks.genre_rows.items() if len(rows) >= 10)
        for _ in range(n):
            g = genres[rng.integers(len(genres))]
            rows = tracks.genre_rows[g]
            playlists.append(Playlist(list(rng.choice(rows, 10, replace=False)), [], g))
        return playlists
    pool = {g: a for g, a in _artists_by_genre(tracks, 3).items() if len(a) >= 5}
    genres = sorted(pool)
    for _ in range(n):
        g = genres[rng.integers(len(genres))]
        chosen = [pool[g][i] for i in rng.choice(len(pool[g]), 5, replace=False)]
        picks = [rng.choice(rows, 3, replace=False) for rows in chosen]
        if kind == "artist-mix":
            seeds = [int(r) for p in picks for r in p[:2]]
            held = [int(p[2]) for p in picks]
        else:
            seeds = [int(r) for p in picks[:4] for r in p]
            held = [int(r) for r in picks[4]]
        playlists.append(Playlist(seeds, held, g))
    return playlists


def evaluate(rec: Recommender, playlists: list[Playlist], kind: str, artist_weight: float) -> float:
    k = 20 if kind == "genre" else 50
    scores = []
    for p in playlists:
        hits = rec.recommend(Query(seeds=[Seed(r, 1.0) for r in p.seeds], k=k, artist_weight=artist_weight))
        rows = [h.row for h in hits]
        if kind == "genre":
            scores.append(np.mean([p.genre in rec.tracks.genres[r].split("|") for r in rows]))
        else:
            held_songs = set(rec.tracks.song_key[p.held_out].tolist())
            scores.append(len(held_songs & set(rec.tracks.song_key[rows].tolist())) / len(held_songs))
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--playlists", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    artifacts = load_artifacts(args.artifacts)
    rec = Recommender(artifacts.embeddings, artifacts.index, artifacts.tracks, ScoringParams())
    kinds = ("artist-mix", "new-artist", "genre")
    sets = {kind: make_playlists(artifacts.tracks, kind, args.playlists, args.seed) for kind in kinds}
    print(f"catalog {artifacts.model_version}: {len(artifacts.tracks)} tracks, {args.playlists} playlists per kind, "
          f"seed {args.seed}")
    print(f"{'artist_weight':>13} | {'artist-mix R@50':>15} | {'new-artist R@50':>15} | {'genre P@20':>10} | {'ms/query':>8}")
    for weight in WEIGHTS:
        started = time.perf_counter()
        row = [evaluate(rec, sets[kind], kind, weight) for kind in kinds]
        ms = (time.perf_counter() - started) * 1000 / (len(kinds) * args.playlists)
        print(f"{weight:>13.2f} | {row[0]:>15.4f} | {row[1]:>15.4f} | {row[2]:>10.4f} | {ms:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
