"""Service settings: parsed once from the environment (and an optional ``.env``), then frozen.

Nothing here runs at import time: ``Settings.from_env()`` is called by whoever starts the
service (``python -m musicrec.service``, the ASGI factory, a test), so tests build their own Settings
from a plain dict instead of patching ``os.environ`` before an import.

Every value is validated up front so a typo fails the start with the variable's name and
the bad value, rather than surfacing as a strange error on the first request. Secrets are
kept out of ``repr()`` and out of ``masked()``, the dict the start-up log prints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Final, Literal, Mapping, TypeVar, cast
from urllib.parse import urlsplit

from dotenv import dotenv_values

Mode = Literal["offline", "online"]
MODES: Final = ("offline", "online")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES: Final = ("redis", "rediss", "unix", "memory")
MASK: Final = "***"

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable is missing its expected shape; the message names each variable and bad value."""


@dataclass(frozen=True, repr=False)
class Settings:
    artifacts_dir: Path = Path("artifacts")
    """A version directory, or a root holding versions and a ``current`` link."""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int | None = None
    """uvicorn worker processes; None (``WORKERS=auto``) means ``worker_count``'s choice."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """``memory://`` keeps sessions in-process (one worker, lost on restart)."""
    kafka_bootstrap_servers: str = ""
    """Comma-separated ``host:port`` list; empty means no Kafka (events stay in a bounded buffer)."""
    kafka_topic: str = "music-events"
    session_ttl_s: int = 3600
    session_len: int = 20
    event_buffer_size: int = 10_000
    redis_timeout_s: float = 0.25
    redis_max_connections: int = 64
    """Redis connections per worker; a request waits (up to ``redis_timeout_s``) for a free one."""
    log_level: str = "INFO"
    mode: Mode = "offline"
    admin_token: str = ""
    spotipy_client_id: str = ""
    spotipy_client_secret: str = ""
    faiss_threads: int = 1
    """Threads FAISS/BLAS may use per worker (pinned at start-up; see musicrec.index.engine)."""
    reload_poll_s: float = 5.0
    """How often the artefact watcher checks ``current``; 0 turns the watcher off."""
    answer_cache_size: int = 4096
    """Encoded "what next?" answers kept per worker, by exact session state (musicrec.service.answers); 0 = off."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 env_file: str | Path | None = ".env") -> "Settings":
        """Build Settings from ``environ`` (default ``os.environ``) over the values in ``env_file``.

        The environment wins over the file so a deployment can override a checked-in
        ``.env``; a missing file is fine (production usually has none). All problems are
        collected and raised together as one SettingsError.
        """
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return _parse(values)

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

    @property
    def kafka_enabled(self) -> bool:
        return bool(self.kafka_bootstrap_servers.strip())

    def masked(self) -> dict[str, Any]:
        """The settings as a plain dict, safe to log: tokens, secrets and URL passwords masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                value = MASK if value else ""
            elif f.name == "redis_url":
                value = mask_url(value)
            elif f.name == "kafka_bootstrap_servers":
                value = ",".join(mask_url(part) for part in value.split(",")) if value else ""
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"Settings({inner})"


_SECRET_FIELDS: Final = frozenset({"admin_token", "spotipy_client_secret"})


def mask_url(url: str) -> str:
    """Replace the password in ``scheme://user:password@host`` (or ``user:password@host``) with ***."""
    if "@" not in url:
        return url
    head, sep, tail = url.rpartition("@")
    scheme, has_scheme, userinfo = head.partition("://")
    if not has_scheme:
        scheme, userinfo = "", head
    user, has_password, _ = userinfo.partition(":")
    # Without a colon the lone part may still be a password (``redis://secret@host``): mask it too.
    masked_info = f"{user}:{MASK}" if has_password else MASK
    return f"{scheme}{has_scheme}{masked_info}{sep}{tail}"


