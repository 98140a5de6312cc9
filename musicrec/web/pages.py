"""Server-rendered pages: home, the song list and a song's page, usable without JavaScript.

Pages read and write the listener's session exactly as the JSON API does (same client id
cookie, same ``logic.make_event`` path), so a like pressed here changes what
``/api/songs_recommendations`` answers. Bad query values are clamped (page, per_page,
popularity) or answered with an HTML 400 page (unknown genre); every error under these
routes is an HTML page, while ``/api/*`` keeps its JSON errors.

The one piece of script (``static/app.js``) turns like/skip into ``fetch("/events")`` and
swaps in a fresh ``/partials/session`` fragment; without it the same buttons post a form
and come back through a 303.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, urlencode

import anyio
from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Redirect, Template

from musicrec.service import logic
from musicrec.index.browse import SORTS, BrowseQuery
from musicrec.web.charts import duration_text, feature_chart, feature_rows, scale_for
from musicrec.service.clients import client_id, remember
from musicrec.service.deps import EngineDep, EventsDep, SessionsDep
from musicrec.index.engine import Engine
from musicrec.service.errors import BadRequest, DomainError
from musicrec.service.events import EventSink
from musicrec.service.online import OnlineTrack, place
from musicrec.service.sessions import SessionEvent, SessionStore
from musicrec.data.spotify import SpotifyAuthError, SpotifyError, SpotifyNotFound, SpotifyRateLimited, SpotifyUnavailable
from musicrec.index.recommend import Hit, Query, Seed, seeds_from_events

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SOURCE = "song_page"
PER_PAGE_CHOICES = (10, 20, 50, 100)
MAX_PAGE = 100_000
MAX_QUERY = 200
MORE_LIKE_THIS = 10
FOR_YOU = 8
HOME_RECS = 24
SORT_LABELS = {"-popularity": "Most popular", "popularity": "Least popular", "name": "Title A–Z",
               "-name": "Title Z–A", "artist": "Artist A–Z", "-artist": "Artist Z–A"}
EVENT_LABELS = {"track_view": "played", "like": "liked", "skip": "skipped"}
NO_STORE = {"Cache-Control": "no-store"}  # pages carry the listener's own session


# -- view models ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Card:
    """One track in a list: what the templates show, already shaped (no logic in templates)."""

    id: str
    href: str
    name: str
    artist: str
    album: str
    genre: str
    popularity: int
    explicit: bool
    note: str = ""


@dataclass(frozen=True)
class RecentItem:
    card: Card
    action: str


def song_href(track_id: str) -> str:
    return "/songs/" + quote(track_id, safe="")


def card(engine: Engine, row: int, note: str = "") -> Card:
    t = engine.tracks
    track_id = str(t.ids[row])
    return Card(track_id, song_href(track_id), str(t.name[row]), str(t.artist[row]), str(t.album[row]),
                str(t.genre[row]), int(t.popularity[row]), bool(t.explicit[row]), note)


def hit_cards(engine: Engine, hits: list[Hit], *, with_because: bool = False) -> list[Card]:
    """Cards whose note says why each track is there (its reason, and with ``with_because`` its seed)."""
    t = engine.tracks
    return [card(engine, h.row, f"{h.reason} · because you played {t.name[h.because]}"
                 if with_because and h.because >= 0 else h.reason) for h in hits]


def recent_items(engine: Engine, events: list[SessionEvent], limit: int = 10) -> list[RecentItem]:
    """The session's tracks, newest first, once each, with what the listener last did to them."""
    seen: set[str] = set()
    out = []
    for e in events:
        row = engine.tracks.row_of.get(e.track_id)
        if row is None or e.track_id in seen:
            continue
        seen.add(e.track_id)
        out.append(RecentItem(card(engine, row), EVENT_LABELS.get(e.type, e.type)))
        if len(out) == limit:
            break
    return out


# -- helpers --------------------------------------------------------------------------------------

