"""JSON routes: recommendations, events, the listener's session, and the song catalog."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import Cookie
from litestar.middleware import DefineMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from litestar.types import Receive, Scope, Send

from musicrec.service import logic
from musicrec.service.answers import AnswerCache
from musicrec.index.browse import BrowseQuery
from musicrec.service.clients import client_id, listener_cookie, remember
from musicrec.service.deps import EngineDep, SessionsDep
from musicrec.service.direct import Direct
from musicrec.index.engine import EngineHolder
from musicrec.service.errors import BadRequest, NotFound, UnsupportedMediaType
from musicrec.service.events import EventSink
from musicrec.service.metrics import ServiceMetrics
from musicrec.service.openapi import API_ERRORS, EXAMPLE_CLIENT, EXAMPLE_TRACK, documented
from musicrec.service.security import raw_header, require_same_origin
from musicrec.service.schemas import (
    EventAccepted, EventIn, EventWithNext, RecommendRequest, RecommendResponse, SessionEventOut, SessionOut, SongDetail,
    SongRecommendation, SongsPage,
)
from musicrec.service.sessions import SessionStore

_encode = msgspec.json.encode
Sort = Literal["-popularity", "popularity", "name", "-name", "artist", "-artist"]


@dataclass(frozen=True, slots=True)
class Serving:
    """The resources the hot routes need, set once on the app's state by the lifespan.

    Why not dependencies: Litestar resolves two or more independent dependencies of a handler
    concurrently, in an anyio task group, and even one costs its kwargs machinery on every
    request, a sizeable share of a cached answer (benchmarks/README.md). These are our own
    objects, so there is nothing to validate or resolve: a handler reads this one object, and
    the current Engine from its holder once (so a swap never mixes versions within a request).
    """

    holder: EngineHolder
    sessions: SessionStore
    events: EventSink
    metrics: ServiceMetrics
    answers: AnswerCache


def serving_of(request: Request) -> Serving:
    return request.app.state.serving


class EncodedJSON(ASGIResponse):
    """An already-encoded JSON answer, sent as it is: the hot routes' response.

    Their answers are bytes already (the answer cache keeps them encoded). A ``Response`` would go
    through Litestar's response building again, and even ``ASGIResponse`` builds a header map per
    request; together a measurable share of a cached answer. A subclass of it, so Litestar sends
    it unchanged and documents the route by its declared ``responses``.
    """

    __slots__ = ("_cookie",)

    def __init__(self, body: bytes, status: int = HTTP_200_OK, cookie: Cookie | None = None) -> None:
        self.body = body
        self.status_code = status
        self._cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(self.body))]
        if self._cookie is not None:
            headers.append(self._cookie.to_encoded_header())
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def encoded(request: Request, body: bytes, client: str, is_new: bool, status: int = HTTP_200_OK) -> EncodedJSON:
    """``body`` with the listener's cookie when we just named them."""
    return EncodedJSON(body, status, listener_cookie(request, client) if is_new else None)


async def json_only(request: Request) -> None:
    """A body declared as something other than JSON is a 415 (no Content-Type is read as JSON).

    A ``before_request`` hook, run before the body is read: Litestar runs a sync guard in a worker
    thread, and even an async guard gets a copy of its route handler on every call, which cost more
    CPU than the rest of a POST /events (benchmarks/README.md)."""
    declared = raw_header(request.scope["headers"], b"content-type")
    if declared is not None:
        media = declared.decode("latin-1").split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType(f"expected a JSON body (Content-Type: application/json), got {media!r}")


SONG = {"id": EXAMPLE_TRACK, "name": "Comedy", "artist": "Gen Hoshino", "genre": "acoustic", "popularity": 73}


SESSION_DOCS = documented("recommendations", listener=True,
                          example=[SONG | {"score": 0.93172, "because": EXAMPLE_TRACK[::-1]}])
SESSION_DOCS["responses"][HTTP_200_OK] = ResponseSpec(list[SongRecommendation], generate_examples=False,
                                                     description="The next tracks, best first")


DIRECT = [DefineMiddleware(Direct)]  # well-formed requests skip Litestar's parameter extraction (musicrec.service.direct)


