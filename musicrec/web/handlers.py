"""Server-rendered pages: home, the song list and a song's page, usable without JavaScript.

Pages read and write the listener's session exactly as the JSON API does (same client id
cookie, same ``logic.make_event`` path), so a like pressed here changes what
``/api/songs_recommendations`` answers. Bad query values are clamped (page, per_page,
popularity) or answered with an HTML 400 page (unknown genre); every error under these
routes is an HTML page worded by the one mapping in musicrec/service/errors.py, while
``/api/*`` keeps its JSON errors. What the templates print is shaped in views.py.

The one piece of script (``static/app.js``) turns like/skip into ``fetch("/events")`` and
swaps in a fresh ``/partials/session`` fragment; without it the same buttons post a form
and come back through a 303.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, urlencode

import anyio
from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Redirect, Template

from musicrec.data.spotify import SpotifyError
from musicrec.index.engine import Engine
from musicrec.index.recommend import Query, Seed, seeds_from_events
from musicrec.service import logic
from musicrec.service.clients import client_id, random_id, remember
from musicrec.service.security import Security, is_same_site_navigation, require_same_origin
from musicrec.service.deps import EngineDep, EventsDep, SessionsDep
from musicrec.service.errors import BadRequest, DomainError, NotFound, Unauthorized, describe, from_spotify, log_server_error
from musicrec.service.events import EventSink
from musicrec.service.online import place
from musicrec.service.sessions import SessionEvent, SessionStore
from musicrec.web.charts import duration_text, feature_chart, feature_rows, scale_for
from musicrec.web.views import (
    PER_PAGE_CHOICES, SORT_LABELS, Group, ListState, TrackView, artist_links, card, features_note, hit_cards,
    online_view, pager, recent_items, session_actions, song_href,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SOURCE = "song_page"
MORE_LIKE_THIS = 10
FOR_YOU = 8
HOME_RECS = 24
NO_STORE = {"Cache-Control": "no-store"}  # pages carry the listener's own session


# -- helpers --------------------------------------------------------------------------------------

def listener(request: Request) -> tuple[str, bool]:
    """The client id as the API reads it; an id the caller may not use is replaced by a fresh one, not an error page."""
    try:
        return client_id(request)
    except (BadRequest, Unauthorized):
        return random_id(), True


@functools.cache
def static_version() -> str:
    """A short hash of the static files, appended to their URLs so browsers refetch after a change."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.glob("*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def base_context(app_state: State, engine: Engine | None, /, **extra: Any) -> dict[str, Any]:
    settings = app_state.get("settings")
    manifest = engine.artifacts.manifest if engine is not None else None
    return {
        "demo": bool(manifest and manifest.demo),
        "n_tracks": manifest.n_tracks if manifest else None,
        "model_version": manifest.model_version if manifest else None,
        "mode": getattr(settings, "mode", "offline"),
        "static_version": static_version(),
        "q": "",
    } | extra


def page(request: Request, engine: Engine | None, template: str, /, *, status_code: int = 200,
         headers: Mapping[str, str] | None = None, **context: Any) -> Template:
    return Template(template_name=template, context=base_context(request.app.state, engine, **context),
                    status_code=status_code, headers={**NO_STORE, **(headers or {})}, media_type=MediaType.HTML)


def error_page(request: Request, status_code: int, title: str, message: str, *,
               headers: Mapping[str, str] | None = None) -> Template:
    holder = request.app.state.get("holder")
    return page(request, holder.current if holder is not None else None, "error.html", status_code=status_code,
                headers=headers, title=title, message=message, status=status_code)


# -- the song list --------------------------------------------------------------------------------

