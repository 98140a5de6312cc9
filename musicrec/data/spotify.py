"""A small, patient Spotify Web API client on top of spotipy (client-credentials flow).

Why a wrapper: spotipy's own retries sleep for whatever Retry-After says and hide the
status behind a generic error, and its default token cache is a ``.cache`` file in the
working directory. Here the token lives in memory (``MemoryCacheHandler``), spotipy does
no retrying of its own (a plain ``requests.Session``), and :meth:`SpotifyClient._call`
retries 429s (honouring Retry-After up to a budget), 5xx and network errors with
exponential backoff, then gives up with a typed error a page can explain.

Spotify closed ``audio-features`` (and ``recommendations``) to new apps on 2024-11-27:
a 403 there is expected and becomes ``AudioFeatures.forbidden``, never an exception.

Used by the indexer's Spotify source and by the service in online mode; the service imports it at
start-up either way (its error types are mapped to HTTP statuses), so spotipy is always loaded.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import spotipy
from spotipy.cache_handler import MemoryCacheHandler
from spotipy.oauth2 import SpotifyClientCredentials, SpotifyOauthError

from musicrec.config import DEFAULT_SPOTIFY_API_URL, DEFAULT_SPOTIFY_TOKEN_URL

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_API_URL = DEFAULT_SPOTIFY_API_URL
DEFAULT_TOKEN_URL = DEFAULT_SPOTIFY_TOKEN_URL
TRACK_ID = re.compile(r"[0-9A-Za-z]{22}")
_PLAYLIST = re.compile(r"(?:spotify:playlist:|open\.spotify\.com/(?:[^/]+/)*playlist/)?([0-9A-Za-z]{22})(?:[?#/].*)?$")
AUDIO_FEATURE_KEYS = ("danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
                      "instrumentalness", "liveness", "valence", "tempo", "duration_ms", "time_signature")


class SpotifyError(Exception):
    """Something Spotify said or did that the caller should explain, not crash on."""


class SpotifyNotFound(SpotifyError):
    """The id does not name anything on Spotify (404, or 400 "invalid id")."""


class SpotifyForbidden(SpotifyError):
    """403: this app may not use the endpoint (audio-features since 2024-11-27)."""


class SpotifyAuthError(SpotifyError):
    """The client id/secret were refused, or none were configured."""


class SpotifyUnavailable(SpotifyError):
    """Network errors or 5xx that outlasted the retries."""


class SpotifyRateLimited(SpotifyUnavailable):
    """429 that outlasted the retries, or asked to wait longer than our budget."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SpotifyConfig:
    client_id: str
    client_secret: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    token_url: str = DEFAULT_TOKEN_URL
    timeout_s: float = 5.0
    max_attempts: int = 4          # first try included
    backoff_s: float = 0.5         # wait before retry n is backoff_s · 2**(n-1) …
    max_wait_s: float = 8.0        # … capped here; a longer Retry-After is not waited for

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> "SpotifyConfig":
        """SPOTIPY_CLIENT_ID / SPOTIPY_CLIENT_SECRET (spotipy's own names); SPOTIFY_API_URL and
        SPOTIFY_TOKEN_URL point elsewhere (a proxy, or the tests' fake server)."""
        return cls.checked(environ.get("SPOTIPY_CLIENT_ID", ""), environ.get("SPOTIPY_CLIENT_SECRET", ""),
                           api_url=environ.get("SPOTIFY_API_URL") or DEFAULT_API_URL,
                           token_url=environ.get("SPOTIFY_TOKEN_URL") or DEFAULT_TOKEN_URL, **overrides)

    @classmethod
    def checked(cls, client_id: str, client_secret: str, **options: Any) -> "SpotifyConfig":
        """A config whose credentials are both present (SpotifyAuthError names what is missing)."""
        client_id, client_secret = client_id.strip(), client_secret.strip()
        missing = [name for name, value in (("SPOTIPY_CLIENT_ID", client_id), ("SPOTIPY_CLIENT_SECRET", client_secret))
                   if not value]
        if missing:
            raise SpotifyAuthError(f"set {' and '.join(missing)} (a Spotify app's client-credentials) to read from "
                                   "the Spotify Web API")
        return cls(client_id, client_secret, **options)


@dataclass(frozen=True)
class AudioFeatures:
    """Features by track id (None: Spotify has none for it); ``forbidden`` when the endpoint said 403."""

    by_id: dict[str, dict[str, float] | None]
    forbidden: bool = False


def playlist_id(text: str) -> str:
    """The 22-character id from a playlist URL, ``spotify:playlist:`` URI or bare id."""
    match = _PLAYLIST.search(text.strip())
    if not match:
        raise ValueError(f"not a Spotify playlist URL, URI or id: {text!r}")
    return match.group(1)