def listener(request: Request) -> tuple[str, bool]:
    """The client id as the API reads it; a malformed cookie is replaced by a fresh id, not an error page."""
    try:
        return client_id(request)
    except BadRequest:
        return uuid.uuid4().hex, True


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


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query value clamped into [low, high]; anything unparsable is the default."""
    try:
        value = int(str(params.get(name, "")).strip())
    except ValueError:
        return default
    return min(high, max(low, value))


# -- the song list --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ListState:
    q: str = ""
    genre: str = ""
    explicit: str = ""          # "", "true" or "false"
    min_popularity: int = 0
    max_popularity: int = 100
    sort: str = "-popularity"
    page: int = 1
    per_page: int = 20

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "ListState":
        explicit = str(params.get("explicit", "")).strip().lower()
        explicit = {"true": "true", "1": "true", "yes": "true", "on": "true",
                    "false": "false", "0": "false", "no": "false"}.get(explicit, "")
        low = _int(params, "min_popularity", 0, 0, 100)
        high = _int(params, "max_popularity", 100, 0, 100)
        sort = str(params.get("sort", "-popularity"))
        return cls(
            q=str(params.get("q", "")).strip()[:MAX_QUERY],
            genre=str(params.get("genre", "")).strip()[:100],
            explicit=explicit,
            min_popularity=min(low, high), max_popularity=max(low, high),
            sort=sort if sort in SORTS else "-popularity",
            page=_int(params, "page", 1, 1, MAX_PAGE),
            per_page=_int(params, "per_page", 20, 1, max(PER_PAGE_CHOICES)),
        )

    def query(self) -> BrowseQuery:
        return BrowseQuery(self.q, self.genre or None, None if not self.explicit else self.explicit == "true",
                           self.min_popularity, self.max_popularity, self.sort, self.page, self.per_page)

    def url(self, **changes: Any) -> str:
        """This list's URL with some values changed; defaults are left out, so links stay short."""
        values = {**self.__dict__, **changes}
        defaults = ListState().__dict__
        kept = {k: v for k, v in values.items() if v != defaults[k]}
        return "/songs" + (f"?{urlencode(kept)}" if kept else "")


@dataclass(frozen=True)
class Pager:
    page: int
    pages: int
    total: int
    first_item: int
    last_item: int
    links: list[tuple[int | None, str | None]]   # (page number, url); (None, None) is a gap
    prev_url: str | None
    next_url: str | None


def pager(state: ListState, total: int) -> Pager:
    pages = max(1, math.ceil(total / state.per_page))
    current = state.page
    numbers = sorted({1, pages, *range(max(1, current - 2), min(pages, current + 2) + 1)})
    links: list[tuple[int | None, str | None]] = []
    for i, n in enumerate(numbers):
        if i and n - numbers[i - 1] > 1:
            links.append((None, None))
        links.append((n, state.url(page=n)))
    first = (current - 1) * state.per_page + 1 if total else 0
    return Pager(current, pages, total, first, min(total, current * state.per_page), links,
                 state.url(page=current - 1) if current > 1 else None,
                 state.url(page=current + 1) if current < pages else None)


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
    items = [card(engine, int(r)) for r in rows]
    return page(request, engine, "songs.html", items=items, pager=pager(state, total), error=None, **context)


# -- home -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    seed: Card | None      # None: popular picks (no seed)
    items: list[Card]


@get("/", name="home_page", summary="Home page")
async def home_page(request: Request, engine: EngineDep, sessions: SessionsDep) -> Template:
    client, is_new = listener(request)
    recent = [] if is_new else await sessions.recent(client)
    hits = engine.recommender.recommend(_session_query(engine, recent, HOME_RECS))
    groups: dict[int, list[Card]] = {}
    for h in hits:
        groups.setdefault(h.because, []).append(card(engine, h.row, h.reason))
    shaped = [Group(card(engine, seed) if seed >= 0 else None, items) for seed, items in groups.items()]
    response = page(request, engine, "home.html", groups=shaped, recent=recent_items(engine, recent),
                    new_listener=not recent)
    return remember(response, client, is_new)


