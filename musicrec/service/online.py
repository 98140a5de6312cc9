"""Online mode: a track that is not in the catalog, fetched from Spotify and placed among ours.

``/songs/<id>`` for an unknown id (``MODE=online`` only) asks Spotify for the track, its
first artist's genres and its audio features, keeps the answer in Redis for a day (through
the worker's one ``RedisLink``, so it degrades and recovers with the session store and shows
in /readyz; an in-process LRU beside it serves while Redis is down or not configured), and, when features are known,
embeds them with the version's saved encoder and searches the index with that vector.

Since 2024-11-27 Spotify answers 403 to new apps on ``audio-features``: the track keeps
its metadata; if the same song (name + first artist) is in the local catalog its features
are used, otherwise the page says plainly that the track has no features. torch is
imported only here, and only when a vector must be encoded.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
import numpy as np

from musicrec.index.engine import Engine
from musicrec.data.spotify import TRACK_ID, SpotifyClient, SpotifyError, SpotifyNotFound, SpotifyUnavailable
from musicrec.data.schema import impute_features
from musicrec.index.catalog import song_title
from musicrec.index.recommend import Hit, Query, Seed
from musicrec.service.lru import LRU
from musicrec.service.sessions import REDIS_DOWN, RedisLink

if TYPE_CHECKING:
    from musicrec.service.settings import Settings

log = logging.getLogger(__name__)

FeaturesFrom = Literal["spotify", "forbidden", "missing", "unavailable"]
CACHE_PREFIX = "musicrec:online:track:"
TTL_S = 24 * 3600
SHORT_TTL_S = 300        # features that failed for a transient reason are asked again soon
NOT_FOUND = b"404"


class OnlineTrack(msgspec.Struct, kw_only=True):
    """What Spotify told us about one track; the cached value (JSON in Redis)."""

    id: str
    name: str
    artists: list[str]
    album: str
    popularity: int | None
    explicit: bool
    duration_ms: int | None
    genres: list[str]
    features: dict[str, float] | None
    features_from: FeaturesFrom
    fetched_at: float


_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder(OnlineTrack)


class TrackCache:
    """Spotify's answers by track id: in Redis on the worker's shared link, and in an in-process LRU
    beside it that alone serves while the link is down, or always without Redis (``memory://``)."""

    def __init__(self, link: RedisLink | None, *, memory_items: int = 2048) -> None:
        self.link = link
        self._memory: LRU[str, bytes] = LRU(memory_items)

    @property
    def status(self) -> str:
        """"ok", "degraded" (Redis configured, not answering: memory only) or "memory" (no Redis)."""
        return "memory" if self.link is None else self.link.status

    async def get(self, track_id: str) -> bytes | None:
        key = CACHE_PREFIX + track_id
        if self.link is not None and self.link.up:
            try:
                return await self.link.client.execute(b"GET", key)
            except REDIS_DOWN as exc:
                self.link.mark_down(exc)
        return self._memory.get(key)

    async def set(self, track_id: str, value: bytes, ttl_s: int) -> None:
        key = CACHE_PREFIX + track_id
        self._memory.put(key, value, ttl_s)
        if self.link is not None and self.link.up:
            try:
                await self.link.client.execute(b"SET", key, value, b"EX", ttl_s)
            except REDIS_DOWN as exc:
                self.link.mark_down(exc)


def track_from_spotify(raw: dict[str, Any], genres: list[str], features: dict[str, float] | None,
                       features_from: FeaturesFrom) -> OnlineTrack:
    artists = [a.get("name") or "" for a in raw.get("artists") or [] if a]
    duration = raw.get("duration_ms")
    popularity = raw.get("popularity")
    return OnlineTrack(
        id=raw["id"], name=raw.get("name") or "", artists=[a for a in artists if a],
        album=((raw.get("album") or {}).get("name") or ""),
        popularity=int(popularity) if isinstance(popularity, (int, float)) else None,
        explicit=bool(raw.get("explicit")), duration_ms=int(duration) if isinstance(duration, (int, float)) else None,
        genres=genres, features=features, features_from=features_from, fetched_at=time.time(),
    )


class OnlineService:
    """Lookups of ids outside the catalog; one per app, made in the lifespan (``online_service``)."""

    def __init__(self, client: SpotifyClient, cache: TrackCache, *, max_concurrency: int = 4) -> None:
        self.client = client
        self.cache = cache
        self._max_concurrency = max_concurrency
        self._limiter: anyio.CapacityLimiter | None = None

    async def lookup(self, track_id: str) -> OnlineTrack:
        """The track from the cache or Spotify; SpotifyNotFound, SpotifyUnavailable (incl. rate limits)
        or SpotifyAuthError otherwise."""
        if not TRACK_ID.fullmatch(track_id):
            raise SpotifyNotFound(f"{track_id!r} is not a Spotify track id")
        cached = await self.cache.get(track_id)
        if cached == NOT_FOUND:
            raise SpotifyNotFound(f"Spotify has no track {track_id!r} (cached answer)")
        if cached is not None:
            try:
                return _DECODE.decode(cached)
            except msgspec.DecodeError:
                log.warning("online track cache: unreadable entry for %s, refetching", track_id)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_concurrency)
        try:
            track = await anyio.to_thread.run_sync(self._fetch, track_id, limiter=self._limiter)
        except SpotifyNotFound:
            await self.cache.set(track_id, NOT_FOUND, 3600)
            raise
        await self.cache.set(track_id, _ENCODE.encode(track), SHORT_TTL_S if track.features_from == "unavailable" else TTL_S)
        return track

    def _fetch(self, track_id: str) -> OnlineTrack:
        raw = self.client.track(track_id)
        try:
            answer = self.client.audio_features([track_id])
            features = answer.by_id.get(track_id)
            features_from: FeaturesFrom = "forbidden" if answer.forbidden else ("spotify" if features else "missing")
        except SpotifyUnavailable as exc:
            log.warning("audio features for %s unavailable now: %s", track_id, exc)
            features, features_from = None, "unavailable"
        genres: list[str] = []
        first = next((a.get("id") for a in raw.get("artists") or [] if a and a.get("id")), None)
        if first:
            try:
                genres = list((self.client.artists([first]).get(first) or {}).get("genres") or [])
            except SpotifyError as exc:  # genres are a nicety: the page works without them
                log.info("artist genres for %s unavailable: %s", track_id, exc)
        return track_from_spotify(raw, genres, features, features_from)