@get("/api/songs_recommendations", middleware=DIRECT,
     summary="Next tracks for the caller's session (the seed design's contract)", **SESSION_DOCS)
async def songs_recommendations(
    request: Request,
    k: Annotated[int, Parameter(ge=1, le=200, description="how many tracks", examples=[Example(value=20)])] = 20,
    diversity: Annotated[float, Parameter(ge=0.0, le=1.0, description="0: closest first; up to 1: more varied")] = 0.0,
) -> EncodedJSON:
    """Scored from the listener's recent views, likes (weigh more) and skips (push away); a new listener gets
    popular tracks spread across genres. ``because`` is the session track that earned each one."""
    serving = serving_of(request)
    client, is_new = client_id(request)
    events = [] if is_new else await serving.sessions.recent(client)
    started = time.perf_counter()
    body = logic.session_answer(serving.holder.current, serving.answers, events, k, diversity=diversity)
    serving.metrics.session_seconds.observe(time.perf_counter() - started)
    return encoded(request, body, client, is_new)


PLAYLIST_DOCS = documented("recommendations", errors=(*API_ERRORS, 404, 413, 415),
                           body_example={"track_ids": [EXAMPLE_TRACK], "k": 10, "filters": {"genres": ["acoustic"]}},
                           example={"items": [SONG | {"album": "Comedy", "score": 0.93172, "because": EXAMPLE_TRACK}],
                                    "model_version": "20261201T093345Z-e5d67f7b", "unknown_ids": []})
PLAYLIST_DOCS["responses"][HTTP_200_OK] = ResponseSpec(RecommendResponse, generate_examples=False,
                                                      description="The tracks that continue the playlist, best first")


@post("/api/recommendations", status_code=200, before_request=json_only, middleware=DIRECT,
      summary="Playlist continuation from given tracks (stateless)", **PLAYLIST_DOCS)
async def recommendations(request: Request, data: JSONBody[RecommendRequest]) -> EncodedJSON:
    """Every known id is an equally weighted seed; ids the catalog lacks come back in ``unknown_ids`` (404 when
    none is known). Filters still fill ``k``; exclusions and negatives are never returned."""
    serving = serving_of(request)
    started = time.perf_counter()
    answer = _encode(logic.recommend_tracks(serving.holder.current, data))
    serving.metrics.tracks_seconds.observe(time.perf_counter() - started)
    return EncodedJSON(answer)


EVENT_DOCS = documented("events", errors=(*API_ERRORS, 403, 404, 413, 415), listener=True,
                        body_example={"type": "like", "track_id": EXAMPLE_TRACK, "source": "player"},
                        example={"event_id": "9d6b35e368014ed49badbbd0181072eb", "client_id": EXAMPLE_CLIENT,
                                 "type": "like"})
EVENT_DOCS["responses"][HTTP_202_ACCEPTED] = ResponseSpec(EventAccepted, description="The event's receipt",
                                                          generate_examples=False)
EVENT_DOCS["responses"][HTTP_200_OK] = ResponseSpec(
    EventWithNext, description='With "next": k, the receipt and the next k tracks after the event')


@post("/events", status_code=HTTP_202_ACCEPTED, before_request=json_only, middleware=DIRECT,
      summary="Record a view, skip or like; with \"next\": k, also answer the next k tracks (200)", **EVENT_DOCS)
async def post_event(request: Request, data: JSONBody[EventIn]) -> EncodedJSON:
    """Goes into the listener's session at once (the next recommendation sees it) and onto the event stream
    (Kafka) for retraining. The listener is the header's, else the cookie's, else the body's ``client_id``.
    With ``"next": k`` the answer is 200 with the receipt and ``next``: what /api/songs_recommendations?k=k
    answers right after the event, so a player needs one round trip per played track."""
    serving = serving_of(request)
    engine = serving.holder.current
    kind = logic.normalise_event_type(data.type)
    require_same_origin(request)
    client, is_new = client_id(request, data.client_id)
    if data.track_id not in engine.tracks.row_of:
        raise NotFound(f"no track with id {data.track_id!r}")
    event = logic.make_event(engine, kind=kind, track_id=data.track_id, client_id=client, ts=data.ts,
                               source=data.source, position=data.position)
    receipt = EventAccepted(event.event_id, client, kind)
    if data.next is None:
        await serving.sessions.append(client, logic.session_event(event))
        serving.events.publish(event)
        return encoded(request, _encode(receipt), client, is_new, HTTP_202_ACCEPTED)
    events = await serving.sessions.append_recent(client, logic.session_event(event))
    serving.events.publish(event)
    started = time.perf_counter()
    body = logic.event_with_next(receipt, logic.session_answer(engine, serving.answers, events, data.next))
    serving.metrics.session_seconds.observe(time.perf_counter() - started)
    return encoded(request, body, client, is_new)


