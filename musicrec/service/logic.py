"""What the routes do, without HTTP: resolve ids, build scoring queries, shape answers."""
from __future__ import annotations

import time
from typing import Iterator, Sequence

import msgspec

from musicrec.service.answers import AnswerCache, answer_key
from musicrec.service.clients import random_id
from musicrec.index.engine import Engine
from musicrec.service.errors import BadRequest, NotFound
from musicrec.service.schemas import (
    EventAccepted, FiltersIn, RecommendedTrack, RecommendRequest, RecommendResponse, Song, SongDetail, SongRecommendation,
)
from musicrec.service.sessions import SessionEvent
from musicrec.data.events import EVENT_TYPES, TYPE_ALIASES, Event
from musicrec.index.recommend import Filters, Query, Ranked, Seed, seeds_from_events

_encode = msgspec.json.encode


def normalise_event_type(kind: str) -> str:
    kind = TYPE_ALIASES.get(kind, kind)
    if kind not in EVENT_TYPES:
        raise BadRequest(f"unknown event type {kind!r}; expected one of {', '.join(EVENT_TYPES)} "
                         f"(or {', '.join(TYPE_ALIASES)})")
    return kind


def to_filters(engine: Engine, raw: FiltersIn) -> Filters:
    unknown = sorted(set(raw.genres) - engine.tracks.genre_rows.keys())
    if unknown:
        raise BadRequest(f"unknown genre(s): {', '.join(unknown[:10])}", known=engine.tracks.genre_names[:200])
    if raw.min_popularity > raw.max_popularity:
        raise BadRequest("filters.min_popularity must not exceed filters.max_popularity")
    return Filters(frozenset(raw.genres), raw.explicit, raw.min_popularity, raw.max_popularity)


def song(engine: Engine, row: int) -> Song:
    t = engine.tracks
    return Song(
        id=t.ids[row], name=t.name[row], artist=t.artist[row], artists=[a for a in t.artists[row].split(";") if a],
        album=t.album[row], genre=t.genre[row], genres=t.genres[row].split("|"),
        popularity=int(t.popularity[row]), explicit=bool(t.explicit[row]),
    )


def song_detail(engine: Engine, track_id: str) -> SongDetail:
    t = engine.tracks
    row = t.row_of.get(track_id)
    if row is None:
        raise NotFound(f"no track with id {track_id!r}")
    features = {name: float(v) for name, v in zip(t.feature_names, t.features[row].tolist())}
    duration = features.get("duration_ms")
    base = song(engine, row)
    return SongDetail(**{f: getattr(base, f) for f in base.__struct_fields__}, features=features,
                      duration_ms=int(duration) if duration is not None else None)


def resolve_rows(engine: Engine, ids: Sequence[str]) -> tuple[list[int], list[str]]:
    row_of = engine.tracks.row_of
    rows, unknown = [], []
    for track_id in ids:
        row = row_of.get(track_id)
        (unknown.append(track_id) if row is None else rows.append(row))
    return rows, unknown


def _because_ids(engine: Engine, because: list[int]) -> list[str | None]:
    ids = engine.tracks.ids
    return ids.take(because).tolist() if because and min(because) >= 0 else \
        [ids[b] if b >= 0 else None for b in because]


def _answer_columns(engine: Engine, ranked: Ranked, fields: Sequence[str]) -> Iterator[tuple]:
    """Per answered track: the track table's ``fields``, then score, ``because`` id and reason.

    Gathered as whole columns, not read track by track (the hot path)."""
    t, rows = engine.tracks, ranked.rows
    return zip(*(getattr(t, name).take(rows).tolist() for name in fields), ranked.scores,
               _because_ids(engine, ranked.because), ranked.reasons)


def _recommended(engine: Engine, ranked: Ranked) -> list[RecommendedTrack]:
    return [RecommendedTrack(id=i, name=n, artist=a, album=al, genre=g, popularity=p, score=round(s, 6), because=b,
                             reason=why)
            for i, n, a, al, g, p, s, b, why in _answer_columns(
                engine, ranked, ("ids", "name", "artist", "album", "genre", "popularity"))]


def recommend_tracks(engine: Engine, req: RecommendRequest) -> RecommendResponse:
    """Stateless playlist continuation: every given track is an equally weighted seed."""
    rows, unknown = resolve_rows(engine, req.track_ids)
    if not rows:
        raise NotFound("none of the given track_ids is in the catalog", unknown_ids=unknown)
    negatives, _ = resolve_rows(engine, req.negative_ids)
    exclude, _ = resolve_rows(engine, req.exclude_ids)
    seeds = [Seed(r, 1.0) for r in dict.fromkeys(rows)]
    query = Query(seeds=seeds, k=req.k, negatives=negatives, exclude=exclude, filters=to_filters(engine, req.filters),
                  diversity=req.diversity, artist_weight=req.artist_weight)
    return RecommendResponse(_recommended(engine, engine.recommender.rank(query)), engine.model_version, unknown)


def recommend_session(engine: Engine, events: Sequence[SessionEvent], k: int, *, diversity: float = 0.0) -> list[SongRecommendation]:
    """The listener's next tracks from their recent events (newest first); popular ones when empty."""
    session = seeds_from_events(((e.type, e.track_id) for e in events), engine.tracks.row_of, engine.recommender.params)
    query = Query(seeds=session.seeds, k=k, negatives=session.negatives, exclude=session.seen, diversity=diversity)
    # Built directly from the columns, not via Hits or RecommendedTrack (the hot path).
    return [SongRecommendation(i, n, a, g, p, round(s, 6), b, why) for i, n, a, g, p, s, b, why in _answer_columns(
        engine, engine.recommender.rank(query), ("ids", "name", "artist", "genre", "popularity"))]


def session_answer(engine: Engine, answers: AnswerCache, events: Sequence[SessionEvent], k: int, *,
                   diversity: float = 0.0) -> bytes:
    """``recommend_session`` as JSON, from the answer cache when this exact session was answered before."""
    key = answer_key(engine.model_version, events, k, diversity)
    return answers.get_or_compute(key, lambda: _encode(recommend_session(engine, events, k, diversity=diversity)))


def event_with_next(receipt: EventAccepted, answer: bytes) -> bytes:
    """``EventWithNext`` as JSON, around the already-encoded answer (cached or not) instead of re-encoding it."""
    return b"".join((_encode(receipt)[:-1], b',"next":', answer, b"}"))


def make_event(engine: Engine, *, kind: str, track_id: str, client_id: str, ts: float | None,
               source: str | None, position: float | None) -> Event:
    return Event(event_id=random_id(), type=kind, track_id=track_id, ts=ts if ts is not None else time.time(),
                 source=source, client_id=client_id, position=position, model_version=engine.model_version)


def session_event(event: Event) -> SessionEvent:
    return SessionEvent(type=event.type, track_id=event.track_id, ts=event.ts)