def _session_query(engine: Engine, recent: list[SessionEvent], k: int) -> Query:
    """The same query ``logic.recommend_session`` builds, kept as hits so pages can group by seed."""
    session = seeds_from_events(((e.type, e.track_id) for e in recent), engine.tracks.row_of, engine.recommender.params)
    return Query(seeds=session.seeds, k=k, negatives=session.negatives, exclude=session.seen)


# -- a song ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrackView:
    id: str
    href: str
    name: str
    artists: list[tuple[str, str]]   # (name, search url)
    album: str
    album_url: str | None
    genres: list[tuple[str, str | None]]
    popularity: int | None
    explicit: bool
    duration: str
    spotify_url: str


def _artist_links(names: list[str]) -> list[tuple[str, str]]:
    return [(a, ListState(q=a).url()) for a in names if a]


def _session_panel(engine: Engine, recent: list[SessionEvent], current: str | None) -> dict[str, Any]:
    hits = engine.recommender.recommend(_session_query(engine, recent, FOR_YOU))
    src = "/partials/session" + (f"?{urlencode({'current': current})}" if current else "")
    return {"for_you": hit_cards(engine, hits, with_because=True), "recent": recent_items(engine, recent, 8),
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
        return remember(await _outside_song(request, engine, track_id), client, is_new)
    recorded = request.query_params.get("recorded")
    if recorded not in ("like", "skip"):  # after a no-script like/skip we come back here: not a new view
        await record(engine, sessions, events, kind="track_view", track_id=track_id, client=client)
        recorded = None
    detail = logic.song_detail(engine, track_id)
    recent = await sessions.recent(client)
    rows = feature_rows(scale_for(engine), detail.features)
    more = engine.recommender.recommend(Query(seeds=[Seed(row, 1.0)], k=MORE_LIKE_THIS))
    track = TrackView(
        id=detail.id, href=song_href(detail.id), name=detail.name, artists=_artist_links(detail.artists), album=detail.album,
        album_url=ListState(q=detail.album).url() if detail.album else None,
        genres=[(g, ListState(genre=g).url()) for g in detail.genres if g], popularity=detail.popularity,
        explicit=detail.explicit, duration=duration_text(detail.duration_ms),
        spotify_url="https://open.spotify.com/track/" + quote(detail.id, safe=""),
    )
    response = page(request, engine, "song.html", track=track, source="catalog", q="",
                    chart=feature_chart(rows, f"Audio features of {detail.name}"), feature_rows=rows,
                    features_note=None, more=hit_cards(engine, more), recorded=recorded,
                    panel=_session_panel(engine, recent, track_id), same_song=None)
    return remember(response, client, is_new)


async def _outside_song(request: Request, engine: Engine, track_id: str) -> Template:
    """An id the catalog lacks: a 404 page, or in online mode the track as Spotify describes it."""
    online = request.app.state.get("online")
    if online is None:
        return error_page(request, 404, "Song not found",
                          f"There is no song with the id “{track_id}” in this catalog.")
    try:
        track = await online.lookup(track_id)
    except SpotifyNotFound:
        return error_page(request, 404, "Song not found",
                          f"Neither this catalog nor Spotify has a song with the id “{track_id}”.")
    except SpotifyRateLimited as exc:
        wait = int(math.ceil(exc.retry_after_s or 30))
        return error_page(request, 503, "Spotify is busy",
                          f"Spotify asked us to slow down. Try this song again in about {wait} seconds.",
                          headers={"Retry-After": str(wait)})
    except SpotifyUnavailable:
        return error_page(request, 503, "Spotify could not be reached",
                          "This song is not in the local catalog and Spotify did not answer. Try again shortly.",
                          headers={"Retry-After": "30"})
    except SpotifyAuthError as exc:
        log.error("online mode: %s", exc)
        return error_page(request, 503, "Spotify is not available",
                          "The service's Spotify credentials were refused, so songs outside the catalog cannot be shown.")
    except SpotifyError as exc:
        log.warning("online lookup of %s failed: %s", track_id, exc)
        return error_page(request, 502, "Spotify answered with an error",
                          "Spotify could not describe this song right now.")
    placement = await anyio.to_thread.run_sync(place, engine, track, MORE_LIKE_THIS)
    rows = feature_rows(scale_for(engine), placement.features) if placement.features else []
    return page(request, engine, "song.html", track=_online_view(track), source="spotify",
                chart=feature_chart(rows, f"Audio features of {track.name}") if rows else None, feature_rows=rows,
                features_note=_features_note(track, placement.source), more=hit_cards(engine, placement.hits),
                recorded=None, panel=None,
                same_song=card(engine, placement.catalog_row) if placement.catalog_row is not None else None)


def _online_view(track: OnlineTrack) -> TrackView:
    return TrackView(
        id=track.id, href=song_href(track.id), name=track.name, artists=_artist_links(track.artists), album=track.album,
        album_url=ListState(q=track.album).url() if track.album else None,
        genres=[(g, None) for g in track.genres], popularity=track.popularity, explicit=track.explicit,
        duration=duration_text(track.duration_ms), spotify_url="https://open.spotify.com/track/" + quote(track.id, safe=""),
    )


def _features_note(track: OnlineTrack, source: str) -> str | None:
    why = {
        "forbidden": "Spotify refused to share its audio features (its audio-features endpoint has been closed "
                     "to new apps since 27 November 2024)",
        "missing": "Spotify has no audio features for this track",
        "unavailable": "Spotify's audio features could not be fetched just now",
        "spotify": "This track's audio features could not be placed among this catalog's",
    }.get(track.features_from)
    if source == "spotify" or why is None:
        return None
    if source == "catalog":
        return f"{why}; the features shown are those of the same song in the local catalog."
    return f"{why}, and the song is not in the local catalog, so this track has no audio features: " \
           f"no chart and no “more like this” can be drawn for it."


# -- like / skip ----------------------------------------------------------------------------------

@post("/songs/{track_id:str}/feedback", name="song_feedback", status_code=303,
      summary="Like or skip from a form (the no-script path of the like/skip buttons)")
async def song_feedback(request: Request, track_id: FromPath[str], engine: EngineDep, sessions: SessionsDep,
                        events: EventsDep) -> Response:
    form = await request.form()
    kind = str(form.get("type", ""))
    if kind not in ("like", "skip"):
        return error_page(request, 400, "Unknown action", "A song can be liked or skipped.")
    if track_id not in engine.tracks.row_of:
        return error_page(request, 404, "Song not found", f"There is no song with the id “{track_id}” in this catalog.")
    client, is_new = listener(request)
    await record(engine, sessions, events, kind=kind, track_id=track_id, client=client)
    return remember(Redirect(f"{song_href(track_id)}?recorded={kind}#for-you", status_code=303), client, is_new)


@get("/partials/session", name="session_partial", summary="The 'for you now' and recent-tracks fragment")
async def session_partial(request: Request, engine: EngineDep, sessions: SessionsDep) -> Template:
    client, is_new = listener(request)
    recent = [] if is_new else await sessions.recent(client)
    current = request.query_params.get("current")
    return remember(page(request, engine, "_session_panel.html", panel=_session_panel(engine, recent, current)),
                    client, is_new)


# -- errors under these routes are pages too ------------------------------------------------------

def _domain_error(request: Request, exc: DomainError) -> Response:
    return error_page(request, exc.status_code, "Something is wrong with this request", exc.detail)


def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code >= 500:
        log.error("error %d on page %s %s", exc.status_code, request.method, request.url.path, exc_info=exc)
    title = "Page not found" if exc.status_code == 404 else "Something is wrong with this request"
    return error_page(request, exc.status_code, title, str(exc.detail))


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on page %s %s", request.method, request.url.path)
    return error_page(request, 500, "Something went wrong", "The page could not be shown. Please try again.")


PAGE_ERRORS = {DomainError: _domain_error, HTTPException: _http_error, Exception: _unexpected}

ROUTES = [Router(path="/", route_handlers=[home_page, songs_page, song_page, song_feedback, session_partial],
                 exception_handlers=PAGE_ERRORS, include_in_schema=False)]
