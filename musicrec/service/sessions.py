"""The online feature store: each listener's most recent events, newest first.

Redis is the shared store (every worker and replica sees the same session); an in-process
store serves ``memory://`` and stands in while Redis is unreachable, because a
recommendation built from a partial session beats an error page. The Redis store never
lets an outage reach a request: it switches to its embedded memory store, says so once in
the log and in ``status``, and a single background task probes Redis with backoff until
it answers again, then writes what the outage collected (events, and clears) into Redis
before Redis serves again, so no session event is lost to an outage.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator, Callable, Final, Protocol

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from musicrec.service.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "musicrec:"
# What an outage looks like from redis-py: its own errors (ConnectionError, TimeoutError, ...),
# plus OS-level socket errors and asyncio timeouts that can escape around them.
REDIS_DOWN: Final = (RedisError, OSError, TimeoutError)


class SessionEvent(msgspec.Struct, frozen=True, array_like=True):
    """One event as kept in a session: encoded as a 3-item msgpack array to stay small in Redis."""

    type: str
    track_id: str
    ts: float


class SessionStore(Protocol):
    """What the service needs from a session store; both implementations below satisfy it."""

    async def append(self, client_id: str, event: SessionEvent) -> None: ...

    async def recent(self, client_id: str) -> list[SessionEvent]:
        """Newest first, at most ``session_len`` events."""
        ...

    async def clear(self, client_id: str) -> None: ...

    @property
    def status(self) -> str:
        """"ok" (Redis answering), "degraded" (Redis configured but down) or "memory" (memory://)."""
        ...


class MemorySessionStore:
    """In-process sessions with Redis-like semantics: capped length, TTL refreshed on write.

    The number of listeners is bounded too (least recently used evicted first), so a flood
    of new client ids cannot grow the process without limit while Redis is down.
    """

    def __init__(self, max_len: int, ttl_s: float, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_len < 1 or ttl_s <= 0 or max_clients < 1:
            raise ValueError(f"need max_len >= 1, ttl_s > 0, max_clients >= 1; got {max_len}, {ttl_s}, {max_clients}")
        self.max_len = max_len
        self.ttl_s = ttl_s
        self.max_clients = max_clients
        self._clock = clock
        self._sessions: OrderedDict[str, tuple[deque[SessionEvent], float]] = OrderedDict()

    @property
    def status(self) -> str:
        return "memory"

    def __len__(self) -> int:
        """Listeners currently held (expired ones may linger until touched or evicted)."""
        return len(self._sessions)

    async def append(self, client_id: str, event: SessionEvent) -> None:
        self.append_now(client_id, event)

    async def recent(self, client_id: str) -> list[SessionEvent]:
        return self.recent_now(client_id)

    async def clear(self, client_id: str) -> None:
        self._sessions.pop(client_id, None)

    def drain(self) -> list[tuple[str, list[SessionEvent], float]]:
        """Take every live session out, as (client id, events newest first, seconds to live); empties the store."""
        now = self._clock()
        taken = [(client_id, list(events), expires - now) for client_id, (events, expires) in self._sessions.items()
                 if expires > now]
        self._sessions.clear()
        return taken

    def restore(self, client_id: str, events: list[SessionEvent], ttl_s: float) -> None:
        """Put ``drain``-ed events (newest first) back, behind any this client appended since."""
        now = self._clock()
        entry = self._sessions.get(client_id)
        if entry is None or entry[1] <= now:
            self._sessions[client_id] = (deque(events[:self.max_len], maxlen=self.max_len), now + ttl_s)
        else:
            kept = entry[0]
            kept.extend(events[:self.max_len - len(kept)])  # the older end; a full deque takes none
        while len(self._sessions) > self.max_clients:
            self._sessions.popitem(last=False)

    def append_now(self, client_id: str, event: SessionEvent) -> None:
        """Synchronous append: nothing here awaits, so the store needs no lock."""
        now = self._clock()
        entry = self._sessions.pop(client_id, None)
        events = entry[0] if entry is not None and entry[1] > now else deque(maxlen=self.max_len)
        events.appendleft(event)
        self._sessions[client_id] = (events, now + self.ttl_s)
        while len(self._sessions) > self.max_clients:
            self._sessions.popitem(last=False)

    def recent_now(self, client_id: str) -> list[SessionEvent]:
        entry = self._sessions.get(client_id)
        if entry is None:
            return []
        if entry[1] <= self._clock():
            del self._sessions[client_id]
            return []
        self._sessions.move_to_end(client_id)  # a read is a use, for the LRU bound
        return list(entry[0])


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(SessionEvent).decode


class RedisSessionStore:
    """Sessions in Redis lists (``LPUSH`` newest, ``LTRIM`` to length, ``EXPIRE`` on write).

    The client is injected (its socket timeouts bound every call); ``open_session_store``
    builds one from settings. Call ``start()`` once inside a running loop, ``close()`` at
    the end (it stops the reconnect task; the caller closes the client it owns).
    """

    def __init__(self, client: Redis, *, max_len: int, ttl_s: int, prefix: str = DEFAULT_PREFIX,
                 fallback: MemorySessionStore | None = None, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 10.0) -> None:
        self.client = client
        self.max_len = max_len
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.fallback = fallback or MemorySessionStore(max_len, ttl_s)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._degraded = False
        self._down_since = 0.0
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False
        self._cleared: set[str] = set()  # clients whose session was cleared during an outage

    @property
    def status(self) -> str:
        return "degraded" if self._degraded else "ok"

    def key(self, client_id: str) -> str:
        return f"{self.prefix}session:{client_id}"

    async def start(self) -> None:
        """Probe Redis once, so a store whose Redis is down at start-up begins degraded."""
        try:
            await self.client.ping()
        except REDIS_DOWN as exc:
            self._mark_down(exc)

    async def close(self) -> None:
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
            self._reconnect = None

    async def append(self, client_id: str, event: SessionEvent) -> None:
        if not self._degraded:
            key = self.key(client_id)
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.lpush(key, _encode(event)).ltrim(key, 0, self.max_len - 1).expire(key, self.ttl_s)
                    await pipe.execute()
                return
            except REDIS_DOWN as exc:
                self._mark_down(exc)
        self.fallback.append_now(client_id, event)

    async def recent(self, client_id: str) -> list[SessionEvent]:
        if not self._degraded:
            try:
                raw = await self.client.lrange(self.key(client_id), 0, self.max_len - 1)
            except REDIS_DOWN as exc:
                self._mark_down(exc)
            else:
                return self._decode_all(client_id, raw)
        return self.fallback.recent_now(client_id)

    async def clear(self, client_id: str) -> None:
        if not self._degraded:
            try:
                await self.client.delete(self.key(client_id))
            except REDIS_DOWN as exc:
                self._mark_down(exc)
        if self._degraded:  # Redis still holds the old session: delete it there on recovery
            if len(self._cleared) < self.fallback.max_clients:
                self._cleared.add(client_id)
            else:
                log.warning("too many sessions cleared during the redis outage; %s's will reappear", client_id)
        await self.fallback.clear(client_id)  # also forget what an outage may have collected

    def _decode_all(self, client_id: str, raw: list[bytes]) -> list[SessionEvent]:
        events: list[SessionEvent] = []
        for item in raw:
            try:
                events.append(_decode(item))
            except msgspec.DecodeError as exc:
                # One unreadable entry (an older format, a stray write) must not cost the whole session.
                log.warning("skipping an undecodable session entry for %s: %s", client_id, exc)
        return events

    def _mark_down(self, exc: BaseException) -> None:
        """Switch to the memory fallback; log once per outage; one reconnect task does the probing."""
        if self._degraded or self._closed:
            return
        self._degraded = True
        self._down_since = time.monotonic()
        log.warning("redis unreachable (%s: %s); serving sessions from memory until it answers again",
                    type(exc).__name__, exc)
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop(), name="redis-reconnect")

    async def _reconnect_loop(self) -> None:
        delay = self.backoff_initial_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.client.ping()
            except REDIS_DOWN as exc:
                log.debug("redis still unreachable (%s); next probe in %.1fs", exc, delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            try:
                replayed = await self._replay()
            except REDIS_DOWN as exc:
                log.debug("redis failed while taking back the outage's sessions (%s); next probe in %.1fs", exc, delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            # Nothing awaited since the last drain came back empty: every event is in Redis now,
            # and the memory store is empty, so a later outage cannot resurrect stale sessions.
            self._degraded = False
            self._reconnect = None
            log.warning("redis reachable again after %.1fs; sessions back in redis (%d listeners' outage events "
                        "written to it)", time.monotonic() - self._down_since, replayed)
            return

    async def _replay(self, batch: int = 500) -> int:
        """Write the outage's clears and events into Redis, until the memory store stays empty.

        Requests keep appending to memory meanwhile (the store is still degraded), so it drains
        again after each pass. Each listener's outage events go on top of what Redis held from
        before the outage, oldest first, with the time to live they had left. On a failure, what
        was not written goes back to memory for the next attempt (a pipeline cut off midway may
        then write a few events twice; seeds take each track once, so an answer hardly changes).
        Returns the number of listeners whose events were written.
        """
        written = 0
        while True:
            cleared, self._cleared = self._cleared, set()
            sessions = self.fallback.drain()
            if not cleared and not sessions:
                return written
            done = 0
            try:
                if cleared:
                    await self.client.delete(*(self.key(c) for c in cleared))
                    cleared = set()
                for start in range(0, len(sessions), batch):
                    async with self.client.pipeline(transaction=False) as pipe:
                        for client_id, events, ttl_s in sessions[start:start + batch]:
                            key = self.key(client_id)
                            pipe.lpush(key, *(_encode(e) for e in reversed(events)))
                            pipe.ltrim(key, 0, self.max_len - 1).expire(key, max(1, math.ceil(ttl_s)))
                        await pipe.execute()
                    done = min(start + batch, len(sessions))
            except REDIS_DOWN:
                self._cleared |= cleared
                for client_id, events, ttl_s in sessions[done:]:
                    self.fallback.restore(client_id, events, ttl_s)
                raise
            written += len(sessions)


def redis_client(url: str, timeout_s: float, max_connections: int = 64) -> Redis:
    """A redis.asyncio client whose every call is bounded by ``timeout_s`` and never retried.

    redis-py retries connection errors 3 times with backoff by default; here a failed call
    should fail fast and let the store fall back, so retries are off.

    The pool blocks (up to ``timeout_s``) when all ``max_connections`` are busy. redis-py's
    default pool raises "Too many connections" at once instead, so a burst of more than 100
    concurrent requests in one worker looked like a Redis outage: sessions flapped to memory
    and back and the worker fell further behind (benchmarks/README.md, the 1M load test).
    """
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0)
    return Redis.from_pool(pool)


@asynccontextmanager
async def open_session_store(settings: "Settings", *, prefix: str = DEFAULT_PREFIX) -> AsyncIterator[SessionStore]:
    """The session store the settings ask for, closed (client and reconnect task) on exit."""
    if settings.memory_sessions:
        yield MemorySessionStore(settings.session_len, settings.session_ttl_s)
        return
    client = redis_client(settings.redis_url, settings.redis_timeout_s, settings.redis_max_connections)
    store = RedisSessionStore(client, max_len=settings.session_len, ttl_s=settings.session_ttl_s, prefix=prefix)
    try:
        await store.start()
        yield store
    finally:
        await store.close()
        await client.aclose()