def _retry_after(exc: spotipy.SpotifyException) -> float | None:
    raw = (exc.headers or {}).get("Retry-After") if exc.headers is not None else None
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _features(raw: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not raw:
        return None
    out = {k: float(raw[k]) for k in AUDIO_FEATURE_KEYS if isinstance(raw.get(k), (int, float))}
    return out or None


class _Expected403(logging.Filter):
    """spotipy logs every HTTP error at ERROR; the audio-features 403 is the expected answer for new
    apps (``audio_features`` logs one WARNING of its own), so spotipy's line for it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("audio-features" in message and "returned 403" in message)


def _quiet_expected_403() -> None:
    spotipy_log = logging.getLogger("spotipy.client")
    if not any(isinstance(f, _Expected403) for f in spotipy_log.filters):
        spotipy_log.addFilter(_Expected403())


class SpotifyClient:
    """Thread-safe enough for a worker pool: one requests session, one in-memory token."""

    def __init__(self, config: SpotifyConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep
        _quiet_expected_403()
        session = requests.Session()  # no urllib3 retries: _call does them, visibly
        auth = SpotifyClientCredentials(config.client_id, config.client_secret, requests_session=session,
                                        requests_timeout=config.timeout_s, cache_handler=MemoryCacheHandler())
        auth.OAUTH_TOKEN_URL = config.token_url  # instance attribute: the class default stays Spotify's
        self._sp = spotipy.Spotify(auth_manager=auth, requests_session=session, requests_timeout=config.timeout_s,
                                   retries=0, status_retries=0)
        self._sp.prefix = config.api_url if config.api_url.endswith("/") else config.api_url + "/"
        self.calls = 0
        self.retries = 0

    # -- endpoints ------------------------------------------------------------------------
    def track(self, track_id: str) -> dict[str, Any]:
        if not TRACK_ID.fullmatch(track_id):
            raise SpotifyNotFound(f"{track_id!r} is not a Spotify track id")
        return self._call(self._sp.track, track_id)

    def tracks(self, ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in _chunks(ids, 50):
            out.extend(t for t in self._call(self._sp.tracks, chunk)["tracks"] if t)
        return out

    def artists(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Artists by id; a failure here costs only genres, so callers may catch SpotifyError."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(dict.fromkeys(ids)), 50):
            for artist in self._call(self._sp.artists, chunk).get("artists") or []:
                if artist and artist.get("id"):
                    out[artist["id"]] = artist
        return out

    def audio_features(self, ids: list[str]) -> AudioFeatures:
        """Features for up to any number of ids; a 403 (closed endpoint) stops asking and says so."""
        found: dict[str, dict[str, float] | None] = {}
        for chunk in _chunks(ids, 100):
            try:
                rows = self._call(self._sp.audio_features, chunk) or []
            except SpotifyForbidden:
                log.warning("Spotify answered 403 for audio-features: this app may not use that endpoint "
                            "(closed to new apps on 2024-11-27); tracks keep their metadata only")
                return AudioFeatures({i: found.get(i) for i in ids}, forbidden=True)
            for track_id, row in zip(chunk, rows):
                found[track_id] = _features(row)
        return AudioFeatures({i: found.get(i) for i in ids})

    def playlist_tracks(self, playlist: str) -> list[dict[str, Any]]:
        """Every track object of a playlist, following ``next`` pages; episodes and local files skipped."""
        pid = playlist_id(playlist)
        page = self._call(self._sp.playlist_items, pid, limit=50, additional_types=("track",))
        out: list[dict[str, Any]] = []
        while page:
            for entry in page.get("items") or []:
                track = (entry or {}).get("track") or (entry or {}).get("item")
                if track and track.get("id") and track.get("type", "track") == "track" and not track.get("is_local"):
                    out.append(track)
            page = self._call(self._sp.next, page) if page.get("next") else None
        return out

    # -- retrying -------------------------------------------------------------------------
    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        cfg = self.config
        last: str = ""
        for attempt in range(1, cfg.max_attempts + 1):
            self.calls += 1
            wait = min(cfg.max_wait_s, cfg.backoff_s * 2 ** (attempt - 1))
            try:
                return fn(*args, **kwargs)
            except spotipy.SpotifyException as exc:
                status = exc.http_status
                if status == 429:
                    asked = _retry_after(exc)
                    if asked is not None and asked > cfg.max_wait_s:
                        raise SpotifyRateLimited(f"Spotify rate limit: asked to wait {asked:.0f} s", asked) from None
                    if attempt == cfg.max_attempts:
                        raise SpotifyRateLimited(f"Spotify rate limit after {attempt} attempts", asked) from None
                    wait = asked if asked is not None else wait
                    last = "429"
                elif status in (400, 404):
                    raise SpotifyNotFound(f"Spotify: {status} {_message(exc)}") from None
                elif status == 403:
                    raise SpotifyForbidden(f"Spotify: 403 {_message(exc)}") from None
                elif status == 401:
                    raise SpotifyAuthError(f"Spotify: 401 {_message(exc)}") from None
                elif status >= 500:
                    last = f"{status}"
                else:
                    raise SpotifyError(f"Spotify: {status} {_message(exc)}") from None
            except SpotifyOauthError as exc:
                raise SpotifyAuthError(f"Spotify refused the client credentials: {exc}") from None
            except requests.RequestException as exc:
                last = type(exc).__name__
            if attempt < cfg.max_attempts:
                self.retries += 1
                log.info("Spotify call failed (%s); retry %d/%d in %.2f s", last, attempt, cfg.max_attempts - 1, wait)
                self._sleep(wait)
        raise SpotifyUnavailable(f"Spotify unreachable after {cfg.max_attempts} attempts (last: {last})")


def _message(exc: spotipy.SpotifyException) -> str:
    return " ".join(str(exc.msg).split())[-200:]


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
