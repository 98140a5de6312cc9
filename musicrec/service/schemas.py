"""msgspec structs at the API edge: what callers send and what they get back.

Constraints live here (Meta), so Litestar rejects bad input with a 400 before any
handler runs; handlers only ever see well-typed values.
"""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

ClientId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="1–64 chars of [A-Za-z0-9_-]")]
TrackId = Annotated[str, Meta(min_length=1, max_length=64)]
Popularity = Annotated[int, Meta(ge=0, le=100)]
K = Annotated[int, Meta(ge=1, le=200)]


class FiltersIn(Struct, forbid_unknown_fields=True):
    genres: Annotated[list[str], Meta(max_length=200)] = []
    explicit: bool | None = None
    min_popularity: Popularity = 0
    max_popularity: Popularity = 100


class RecommendRequest(Struct, forbid_unknown_fields=True):
    track_ids: Annotated[list[TrackId], Meta(min_length=1, max_length=100)]
    k: K = 20
    exclude_ids: Annotated[list[TrackId], Meta(max_length=1000)] = []
    negative_ids: Annotated[list[TrackId], Meta(max_length=100)] = []
    filters: FiltersIn = msgspec.field(default_factory=FiltersIn)
    diversity: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    artist_weight: Annotated[float, Meta(ge=0.0, le=10.0)] | None = None


Reason = Literal["co-listened", "same artist", "sounds like", "popular"]
"""Why a track is recommended: listeners played it with ``because``, it shares an artist or album
with it, it sounds like it (audio features), or (no seed) it is popular."""


class RecommendedTrack(Struct):
    id: str
    name: str
    artist: str
    album: str
    genre: str
    popularity: int
    score: float
    because: str | None
    reason: Reason


class RecommendResponse(Struct):
    items: list[RecommendedTrack]
    model_version: str
    unknown_ids: list[str]


class SongRecommendation(Struct):
    """The seed design's contract for /api/songs_recommendations, plus score, because and reason."""

    id: str
    name: str
    artist: str
    genre: str
    popularity: int
    score: float
    because: str | None
    reason: Reason


EventType = Literal["track_view", "skip", "like", "track_view_offline", "track_view_online"]
"""The event types a client may send: musicrec.data.events.EVENT_TYPES and the seed dataset's two spellings
of a view (TYPE_ALIASES), which are recorded as track_view. An enum in the OpenAPI document."""


class EventIn(Struct, forbid_unknown_fields=True):
    type: EventType
    track_id: TrackId
    position: Annotated[float, Meta(ge=0.0, le=86_400.0)] | None = None
    source: Annotated[str, Meta(max_length=64)] | None = None
    ts: Annotated[float, Meta(ge=0.0, le=4_102_444_800.0)] | None = None
    client_id: ClientId | None = None
    next: K | None = None
    """Also answer the ``next`` tracks after this event (200 with ``EventWithNext``): one round trip per play."""


class EventAccepted(Struct):
    event_id: str
    client_id: str
    type: str


class EventWithNext(EventAccepted):
    """The receipt and what /api/songs_recommendations would answer right after the event."""

    next: list[SongRecommendation]


class SessionEventOut(Struct):
    type: str
    track_id: str
    ts: float
    name: str | None


class SessionOut(Struct):
    client_id: str
    events: list[SessionEventOut]


class Song(Struct):
    id: str
    name: str
    artist: str
    artists: list[str]
    album: str
    genre: str
    genres: list[str]
    popularity: int
    explicit: bool


class SongDetail(Song):
    features: dict[str, float]
    duration_ms: int | None


class SongsPage(Struct):
    items: list[Song]
    total: int
    page: int
    per_page: int


class ErrorBody(Struct):
    """Every error's JSON body (musicrec.service.errors); declared for each error status in the OpenAPI document."""

    status_code: int
    detail: str
    extra: dict[str, object] | list[object] | None = None