@get("/songs", name="songs_page", summary="Song list page")
async def songs_page(request: Request, engine: EngineDep) -> Template:
    state = ListState.parse(request.query_params)
    genres = engine.tracks.genre_names
    context: dict[str, Any] = {"state": state, "genres": genres, "sorts": SORT_LABELS, "per_page_choices": PER_PAGE_CHOICES,
                               "q": state.q}
    if state.genre and state.genre not in engine.tracks.genre_rows:
        return page(request, engine, "songs.html", status_code=400, items=[], pager=None,
                    error=f"There is no genre called “{state.genre}”. Pick one from the list.", **context)
    rows, total = engine.browser.search(state.query())
    last = max(1, math.ceil(total / state.per_page))
    if state.page > last:  # past the end: show the last page rather than an empty one
        state = ListState(**{**state.__dict__, "page": last})
        rows, total = engine.browser.search(state.query())
        context["state"] = state
    items = [card(engine, int(r), genre=state.genre or None) for r in rows]
    return page(request, engine, "songs.html", items=items, pager=pager(state, total), error=None, **context)


# -- home -----------------------------------------------------------------------------------------

@get("/", name="home_page", summary="Home page")
async def home_page(request: Request, engine: EngineDep, sessions: SessionsDep) -> Template:
    client, is_new = listener(request)
    recent = [] if is_new else await sessions.recent(client)
    hits = engine.recommender.recommend(_session_query(engine, recent, HOME_RECS))
    groups: dict[int, list] = {}
    for h in hits:
        groups.setdefault(h.because, []).append(card(engine, h.row, h.reason))
    actions = session_actions(recent)
    ids = engine.tracks.ids
    shaped = [Group(card(engine, seed) if seed >= 0 else None, items,
                    "liked" if seed >= 0 and actions.get(str(ids[seed])) == "like" else "played")
              for seed, items in groups.items()]
    response = page(request, engine, "home.html", groups=shaped, recent=recent_items(engine, recent),
                    new_listener=not recent)
    return remember(request, response, client, is_new)


def _session_query(engine: Engine, recent: list[SessionEvent], k: int) -> Query:
    """The same query ``logic.recommend_session`` builds, kept as hits so pages can group by seed."""
    session = seeds_from_events(((e.type, e.track_id) for e in recent), engine.tracks.row_of, engine.recommender.params)
    return Query(seeds=session.seeds, k=k, negatives=session.negatives, exclude=session.seen)


# -- a song ---------------------------------------------------------------------------------------

def _session_panel(engine: Engine, recent: list[SessionEvent], current: str | None) -> dict[str, Any]:
    hits = engine.recommender.recommend(_session_query(engine, recent, FOR_YOU))
    src = "/partials/session" + (f"?{urlencode({'current': current})}" if current else "")
    return {"for_you": hit_cards(engine, hits, with_because=True, actions=session_actions(recent)),
            "recent": recent_items(engine, recent, 8),
            "current": current, "src": src}


async def record(engine: Engine, sessions: SessionStore, events: EventSink, *, kind: str, track_id: str,
                 client: str) -> None:
    """The same path as ``POST /events``: into the session, then onto the event stream."""
    event = logic.make_event(engine, kind=kind, track_id=track_id, client_id=client, ts=None, source=SOURCE,
                             position=None)
    await sessions.append(client, logic.session_event(event))
    events.publish(event)


@get("/songs/{track_id:str}", name="song_page", summary="A song's page (records a track_view)")
async def song_page(request: Request, track_id: FromPath[str], engine: EngineDep, sessions: SessionsDep,
                    events: EventsDep) -> Template:
    client, is_new = listener(request)
    row = engine.tracks.row_of.get(track_id)
    if row is None:
        return remember(request, await _outside_song(request, engine, track_id), client, is_new)
    recorded = request.query_params.get("recorded")
    record_view_by_script = False
    if recorded not in ("like", "skip"):  # after a no-script like/skip we come back here: not a new view
        security: Security = request.app.state.security
        if is_same_site_navigation(request, security.trusted_origins):
            await record(engine, sessions, events, kind="track_view", track_id=track_id, client=client)
        else:  # another site sent the browser here: only the page's own script (same-origin) records the view
            record_view_by_script = True
        recorded = None
    detail = logic.song_detail(engine, track_id)
    recent = await sessions.recent(client)
    rows = feature_rows(scale_for(engine), detail.features)
    more = engine.recommender.recommend(Query(seeds=[Seed(row, 1.0)], k=MORE_LIKE_THIS))
    track = TrackView(
        id=detail.id, href=song_href(detail.id), name=detail.name, artists=artist_links(detail.artists), album=detail.album,
        album_url=ListState(q=detail.album).url() if detail.album else None,
        genres=[(g, ListState(genre=g).url()) for g in detail.genres if g], popularity=detail.popularity,
        explicit=detail.explicit, duration=duration_text(detail.duration_ms),
        spotify_url="https://open.spotify.com/track/" + quote(detail.id, safe=""),
    )
    response = page(request, engine, "song.html", track=track, source="catalog", q="",
                    chart=feature_chart(rows, f"Audio features of {detail.name}"), feature_rows=rows,
                    features_note=None, more=hit_cards(engine, more), recorded=recorded,
                    panel=_session_panel(engine, recent, track_id), same_song=None,
                    record_view_by_script=record_view_by_script)
    return remember(request, response, client, is_new)