@get("/api/session", summary="The caller's recent events, newest first",
     **documented("session", listener=True, example={"client_id": EXAMPLE_CLIENT, "events": [
         {"type": "like", "track_id": EXAMPLE_TRACK, "ts": 1796117687.5, "name": "Comedy"}]}))
async def get_session(request: Request, engine: EngineDep, sessions: SessionsDep) -> Response[SessionOut]:
    """At most ``SESSION_LEN`` events, for ``SESSION_TTL_S`` after the last one; ``name`` is null for a track
    the served version no longer has."""
    client, is_new = client_id(request)
    recent = [] if is_new else await sessions.recent(client)
    t = engine.tracks
    out = [SessionEventOut(e.type, e.track_id, e.ts, t.name[r] if (r := t.row_of.get(e.track_id)) is not None else None)
           for e in recent]
    return remember(request, Response(SessionOut(client, out)), client, is_new)


@delete("/api/session", status_code=HTTP_204_NO_CONTENT, summary="Forget the caller's session",
        **documented("session", errors=(*API_ERRORS, 403), listener=True))
async def delete_session(request: Request, sessions: SessionsDep) -> None:
    """The next recommendation starts from nothing (popular tracks); events already sent to Kafka stay there."""
    require_same_origin(request)
    client, is_new = client_id(request)
    if not is_new:
        await sessions.clear(client)


@get("/api/songs", summary="Search, filter, sort and page the catalog",
     **documented("catalog", example={"items": [SONG | {"artists": ["Gen Hoshino"], "album": "Comedy",
                                                        "genres": ["acoustic", "j-pop"], "explicit": False}],
                                      "total": 1, "page": 1, "per_page": 20}))
async def list_songs(
    engine: EngineDep,
    q: Annotated[str, Parameter(max_length=200)] = "",
    genre: Annotated[str | None, Parameter(max_length=100)] = None,
    explicit: FromQuery[bool | None] = None,
    min_popularity: Annotated[int, Parameter(ge=0, le=100)] = 0,
    max_popularity: Annotated[int, Parameter(ge=0, le=100)] = 100,
    sort: FromQuery[Sort] = "-popularity",
    page: Annotated[int, Parameter(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Parameter(ge=1, le=100)] = 20,
) -> SongsPage:
    """``q`` matches words of the name, artists and album; ``genre`` must be one the catalog has (else 400)."""
    if genre and genre not in engine.tracks.genre_rows:
        raise BadRequest(f"unknown genre {genre!r}")
    if min_popularity > max_popularity:
        raise BadRequest("min_popularity must not exceed max_popularity")
    rows, total = engine.browser.search(BrowseQuery(q, genre or None, explicit, min_popularity, max_popularity,
                                                    sort, page, per_page))
    return SongsPage([logic.song(engine, int(r)) for r in rows], total, page, per_page)


@get("/api/songs/{track_id:str}", summary="One track with its audio features",
     **documented("catalog", errors=(*API_ERRORS, 404), example=SONG | {
         "artists": ["Gen Hoshino"], "album": "Comedy", "genres": ["acoustic", "j-pop"], "explicit": False,
         "features": {"danceability": 0.676, "energy": 0.461, "tempo": 87.917}, "duration_ms": 230666}))
async def get_song(track_id: FromPath[str], engine: EngineDep) -> SongDetail:
    """``features`` are the raw values the model was trained on, by name (the version's feature order)."""
    return logic.song_detail(engine, track_id)


ROUTES = [songs_recommendations, recommendations, post_event, get_session, delete_session, list_songs, get_song]
