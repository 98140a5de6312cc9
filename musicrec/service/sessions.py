"""The online feature store (each listener's most recent events, newest first) and the worker's Redis link.

Redis is the shared store (every worker and replica sees the same session); an in-process
store serves ``memory://`` and stands in while Redis is unreachable, because a
recommendation built from a partial session beats an error page. An outage never reaches a
request: the first failed call marks the worker's one ``RedisLink`` down (logged once, shown
in ``status`` and /readyz), every Redis user (this store, the online-track cache) serves from
memory without touching Redis, and a single background task probes with backoff until Redis
answers, then lets this store write what the outage collected (events, and clears) into Redis
before Redis serves again. What an outage can lose: the memory store holds at most
``max_clients`` listeners per worker (``MEMORY_SESSION_LIMIT``); past that the least recently
seen listener's outage events are dropped, and every such drop is counted (``evictions``, on
/metrics) and logged, never silent.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Final, Protocol, cast

import msgspec

from musicrec.service.lru import LRU
from musicrec.service.resp import Command, RedisClient, RedisError

if TYPE_CHECKING:
    from musicrec.service.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "musicrec:"
# What an outage looks like from the client (musicrec.service.resp): its own errors (lost connection,
# timeout, an error reply), plus OS-level errors (TLS among them) and timeouts that could escape around them.
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

    async def append_recent(self, client_id: str, event: SessionEvent) -> list[SessionEvent]:
        """``append`` then ``recent`` as one call: a played track and its next tracks in one round trip."""
        ...

    async def clear(self, client_id: str) -> None: ...

    @property
    def status(self) -> str:
        """"ok" (Redis answering), "degraded" (Redis configured but down) or "memory" (memory://)."""
        ...

    @property
    def evictions(self) -> tuple[int, int]:
        """(listeners, events) the in-process store dropped to stay within its bound, since start."""
        ...


class MemorySessionStore:
    """In-process sessions with Redis-like semantics: capped length, TTL refreshed on write.

    The number of listeners is bounded too (least recently used evicted first, ``LRU``), so a
    flood of new client ids cannot grow the process without limit while Redis is down. Each
    eviction is counted (listeners and their events) and logged, at most every
    ``evict_log_interval_s`` with the running totals: a session lost this way is never silent.
    """

    def __init__(self, max_len: int, ttl_s: float, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic, evict_log_interval_s: float = 10.0) -> None:
        if max_len < 1 or ttl_s <= 0 or max_clients < 1:
            raise ValueError(f"need max_len >= 1, ttl_s > 0, max_clients >= 1; got {max_len}, {ttl_s}, {max_clients}")
        self.max_len = max_len
        self.ttl_s = ttl_s
        self.max_clients = max_clients
        self.evicted_listeners = 0
        """Listeners dropped to keep the store within ``max_clients`` (their unexpired events are lost)."""
        self.evicted_events = 0
        self._clock = clock
        self._evict_log_interval_s = evict_log_interval_s
        self._last_evict_log = float("-inf")
        self._sessions: LRU[str, deque[SessionEvent]] = LRU(max_clients, clock=clock, on_evict=self._evicted)

    @property
    def status(self) -> str:
        return "memory"

    @property
    def evictions(self) -> tuple[int, int]:
        return self.evicted_listeners, self.evicted_events

    def _evicted(self, client_id: str, events: deque[SessionEvent]) -> None:
        self.evicted_listeners += 1
        self.evicted_events += len(events)
        now = self._clock()
        if now - self._last_evict_log >= self._evict_log_interval_s:
            self._last_evict_log = now
            log.warning("in-process session store full (%d listeners): dropping the least recently seen; "
                        "%d listeners' sessions (%d events) dropped so far", self.max_clients,
                        self.evicted_listeners, self.evicted_events)

    def __len__(self) -> int:
        """Listeners currently held (expired ones may linger until touched or evicted)."""
        return len(self._sessions)

    async def append(self, client_id: str, event: SessionEvent) -> None:
        self.append_now(client_id, event)

    async def recent(self, client_id: str) -> list[SessionEvent]:
        return self.recent_now(client_id)

    async def append_recent(self, client_id: str, event: SessionEvent) -> list[SessionEvent]:
        self.append_now(client_id, event)
        return self.recent_now(client_id)

    async def clear(self, client_id: str) -> None:
        self._sessions.pop(client_id)

    def drain(self) -> list[tuple[str, list[SessionEvent], float]]:
        """Take every live session out, as (client id, events newest first, seconds to live); empties the store."""
        taken = [(client_id, list(events), float(left or self.ttl_s)) for client_id, events, left in self._sessions.live()]
        self._sessions.clear()
        return taken

    def restore(self, client_id: str, events: list[SessionEvent], ttl_s: float) -> None:
        """Put ``drain``-ed events (newest first) back, behind any this client appended since."""
        kept = self._sessions.get(client_id)
        if kept is None:
            self._sessions.put(client_id, deque(events[:self.max_len], maxlen=self.max_len), ttl_s)
        else:
            kept.extend(events[:self.max_len - len(kept)])  # the older end; a full deque takes none

    def append_now(self, client_id: str, event: SessionEvent) -> None:
        """Synchronous append: nothing here awaits, so the store needs no lock."""
        events = self._sessions.get(client_id)
        if events is None:
            events = deque(maxlen=self.max_len)
        events.appendleft(event)
        self._sessions.put(client_id, events, self.ttl_s)  # a write refreshes the time to live

    def recent_now(self, client_id: str) -> list[SessionEvent]:
        events = self._sessions.get(client_id)  # a read is a use, for the LRU bound
        return [] if events is None else list(events)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(SessionEvent).decode


class RedisLink:
    """The worker's one Redis client and whether it answers, shared by everything kept in Redis.

    Why one: the session store and the online-track cache both fall back to memory when Redis
    fails; with a mechanism each they had two opinions of whether Redis was up, the cache opened
    a connection per call, and its state never reached /readyz. A user checks ``up`` before a
    call and calls ``mark_down`` when one fails. From then on no user touches Redis; one task
    probes it with backoff, runs the recovery hooks (the session store writes back the outage's
    events; a hook that hits Redis down again means another probe later), and only then reports
    ``up`` again. ``start()`` once inside a running loop; ``close()`` stops the task (the caller
    closes the client it owns).
    """

    def __init__(self, client: RedisClient, *, backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0) -> None:
        self.client = client
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._down = False
        self.outages = 0
        """Times the link went down; one per real outage (a flap after recovery would show here)."""
        self._down_since = 0.0
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False
        self._recover_hooks: list[Callable[[], Awaitable[None]]] = []

    @property
    def up(self) -> bool:
        return not self._down

    @property
    def status(self) -> str:
        return "degraded" if self._down else "ok"

    def on_recover(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` after Redis answers again and before users go back to it."""
        self._recover_hooks.append(hook)

    async def start(self) -> None:
        """Probe Redis once, so a link whose Redis is down at start-up begins degraded."""
        try:
            await self.client.ping()
        except REDIS_DOWN as exc:
            self.mark_down(exc)

    async def close(self) -> None:
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
            self._reconnect = None

    def mark_down(self, exc: BaseException) -> None:
        """Switch every user to memory; log once per outage; one reconnect task does the probing."""
        if self._down or self._closed:
            return
        self._down = True
        self.outages += 1
        self._down_since = time.monotonic()
        log.warning("redis unreachable (%s: %s); serving sessions (and the online-track cache) from memory until "
                    "it answers again", type(exc).__name__, exc)
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop(), name="redis-reconnect")

    async def _reconnect_loop(self) -> None:
        delay = self.backoff_initial_s
        while True:
            await asyncio.sleep(delay)
            try:
                # A connection from before the outage may be a dead socket the client has not noticed
                # yet (or, after a stall, hold replies nobody reads); kept, it would fail once after
                # recovery and flap every user back to memory. Drop it: the probe opens a fresh one.
                self.client.disconnect()
                await self.client.ping()
                for hook in self._recover_hooks:
                    await hook()
            except REDIS_DOWN as exc:
                log.debug("redis still unreachable (%s); next probe in %.1fs", exc, delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self._down = False
            self._reconnect = None
            log.warning("redis reachable again after %.1fs", time.monotonic() - self._down_since)
            return


class RedisSessionStore:
    """Sessions in Redis lists (``LPUSH`` newest, ``LTRIM`` to length, ``EXPIRE`` on write).

    The client is injected (its timeout bounds every call), alone or as the worker's
    shared ``link``; ``open_session_store`` builds one from settings. Without a ``link`` the
    store makes its own, and then ``start()`` and ``close()`` are its to call.
    """

    def __init__(self, client: RedisClient, *, max_len: int, ttl_s: int, prefix: str = DEFAULT_PREFIX,
                 fallback: MemorySessionStore | None = None, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 10.0, link: RedisLink | None = None) -> None:
        self.link = link or RedisLink(client, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
        self._owns_link = link is None
        self.client = self.link.client
        self.max_len = max_len
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.fallback = fallback if fallback is not None else MemorySessionStore(max_len, ttl_s)  # (an empty one is falsy)
        self._cleared: set[str] = set()  # clients whose session was cleared during an outage
        self.link.on_recover(self._replay_logged)

    @property
    def status(self) -> str:
        return self.link.status

    @property
    def evictions(self) -> tuple[int, int]:
        return self.fallback.evictions

    def key(self, client_id: str) -> str:
        return f"{self.prefix}session:{client_id}"

    async def start(self) -> None:
        if self._owns_link:
            await self.link.start()

    async def close(self) -> None:
        if self._owns_link:
            await self.link.close()

    async def append(self, client_id: str, event: SessionEvent) -> None:
        if self.link.up:
            key = self.key(client_id)
            try:
                await self.client.pipeline(self._write(key, [_encode(event)], self.ttl_s))
                return
            except REDIS_DOWN as exc:
                self.link.mark_down(exc)
        self.fallback.append_now(client_id, event)

    async def recent(self, client_id: str) -> list[SessionEvent]:
        if self.link.up:
            try:
                raw = await self.client.execute(b"LRANGE", self.key(client_id), 0, self.max_len - 1)
            except REDIS_DOWN as exc:
                self.link.mark_down(exc)
            else:
                return self._decode_all(client_id, raw)
        return self.fallback.recent_now(client_id)

    async def append_recent(self, client_id: str, event: SessionEvent) -> list[SessionEvent]:
        """One pipeline (push, trim, expire, read): half the Redis round trips of append + recent."""
        if self.link.up:
            key = self.key(client_id)
            try:
                replies = await self.client.pipeline([*self._write(key, [_encode(event)], self.ttl_s),
                                                      (b"LRANGE", key, 0, self.max_len - 1)])
                return self._decode_all(client_id, replies[-1])
            except REDIS_DOWN as exc:
                self.link.mark_down(exc)
        self.fallback.append_now(client_id, event)
        return self.fallback.recent_now(client_id)

    async def clear(self, client_id: str) -> None:
        if self.link.up:
            try:
                await self.client.execute(b"DEL", self.key(client_id))
            except REDIS_DOWN as exc:
                self.link.mark_down(exc)
        if not self.link.up:  # Redis still holds the old session: delete it there on recovery
            if len(self._cleared) < self.fallback.max_clients:
                self._cleared.add(client_id)
            else:
                log.warning("too many sessions cleared during the redis outage; %s's will reappear", client_id)
        await self.fallback.clear(client_id)  # also forget what an outage may have collected

    def _write(self, key: str, encoded: list[bytes], ttl_s: int) -> list[Command]:
        """A session write: push ``encoded`` (oldest first, so the last is the newest), keep the newest
        ``max_len``, and (re)set the time to live."""
        return [(b"LPUSH", key, *encoded), (b"LTRIM", key, 0, self.max_len - 1), (b"EXPIRE", key, ttl_s)]

    def _decode_all(self, client_id: str, raw: list[bytes]) -> list[SessionEvent]:
        events: list[SessionEvent] = []
        for item in raw:
            try:
                events.append(_decode(item))
            except msgspec.DecodeError as exc:
                # One unreadable entry (an older format, a stray write) must not cost the whole session.
                log.warning("skipping an undecodable session entry for %s: %s", client_id, exc)
        return events

    async def _replay_logged(self) -> None:
        replayed = await self._replay()
        log.warning("sessions back in redis (%d listeners' outage events written to it)", replayed)

    async def _replay(self, batch: int = 500) -> int:
        """Write the outage's clears and events into Redis, until the memory store stays empty.

        Requests keep appending to memory meanwhile (the link is still down), so it drains
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
                    await self.client.execute(b"DEL", *(self.key(c) for c in cleared))
                    cleared = set()
                for start in range(0, len(sessions), batch):
                    commands: list[Command] = []
                    for client_id, events, ttl_s in sessions[start:start + batch]:
                        commands += self._write(self.key(client_id), [_encode(e) for e in reversed(events)],
                                                max(1, math.ceil(ttl_s)))
                    await self.client.pipeline(commands)
                    done = min(start + batch, len(sessions))
            except REDIS_DOWN:
                self._cleared |= cleared
                for client_id, events, ttl_s in sessions[done:]:
                    self.fallback.restore(client_id, events, ttl_s)
                raise
            written += len(sessions)


@asynccontextmanager
async def open_redis_link(settings: "Settings") -> AsyncIterator[RedisLink | None]:
    """The worker's Redis link from settings (None with ``memory://``), started; stopped and its client closed on exit."""
    if settings.memory_sessions:
        yield None
        return
    # One client per worker: its pipelined connection(s) carry every concurrent request's calls, so
    # no request waits for a connection (the pool redis-py needed did, and that read as an outage).
    link = RedisLink(RedisClient.from_url(settings.redis_url, timeout_s=settings.redis_timeout_s,
                                          connections=settings.redis_connections))
    try:
        await link.start()
        yield link
    finally:
        await link.close()
        await link.client.aclose()


@asynccontextmanager
async def open_session_store(settings: "Settings", *, prefix: str = DEFAULT_PREFIX,
                             link: RedisLink | None = None) -> AsyncIterator[SessionStore]:
    """The session store the settings ask for, on ``link`` when given (its owner starts and closes it),
    else on a client of its own, closed (client and reconnect task) on exit."""
    memory = MemorySessionStore(settings.session_len, settings.session_ttl_s, settings.memory_session_limit)
    if settings.memory_sessions:
        yield memory
        return
    if link is not None:
        yield RedisSessionStore(link.client, max_len=settings.session_len, ttl_s=settings.session_ttl_s, prefix=prefix,
                                link=link, fallback=memory)
        return
    async with open_redis_link(settings) as own:
        own = cast(RedisLink, own)  # not memory:// (answered above), so there is a link
        yield RedisSessionStore(own.client, max_len=settings.session_len, ttl_s=settings.session_ttl_s, prefix=prefix,
                                link=own, fallback=memory)