async def _outside_song(request: Request, engine: Engine, track_id: str) -> Template:
    """An id the catalog lacks: a 404 page, or in online mode the track as Spotify describes it."""
    online = request.app.state.get("online")
    if online is None:
        raise NotFound(f"There is no song with the id “{track_id}” in this catalog.", title="Song not found")
    try:
        track = await online.lookup(track_id)
    except SpotifyError as exc:
        raise from_spotify(exc, track_id) from exc
    placement = await anyio.to_thread.run_sync(place, engine, track, MORE_LIKE_THIS)
    rows = feature_rows(scale_for(engine), placement.features) if placement.features else []
    return page(request, engine, "song.html", track=online_view(track), source="spotify",
                chart=feature_chart(rows, f"Audio features of {track.name}") if rows else None, feature_rows=rows,
                features_note=features_note(track, placement.source), more=hit_cards(engine, placement.hits),
                recorded=None, panel=None,
                same_song=card(engine, placement.catalog_row) if placement.catalog_row is not None else None)


# -- like / skip ----------------------------------------------------------------------------------

@post("/songs/{track_id:str}/feedback", name="song_feedback", status_code=303,
      summary="Like or skip from a form (the no-script path of the like/skip buttons)")
async def song_feedback(request: Request, track_id: FromPath[str], engine: EngineDep, sessions: SessionsDep,
                        events: EventsDep) -> Response:
    form = await request.form()
    kind = str(form.get("type", ""))
    if kind not in ("like", "skip"):
        raise BadRequest("A song can be liked or skipped.", title="Unknown action")
    if track_id not in engine.tracks.row_of:
        raise NotFound(f"There is no song with the id “{track_id}” in this catalog.", title="Song not found")
    require_same_origin(request)
    client, is_new = listener(request)
    await record(engine, sessions, events, kind=kind, track_id=track_id, client=client)
    return remember(request, Redirect(f"{song_href(track_id)}?recorded={kind}#for-you", status_code=303), client,
                    is_new)


@get("/partials/session", name="session_partial", summary="The 'for you now' and recent-tracks fragment")
async def session_partial(request: Request, engine: EngineDep, sessions: SessionsDep) -> Template:
    client, is_new = listener(request)
    recent = [] if is_new else await sessions.recent(client)
    current = request.query_params.get("current")
    return remember(request, page(request, engine, "_session_panel.html",
                                  panel=_session_panel(engine, recent, current)), client, is_new)


# -- errors under these routes are pages too ------------------------------------------------------

def page_error(request: Request, exc: Exception) -> Response:
    """Any error under the page routes as an HTML page, worded by the one mapping (errors.describe)."""
    view = describe(exc)
    if not isinstance(exc, (DomainError, HTTPException)):
        log.exception("unhandled error on page %s %s", request.method, request.url.path)
        return error_page(request, 500, view.title, "The page could not be shown. Please try again.")
    log_server_error(request, exc)  # every 5xx, with its traceback
    return error_page(request, view.status, view.title, view.detail, headers=view.headers)


PAGE_ERRORS = {DomainError: page_error, HTTPException: page_error, Exception: page_error}

ROUTES = [Router(path="/", route_handlers=[home_page, songs_page, song_page, song_feedback, session_partial],
                 exception_handlers=PAGE_ERRORS, include_in_schema=False)]
