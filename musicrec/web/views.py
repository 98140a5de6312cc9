"""What the pages show, already shaped: view models, the song list's query state, pager, notes.

No HTTP here (handlers.py does requests and responses) and no logic in the templates: each
dataclass is what one template fragment prints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote, urlencode

from musicrec.index.browse import SORTS, BrowseQuery
from musicrec.index.engine import Engine
from musicrec.index.recommend import Hit
from musicrec.service.online import OnlineTrack
from musicrec.service.sessions import SessionEvent
from musicrec.web.charts import duration_text

PER_PAGE_CHOICES = (10, 20, 50, 100)
MAX_PAGE = 100_000
MAX_QUERY = 200
SORT_LABELS = {"-popularity": "Most popular", "popularity": "Least popular", "name": "Title A–Z",
               "-name": "Title Z–A", "artist": "Artist A–Z", "-artist": "Artist Z–A"}
EVENT_LABELS = {"track_view": "played", "like": "liked", "skip": "skipped"}


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


def card(engine: Engine, row: int, note: str = "", *, genre: str | None = None) -> Card:
    """A track as a list shows it; with ``genre`` (a list filtered by it) the row shows that genre when the
    track has it among its genres, rather than its first one."""
    t = engine.tracks
    track_id = str(t.ids[row])
    shown = genre if genre and genre in str(t.genres[row]).split("|") else str(t.genre[row])
    return Card(track_id, song_href(track_id), str(t.name[row]), str(t.artist[row]), str(t.album[row]),
                shown, int(t.popularity[row]), bool(t.explicit[row]), note)


def session_actions(events: list[SessionEvent]) -> dict[str, str]:
    """What the listener did to each track of the session, as the recommender reads it: the newest event
    decides a skip, and a like, even an older one, makes the track "liked" (not merely played)."""
    newest: dict[str, str] = {}
    liked: set[str] = set()
    for e in events:  # newest first
        newest.setdefault(e.track_id, e.type)
        if e.type == "like":
            liked.add(e.track_id)
    return {track: "skip" if kind == "skip" else ("like" if track in liked else kind) for track, kind in newest.items()}


def hit_cards(engine: Engine, hits: list[Hit], *, with_because: bool = False,
              actions: Mapping[str, str] | None = None) -> list[Card]:
    """Cards whose note says why each track is there: its reason, and with ``with_because`` the session track
    that earned it and whether the listener liked or played that one (``actions``, from ``session_actions``)."""
    t = engine.tracks
    acts = actions or {}
    return [card(engine, h.row, f"{h.reason} · because you "
                                f"{EVENT_LABELS.get(acts.get(str(t.ids[h.because]), 'track_view'))} {t.name[h.because]}"
                 if with_because and h.because >= 0 else h.reason) for h in hits]


def recent_items(engine: Engine, events: list[SessionEvent], limit: int = 10) -> list[RecentItem]:
    """The session's tracks, newest first, once each, labelled liked, skipped or played (``session_actions``)."""
    actions = session_actions(events)
    seen: set[str] = set()
    out = []
    for e in events:
        row = engine.tracks.row_of.get(e.track_id)
        if row is None or e.track_id in seen:
            continue
        seen.add(e.track_id)
        kind = actions[e.track_id]
        out.append(RecentItem(card(engine, row), EVENT_LABELS.get(kind, kind)))
        if len(out) == limit:
            break
    return out


def clamped_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query value clamped into [low, high]; anything unparsable is the default."""
    try:
        value = int(str(params.get(name, "")).strip())
    except ValueError:
        return default
    return min(high, max(low, value))


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
        low = clamped_int(params, "min_popularity", 0, 0, 100)
        high = clamped_int(params, "max_popularity", 100, 0, 100)
        sort = str(params.get("sort", "-popularity"))
        return cls(
            q=str(params.get("q", "")).strip()[:MAX_QUERY],
            genre=str(params.get("genre", "")).strip()[:100],
            explicit=explicit,
            min_popularity=min(low, high), max_popularity=max(low, high),
            sort=sort if sort in SORTS else "-popularity",
            page=clamped_int(params, "page", 1, 1, MAX_PAGE),
            per_page=clamped_int(params, "per_page", 20, 1, max(PER_PAGE_CHOICES)),
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


@dataclass(frozen=True)
class Group:
    seed: Card | None      # None: popular picks (no seed)
    items: list[Card]
    action: str = "played"  # what the listener did to the seed: "liked" or "played"


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


def artist_links(names: list[str]) -> list[tuple[str, str]]:
    return [(a, ListState(q=a).url()) for a in names if a]


def online_view(track: OnlineTrack) -> TrackView:
    return TrackView(
        id=track.id, href=song_href(track.id), name=track.name, artists=artist_links(track.artists), album=track.album,
        album_url=ListState(q=track.album).url() if track.album else None,
        genres=[(g, None) for g in track.genres], popularity=track.popularity, explicit=track.explicit,
        duration=duration_text(track.duration_ms), spotify_url="https://open.spotify.com/track/" + quote(track.id, safe=""),
    )


def features_note(track: OnlineTrack, source: str) -> str | None:
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