def online_service(settings: "Settings", link: RedisLink | None, client: SpotifyClient | None = None
                   ) -> OnlineService | None:
    """The app's OnlineService (``client`` if given, else one from settings), caching on ``link``;
    None unless ``settings.mode`` is "online"."""
    if settings.mode != "online":
        return None
    if client is None:
        # Settings refuse MODE=online without both credentials, so this cannot raise SpotifyAuthError.
        client = SpotifyClient(settings.spotify_config(timeout_s=3.0, max_attempts=3, backoff_s=0.25,
                                                       max_wait_s=2.0))  # a page waits seconds, not minutes
    return OnlineService(client, TrackCache(link))


# -- placing an outside track among the catalog's ------------------------------------------------

class Encoder:
    """The version's saved scaler + encoder, for one new feature vector at a time."""

    def __init__(self, engine: Engine) -> None:
        import torch

        from musicrec.models.autoencoder import AutoEncoder
        from musicrec.models.scaler import StandardScaler

        artifacts = engine.artifacts
        self.features = list(artifacts.manifest.features)
        self.medians = dict(artifacts.scaler.get("medians") or {})
        self.scaler = StandardScaler.from_dict(artifacts.scaler)
        model = AutoEncoder(n_features=len(self.features), latent_dim=artifacts.manifest.dim)
        model.load_state_dict(torch.load(artifacts.path / "model.pth", map_location="cpu", weights_only=True))
        model.eval()
        self.model = model
        self._lock = threading.Lock()

    def encode(self, values: dict[str, float]) -> np.ndarray:
        """L2-normalised float32 embedding; missing features imputed as the catalog was."""
        from musicrec.models.autoencoder import embed

        raw = np.asarray([impute_features(values, self.medians, self.features)], dtype=np.float64)
        with self._lock:
            return embed(self.model, self.scaler.transform(raw))[0]


_encoders: "weakref.WeakKeyDictionary[Engine, Encoder]" = weakref.WeakKeyDictionary()
_songs: "weakref.WeakKeyDictionary[Engine, dict[str, int]]" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def encoder_for(engine: Engine) -> Encoder:
    with _cache_lock:
        encoder = _encoders.get(engine)
        if encoder is None:
            encoder = _encoders[engine] = Encoder(engine)
        return encoder


def _song_key(name: str, artist: str) -> str:
    return f"{song_title(name).casefold().strip()}\x1f{artist.casefold().strip()}"


def same_song_row(engine: Engine, name: str, artist: str) -> int | None:
    """A catalog row with the same name and first artist (another release of the song), most popular."""
    with _cache_lock:
        index = _songs.get(engine)
        if index is None:
            t = engine.tracks
            index = {}
            for row in np.argsort(-t.popularity.astype(np.int32), kind="stable").tolist():
                index.setdefault(_song_key(t.name[row], t.artist[row]), row)
            _songs[engine] = index
    return index.get(_song_key(name, artist))


def recommend_from_vector(engine: Engine, vector: np.ndarray, k: int) -> list[Hit]:
    """The k catalog songs nearest to an outside vector: an ANN search, then exact cosine, one
    listing per song. A single-seed ``Recommender`` query without the seed's artist/album links,
    which an outside track has none of in the catalog."""
    rec = engine.recommender
    query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
    depth = max(rec.params.min_depth, 4 * k)
    _, ann = rec.index.search(query, min(depth, rec.n))
    rows = np.unique(ann[ann >= 0]).astype(np.int64)
    if not len(rows):
        return []
    scores = np.asarray(engine.artifacts.embeddings).take(rows, axis=0) @ query[0]
    order = np.argsort(-scores, kind="stable")
    keys = engine.tracks.song_key.take(rows[order])
    _, first = np.unique(keys, return_index=True)
    best = order[np.sort(first)][:k]
    return [Hit(int(rows[i]), float(scores[i]), -1) for i in best]


@dataclass(frozen=True)
class Placement:
    """Where an outside track sits: its features (and where they came from) and its neighbours."""

    features: dict[str, float] | None
    source: Literal["spotify", "catalog", "none"]
    catalog_row: int | None
    hits: list[Hit]


def place(engine: Engine, track: OnlineTrack, k: int) -> Placement:
    """Features from Spotify (encoded here), else the same song's in the catalog, else none."""
    same = same_song_row(engine, track.name, track.artists[0]) if track.artists else None
    if track.features:
        try:
            vector = encoder_for(engine).encode(track.features)
        except ValueError as exc:  # a feature this version cannot impute: place it as if it had none
            log.warning("cannot embed %s with %s: %s", track.id, engine.model_version, exc)
        else:
            return Placement(track.features, "spotify", same, recommend_from_vector(engine, vector, k))
    if same is not None:
        t = engine.tracks
        features = {n: float(v) for n, v in zip(t.feature_names, t.features[same].tolist())}
        return Placement(features, "catalog", same, engine.recommender.recommend(Query(seeds=[Seed(same, 1.0)], k=k)))
    return Placement(None, "none", None, [])
