"""Service settings: parsed once from the environment (and an optional ``.env``), then frozen.

Nothing here runs at import time: ``Settings.from_env()`` is called by whoever starts the
service (``musicrec serve``, the ASGI factory, a test), so tests build their own Settings
from a plain dict instead of patching ``os.environ`` before an import. The variables the
offline indexer reads too (artefacts, Kafka, Spotify, logging) are ``CommonSettings``
(musicrec/config.py), parsed there once for both.

Every value is validated up front so a typo fails the start with the variable's name and
the bad value, rather than surfacing as a strange error on the first request. Secrets are
kept out of ``repr()`` and out of ``masked()``, the dict the start-up log prints.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Mapping, cast
from urllib.parse import urlsplit

from musicrec.config import (
    COMMON_HELP, CommonSettings, EnvParser, SettingsError, boolean, finite_float, mask_url, parse_common, read_env,
    usable_cores,
)
from musicrec.service.resp import RedisAddress

__all__ = ["Settings", "SettingsError", "mask_url", "usable_cores", "SERVICE_HELP"]


Mode = Literal["offline", "online"]
MODES: Final = ("offline", "online")
REDIS_SCHEMES: Final = ("redis", "rediss", "unix", "memory")
MIN_SECRET_LEN: Final = 16
"""The shortest API key or cookie secret accepted: anything shorter can be guessed."""


@dataclass(frozen=True, repr=False)
class Settings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int | None = None
    """uvicorn worker processes; None (``WORKERS=auto``) means ``worker_count``'s choice."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """``memory://`` keeps sessions in-process (one worker, lost on restart)."""
    session_ttl_s: int = 3600
    session_len: int = 20
    event_buffer_size: int = 10_000
    event_spill_dir: Path | None = Path("var/event-spill")
    """Undelivered Kafka events are written here at shutdown and sent on the next start; None (``EVENT_SPILL_DIR=``)
    turns that off."""
    redis_timeout_s: float = 0.25
    redis_connections: int = 1
    """Pipelined Redis connections per worker (musicrec.service.resp): concurrent requests share them, none
    waits for one; more than one only spreads the calls round robin."""
    memory_session_limit: int = 100_000
    """Listeners the in-process store keeps per worker (``memory://``, or Redis down); past it the least
    recently seen are dropped, counted and logged."""
    mode: Mode = "offline"
    admin_token: str = ""
    api_keys: tuple[str, ...] = ()
    """Keys calling apps send (``Authorization: Bearer`` or ``X-Api-Key``); several at once for rotation. Set, they
    are required on /api/* and /events (browsers use their signed cookie instead), and only a caller with one may
    name a listener with X-Client-Id."""
    cookie_secret: str = ""
    """HMAC key signing the listener cookie; empty: a random one per start (cookies then do not survive a restart)."""
    trusted_origins: tuple[str, ...] = ()
    """Origins (``https://host[:port]``) besides the request's own that may make cookie-authenticated changes."""
    faiss_threads: int = 1
    """Threads FAISS/BLAS may use per worker (pinned at start-up; see musicrec.index.engine)."""
    reload_poll_s: float = 5.0
    """How often the artefact watcher checks ``current``; 0 turns the watcher off."""
    answer_cache_size: int = 4096
    """Encoded "what next?" answers kept per worker, by exact session state (musicrec.service.answers); 0 = off."""
    access_log: bool = False
    """One log line per request (method, path, status, duration, request id); off by default: it costs CPU."""
    rate_limit_per_min: int = 0
    """Requests a minute per client address from callers without an API key (browsers included); 0 = no limit.

    Off unless set: without ``API_KEYS`` every calling app is keyless, and a limit sized for one
    browser would throttle them all (a player reporting each play, the quality benchmark's loop)."""
    api_key_rate_limit_per_min: int = 60_000
    """Requests a minute per API key; 0 = no limit."""
    admin_rate_limit_per_min: int = 10
    """Requests a minute per client address to /admin/* (and token attempts on private /metrics, /readyz); 0 = none."""
    max_in_flight: int = 32
    """Requests one worker serves at once; beyond that it answers 503 at once instead of queueing; 0 = no limit.

    Sized for a worker that shares its cores: descheduled for a few time slices while busy, it
    finds more requests waiting than its load suggests, so a tight limit sheds below capacity;
    past capacity this bound is what keeps the wait short (benchmarks/README.md)."""
    ops_details: Literal["public", "private"] = "public"
    """``private``: /metrics and /readyz's details need ``Authorization: Bearer $ADMIN_TOKEN`` (/healthz stays open)."""
    max_header_bytes: int = 16 * 1024
    """Request line plus headers, in bytes; a bigger head is answered 431 (musicrec.service.protocol)."""
    request_timeout_s: float = 10.0
    """A request (head and body) must arrive within this of its first byte, else 408 and the connection closes."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 env_file: str | Path | None = ".env") -> "Settings":
        """Build Settings from ``environ`` (default ``os.environ``) over the values in ``env_file``.

        The environment wins over the file so a deployment can override a checked-in
        ``.env``; a missing file is fine (production usually has none). All problems are
        collected and raised together as one SettingsError.
        """
        return _parse(read_env(environ, env_file))

    @property
    def memory_sessions(self) -> bool:
        """True when sessions are configured to live in-process (``memory://``)."""
        return self.redis_url.startswith("memory://")

    @property
    def worker_count(self) -> int:
        """Workers to start: ``WORKERS`` if given, else one per core this process may run on.

        Why per core: each worker is one single-threaded event loop sharing nothing but Redis,
        so throughput grows with cores (benchmarks/README.md). In-process sessions live in one
        worker's memory, so ``memory://`` gets exactly one (``_parse`` refuses more).
        """
        if self.workers is not None:
            return self.workers
        return 1 if self.memory_sessions else usable_cores()


def _parse(values: Mapping[str, str]) -> Settings:
    p = EnvParser(values)
    d = Settings()
    settings = Settings(
        **parse_common(p),
        host=p.get("HOST", d.host, str, bool, "a non-empty host name or address"),
        port=p.get("PORT", d.port, int, lambda v: 1 <= v <= 65535, "an integer in 1..65535"),
        workers=p.get("WORKERS", d.workers, _workers, lambda v: v is None or v >= 1, "'auto' or an integer >= 1"),
        redis_url=p.get("REDIS_URL", d.redis_url, _redis_url, None,
                        f"a URL with scheme {'/'.join(REDIS_SCHEMES)} (e.g. redis://[:password@]host:6379/0 or "
                        f"memory://), no options but db", show=lambda raw: repr(mask_url(raw))),
        session_ttl_s=p.get("SESSION_TTL_S", d.session_ttl_s, int, lambda v: v > 0, "an integer number of seconds > 0"),
        session_len=p.get("SESSION_LEN", d.session_len, int, lambda v: 1 <= v <= 1000, "an integer in 1..1000"),
        event_buffer_size=p.get("EVENT_BUFFER_SIZE", d.event_buffer_size, int, lambda v: v >= 1, "an integer >= 1"),
        event_spill_dir=p.get("EVENT_SPILL_DIR", d.event_spill_dir, lambda raw: Path(raw) if raw else None),
        redis_timeout_s=p.get("REDIS_TIMEOUT_S", d.redis_timeout_s, finite_float, lambda v: 0 < v <= 60,
                              "a number of seconds in (0, 60]"),
        redis_connections=p.get("REDIS_CONNECTIONS", d.redis_connections, int, lambda v: 1 <= v <= 64,
                                "an integer in 1..64"),
        memory_session_limit=p.get("MEMORY_SESSION_LIMIT", d.memory_session_limit, int,
                                   lambda v: 1 <= v <= 100_000_000, "an integer in 1..100000000"),
        mode=cast(Mode, p.get("MODE", d.mode, str.lower, lambda v: v in MODES, f"one of {', '.join(MODES)}")),
        admin_token=p.get("ADMIN_TOKEN", d.admin_token, str),
        api_keys=p.get("API_KEYS", d.api_keys, _api_keys, None,
                       f"a comma-separated list of keys, each at least {MIN_SECRET_LEN} characters of printable ASCII "
                       "without spaces", show=lambda raw: f"{len(raw.split(','))} key(s), not shown"),
        cookie_secret=p.get("COOKIE_SECRET", d.cookie_secret, str, lambda v: not v or len(v) >= MIN_SECRET_LEN,
                            f"empty or at least {MIN_SECRET_LEN} characters", show=lambda raw: f"{len(raw)} characters"),
        trusted_origins=p.get("TRUSTED_ORIGINS", d.trusted_origins, _origins, None,
                              "a comma-separated list of origins like https://example.com[:port]"),
        faiss_threads=p.get("FAISS_THREADS", d.faiss_threads, int, lambda v: 1 <= v <= 256, "an integer in 1..256"),
        reload_poll_s=p.get("RELOAD_POLL_S", d.reload_poll_s, finite_float, lambda v: v >= 0,
                            "a number of seconds >= 0 (0 = off)"),
        answer_cache_size=p.get("ANSWER_CACHE_SIZE", d.answer_cache_size, int, lambda v: 0 <= v <= 1_000_000,
                                "an integer in 0..1000000 (0 = off)"),
        access_log=p.get("ACCESS_LOG", d.access_log, boolean, None, "true or false"),
        rate_limit_per_min=p.get("RATE_LIMIT_PER_MIN", d.rate_limit_per_min, int, lambda v: 0 <= v <= 10_000_000,
                                 "an integer in 0..10000000 (0 = no limit)"),
        api_key_rate_limit_per_min=p.get("API_KEY_RATE_LIMIT_PER_MIN", d.api_key_rate_limit_per_min, int,
                                         lambda v: 0 <= v <= 100_000_000, "an integer in 0..100000000 (0 = no limit)"),
        admin_rate_limit_per_min=p.get("ADMIN_RATE_LIMIT_PER_MIN", d.admin_rate_limit_per_min, int,
                                       lambda v: 0 <= v <= 100_000, "an integer in 0..100000 (0 = no limit)"),
        max_in_flight=p.get("MAX_IN_FLIGHT", d.max_in_flight, int, lambda v: 0 <= v <= 1_000_000,
                            "an integer in 0..1000000 (0 = no limit)"),
        ops_details=cast(Literal["public", "private"], p.get("OPS_DETAILS", d.ops_details, str.lower,
                                                             lambda v: v in ("public", "private"),
                                                             "public or private")),
        max_header_bytes=p.get("MAX_HEADER_BYTES", d.max_header_bytes, int, lambda v: 1024 <= v <= 1 << 20,
                               "an integer number of bytes in 1024..1048576"),
        request_timeout_s=p.get("REQUEST_TIMEOUT_S", d.request_timeout_s, finite_float, lambda v: 0 < v <= 600,
                                "a number of seconds in (0, 600]"),
    )
    p.errors.extend(settings.kafka_security.problems())
    if "REDIS_MAX_CONNECTIONS" in values:
        p.errors.append("REDIS_MAX_CONNECTIONS is no longer read: the Redis client pipelines every request's calls "
                        "on REDIS_CONNECTIONS connections per worker (default 1), so no request waits for one; "
                        "remove it")
    if settings.memory_sessions and (settings.workers or 1) > 1:
        p.errors.append(f"WORKERS must be 1 or 'auto' with REDIS_URL=memory:// (each worker would keep its own "
                        f"sessions), got {settings.workers}")
    if settings.mode == "online":
        missing = [name for name in ("SPOTIPY_CLIENT_ID", "SPOTIPY_CLIENT_SECRET") if not getattr(settings, name.lower())]
        if missing:
            p.errors.append(f"MODE=online needs {' and '.join(missing)} (a Spotify app's client credentials): "
                            "without them every song outside the catalog would fail")
    p.raise_errors()
    return settings


def _redis_url(raw: str) -> str:
    """``raw`` if the Redis client can use it (scheme, port, db, options), else ValueError; memory:// as is."""
    if urlsplit(raw).scheme not in REDIS_SCHEMES:
        raise ValueError("scheme")
    if not raw.startswith("memory://"):
        RedisAddress.from_url(raw)
    return raw


def _api_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if any(len(k) < MIN_SECRET_LEN or not all(33 <= ord(c) <= 126 for c in k) for k in keys):
        raise ValueError("bad key")
    return keys


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ValueError(origin)
    return origins


def _workers(raw: str) -> int | None:
    return None if raw.lower() == "auto" else int(raw)


SERVICE_HELP: Final = {
    "ARTIFACTS_DIR": COMMON_HELP["ARTIFACTS_DIR"],
    "HOST": "address to listen on",
    "PORT": "port to listen on",
    "WORKERS": "uvicorn worker processes; auto: one per usable core (1 with memory:// sessions)",
    "REDIS_URL": "session store and online-track cache; memory:// keeps both in-process",
    "REDIS_TIMEOUT_S": "a slower Redis answer counts as down (in-process fallback until it recovers)",
    "REDIS_CONNECTIONS": "pipelined Redis connections per worker, shared by all its requests (none waits for one)",
    "SESSION_TTL_S": "seconds a listener's session lives after its last event",
    "SESSION_LEN": "events kept per listener",
    "MEMORY_SESSION_LIMIT": "listeners the in-process session store keeps per worker (memory://, or Redis down); "
                            "past it the least recently seen are dropped, counted and logged",
    "KAFKA_BOOTSTRAP_SERVERS": COMMON_HELP["KAFKA_BOOTSTRAP_SERVERS"],
    "KAFKA_TOPIC": COMMON_HELP["KAFKA_TOPIC"],
    "KAFKA_SECURITY_PROTOCOL": COMMON_HELP["KAFKA_SECURITY_PROTOCOL"],
    "KAFKA_SASL_MECHANISM": COMMON_HELP["KAFKA_SASL_MECHANISM"],
    "KAFKA_SASL_USERNAME": COMMON_HELP["KAFKA_SASL_USERNAME"],
    "KAFKA_SASL_PASSWORD": COMMON_HELP["KAFKA_SASL_PASSWORD"],
    "EVENT_BUFFER_SIZE": "events kept locally while Kafka is slow or down (oldest dropped when full)",
    "EVENT_SPILL_DIR": "undelivered Kafka events are written here at shutdown and sent first on the next start "
                       "(empty: off)",
    "RELOAD_POLL_S": "how often to look where `current` points (0 = never)",
    "ADMIN_TOKEN": "bearer token for POST /admin/reload (and private /metrics, /readyz); empty: the admin API is off",
    "API_KEYS": "comma-separated keys of calling apps (each >= 16 characters; several for rotation); set, /api/* "
                "and /events need one (or the browser cookie), and only they may name a listener (never logged)",
    "COOKIE_SECRET": "HMAC key signing the listener cookie (>= 16 characters); empty: a random one per start",
    "TRUSTED_ORIGINS": "origins (https://host[:port]) besides the service's own that may make cookie-authenticated "
                       "changes",
    "RATE_LIMIT_PER_MIN": "requests a minute per client address from callers without an API key (0 = no limit)",
    "API_KEY_RATE_LIMIT_PER_MIN": "requests a minute per API key (0 = no limit)",
    "ADMIN_RATE_LIMIT_PER_MIN": "requests a minute per address to /admin/* and admin-token attempts (0 = no limit)",
    "MAX_IN_FLIGHT": "requests one worker serves at once; more are answered 503 at once (0 = no limit)",
    "OPS_DETAILS": "public, or private: /metrics needs the admin token and /readyz tells others only its status",
    "FAISS_THREADS": "FAISS/BLAS threads per worker",
    "ANSWER_CACHE_SIZE": "encoded answers kept per worker by exact session state (0 = off)",
    "MODE": "offline, or online: also fetch unknown track ids from the Spotify Web API (needs SPOTIPY_*)",
    "SPOTIPY_CLIENT_ID": COMMON_HELP["SPOTIPY_CLIENT_ID"],
    "SPOTIPY_CLIENT_SECRET": COMMON_HELP["SPOTIPY_CLIENT_SECRET"],
    "SPOTIFY_API_URL": COMMON_HELP["SPOTIFY_API_URL"],
    "SPOTIFY_TOKEN_URL": COMMON_HELP["SPOTIFY_TOKEN_URL"],
    "LOG_LEVEL": COMMON_HELP["LOG_LEVEL"],
    "LOG_FORMAT": COMMON_HELP["LOG_FORMAT"],
    "ACCESS_LOG": "true: one log line per request, with its request id",
    "MAX_HEADER_BYTES": "request line plus headers, in bytes; a bigger head gets 431 and the connection is closed",
    "REQUEST_TIMEOUT_S": "a request must arrive whole (head and body) within this, else 408 and the connection is closed",
}
"""What each variable means, for ``musicrec serve --help``; a test checks it covers every Settings field."""