class _Parser:
    """Reads each variable once, converting and range-checking it, and collects every error."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values
        self.errors: list[str] = []

    def get(self, name: str, default: T, convert: Callable[[str], T], check: Callable[[T], bool] | None = None,
            expected: str = "", *, show: Callable[[str], str] = repr) -> T:
        raw = self.values.get(name)
        if raw is None:
            return default
        raw = raw.strip()
        shown = show(raw)
        try:
            value = convert(raw)
        except ValueError:
            self.errors.append(f"{name} must be {expected}, got {shown}")
            return default
        if check is not None and not check(value):
            self.errors.append(f"{name} must be {expected}, got {shown}")
            return default
        return value


def _finite_float(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(raw)
    return value


def _parse(values: Mapping[str, str]) -> Settings:
    p = _Parser(values)
    d = Settings()
    settings = Settings(
        artifacts_dir=Path(p.get("ARTIFACTS_DIR", str(d.artifacts_dir), str, bool, "a non-empty path")),
        host=p.get("HOST", d.host, str, bool, "a non-empty host name or address"),
        port=p.get("PORT", d.port, int, lambda v: 1 <= v <= 65535, "an integer in 1..65535"),
        workers=p.get("WORKERS", d.workers, _workers, lambda v: v is None or v >= 1, "'auto' or an integer >= 1"),
        redis_url=p.get("REDIS_URL", d.redis_url, str, lambda u: urlsplit(u).scheme in REDIS_SCHEMES,
                        f"a URL with scheme {'/'.join(REDIS_SCHEMES)} (e.g. redis://host:6379/0 or memory://)",
                        show=lambda raw: repr(mask_url(raw))),
        kafka_bootstrap_servers=p.get("KAFKA_BOOTSTRAP_SERVERS", d.kafka_bootstrap_servers, str, _valid_bootstrap,
                                      "empty or a comma-separated list of host:port",
                                      show=lambda raw: repr(",".join(mask_url(x) for x in raw.split(",")))),
        kafka_topic=p.get("KAFKA_TOPIC", d.kafka_topic, str, _valid_topic,
                          "a Kafka topic name (1..249 of letters, digits, '.', '_', '-')"),
        session_ttl_s=p.get("SESSION_TTL_S", d.session_ttl_s, int, lambda v: v > 0, "an integer number of seconds > 0"),
        session_len=p.get("SESSION_LEN", d.session_len, int, lambda v: 1 <= v <= 1000, "an integer in 1..1000"),
        event_buffer_size=p.get("EVENT_BUFFER_SIZE", d.event_buffer_size, int, lambda v: v >= 1, "an integer >= 1"),
        redis_timeout_s=p.get("REDIS_TIMEOUT_S", d.redis_timeout_s, _finite_float, lambda v: 0 < v <= 60,
                              "a number of seconds in (0, 60]"),
        redis_max_connections=p.get("REDIS_MAX_CONNECTIONS", d.redis_max_connections, int, lambda v: 1 <= v <= 10_000,
                                    "an integer in 1..10000"),
        log_level=p.get("LOG_LEVEL", d.log_level, str.upper, lambda v: v in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
        mode=cast(Mode, p.get("MODE", d.mode, str.lower, lambda v: v in MODES, f"one of {', '.join(MODES)}")),
        admin_token=p.get("ADMIN_TOKEN", d.admin_token, str),
        spotipy_client_id=p.get("SPOTIPY_CLIENT_ID", d.spotipy_client_id, str),
        spotipy_client_secret=p.get("SPOTIPY_CLIENT_SECRET", d.spotipy_client_secret, str),
        faiss_threads=p.get("FAISS_THREADS", d.faiss_threads, int, lambda v: 1 <= v <= 256, "an integer in 1..256"),
        reload_poll_s=p.get("RELOAD_POLL_S", d.reload_poll_s, _finite_float, lambda v: v >= 0,
                            "a number of seconds >= 0 (0 = off)"),
        answer_cache_size=p.get("ANSWER_CACHE_SIZE", d.answer_cache_size, int, lambda v: 0 <= v <= 1_000_000,
                                "an integer in 0..1000000 (0 = off)"),
    )
    if settings.memory_sessions and (settings.workers or 1) > 1:
        p.errors.append(f"WORKERS must be 1 or 'auto' with REDIS_URL=memory:// (each worker would keep its own "
                        f"sessions), got {settings.workers}")
    if p.errors:
        raise SettingsError("invalid settings: " + "; ".join(p.errors))
    return settings


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one (containers, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _workers(raw: str) -> int | None:
    return None if raw.lower() == "auto" else int(raw)


def _valid_bootstrap(value: str) -> bool:
    if not value:
        return True
    for part in value.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not (host and sep and port.isdigit() and 1 <= int(port) <= 65535):
            return False
    return True


def _valid_topic(value: str) -> bool:
    return 0 < len(value) <= 249 and all(c.isascii() and (c.isalnum() or c in "._-") for c in value)
