"""A lean asyncio Redis client: RESP2 on pipelined connections, replies matched to calls in order.

Why not redis-py: on a cached recommendation its per-call machinery (a retry wrapper, pool
acquire and release, a timeout context and a task per command, packing and parsing) cost more
CPU than the rest of the request's Redis work. Here a call packs its command(s) with hiredis,
writes them in one ``transport.write`` and awaits one future. Concurrent callers share the
connection: Redis answers each connection's commands in the order sent, so replies are handed to
the pending calls first in, first out. A call whose caller gave up (cancelled) keeps its place,
and its reply is read and dropped, never handed to a later call.

Timeouts cost no timer per call: a watchdog per connection looks at its oldest unanswered call
when that call is due. Late, it looks once more a moment later, after the loop has read the
socket (so a busy event loop is not mistaken for a slow Redis); still late, it aborts the
connection and every pending call fails with ``RedisTimeoutError``. A lost connection fails its
pending calls with ``RedisConnectionError``; the next call opens a new one.
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Final, Iterable, Sequence, Union
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

Arg = Union[bytes, str, int, float]
Command = Sequence[Arg]
Reply = Any
"""bytes, int, None, or a list of replies (RESP2 has no other types)."""

_pack: Final = hiredis.pack_command
SECOND_LOOK_S: Final = 0.01
"""How long after finding a call late the watchdog looks again (capped at a quarter of the timeout)."""


class RedisError(Exception):
    """Anything this client raises; the service reads every one as "Redis is not answering"."""


class RedisReplyError(RedisError):
    """Redis answered a command with an error reply (``ERR ...``, ``WRONGTYPE ...``, ``NOAUTH ...``)."""


class RedisConnectionError(RedisError, ConnectionError):
    """No connection to Redis, or it was lost with calls pending."""


class RedisTimeoutError(RedisError, TimeoutError):
    """Redis did not answer (or accept the connection) within the client's timeout."""


class RedisProtocolError(RedisError):
    """Bytes from the server that are not RESP, or a reply nobody asked for."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in, from a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL.

    ``redis://[[user]:password@]host[:port][/db]`` (``?db=N`` also works); a lone
    ``redis://secret@host`` is read as a password, as the settings' masking assumes. The password
    never appears in ``repr`` or ``str``.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    """A unix socket's path (``unix:///run/redis.sock``); host and port are then unused."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> "RedisAddress":
        """Parse ``url``; ValueError (without the password) on anything this client cannot honour."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"a Redis URL needs the scheme redis, rediss or unix, got {parts.scheme!r}")
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        unknown = sorted(set(query) - {"db"})
        if unknown:
            raise ValueError(f"unsupported Redis URL option(s): {', '.join(unknown)} (only db is read)")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if password is None and username is not None and ":" not in parts.netloc.rpartition("@")[0]:
            username, password = None, username
        db_text = query["db"][-1] if "db" in query else ""
        if parts.scheme != "unix" and not db_text:
            db_text = unquote(parts.path).strip("/")
        try:
            db = int(db_text or 0)
        except ValueError:
            raise ValueError(f"the Redis database must be a number, got {db_text!r}") from None
        if db < 0:
            raise ValueError(f"the Redis database must be >= 0, got {db}")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// Redis URL needs a socket path (unix:///path/to/redis.sock)")
            return cls(path=unquote(parts.path), db=db, username=username, password=password)
        port = parts.port or 6379  # .port raises ValueError for a bad one
        return cls(host=parts.hostname or "127.0.0.1", port=port, db=db, username=username, password=password,
                   tls=parts.scheme == "rediss")

    def __str__(self) -> str:
        where = f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{where}/{self.db}" + (" (tls)" if self.tls else "")

    def handshake(self) -> list[Command]:
        """What a new connection sends before anything else: AUTH if a password is set, SELECT unless db 0."""
        commands: list[Command] = []
        if self.password is not None:
            commands.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


class _Connection(asyncio.Protocol):
    """One socket to Redis: calls in flight in a FIFO, replies parsed by hiredis, a watchdog on the oldest."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._second_look_s = min(SECOND_LOOK_S, timeout_s / 4)
        self._reader = hiredis.Reader(protocolError=RedisProtocolError, replyError=RedisReplyError)
        # Per call: (future, replies expected, the replies so far (None for one), when it was sent).
        self._pending: deque[tuple[asyncio.Future[Reply], int, list[Reply] | None, float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._late: object = None  # the call found late by the last look, if any
        self.closed = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (TCP, TLS or unix)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        try:
            reply = reader.gets()
            while reply is not False:
                if not pending:
                    raise RedisProtocolError("redis sent a reply nobody asked for")
                fut, expected, replies, _ = pending[0]
                if replies is None:
                    pending.popleft()
                    if not fut.done():
                        if isinstance(reply, RedisReplyError):
                            fut.set_exception(reply)
                        else:
                            fut.set_result(reply)
                else:
                    replies.append(reply)
                    if len(replies) == expected:
                        pending.popleft()
                        if not fut.done():
                            error = next((r for r in replies if isinstance(r, RedisReplyError)), None)
                            if error is not None:
                                fut.set_exception(error)
                            else:
                                fut.set_result(replies)
                reply = reader.gets()
        except RedisProtocolError as exc:
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to redis lost ({exc or 'closed by the server'})"))

    # -- calls ---------------------------------------------------------------------------------
    def send(self, data: bytes, expected: int) -> asyncio.Future[Reply]:
        """Write ``data`` (``expected`` packed commands); the future gets the reply, or the list of replies."""
        loop = self._loop
        fut = loop.create_future()
        self._pending.append((fut, expected, None if expected == 1 else [], loop.time()))
        try:
            self._transport.write(data)  # type: ignore[union-attr]  # set before the client hands it out
        except RuntimeError as exc:  # uvloop: the transport closed before connection_lost reached us
            self.fail(RedisConnectionError(f"connection to redis closed ({exc})"))
            return fut
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout_s, self._look)
        return fut

    def _look(self) -> None:
        self._watchdog = None
        if self.closed or not self._pending:
            self._late = None
            return
        head = self._pending[0]
        wait = head[3] + self._timeout_s - self._loop.time()
        if wait > 0:
            self._late = None
            self._watchdog = self._loop.call_later(wait, self._look)
        elif head is self._late:
            self.fail(RedisTimeoutError(f"redis did not answer within {self._timeout_s}s"))
        else:
            # Late, or only the loop was busy: its replies may be read but not yet handled. The next
            # look is a later loop iteration, after the loop has read the socket.
            self._late = head
            self._watchdog = self._loop.call_later(self._second_look_s, self._look)

    def fail(self, exc: RedisError) -> None:
        """Abort the connection; every pending call gets ``exc``."""
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self._pending = self._pending, deque()
        for fut, *_ in pending:
            if not fut.done():
                fut.set_exception(exc)


class RedisClient:
    """Calls to one Redis on ``connections`` pipelined connections (round robin), each opened on first use.

    ``execute`` sends one command and returns its reply; ``pipeline`` sends several in one write
    and returns their replies. Both raise ``RedisReplyError`` for an error reply (a pipeline: its
    first, after every reply was read), ``RedisTimeoutError`` past ``timeout_s`` and
    ``RedisConnectionError`` when the connection is gone. Nothing is retried: the caller decides.
    """

    def __init__(self, address: RedisAddress, *, timeout_s: float, connections: int = 1) -> None:
        if timeout_s <= 0 or connections < 1:
            raise ValueError(f"need timeout_s > 0 and connections >= 1, got {timeout_s} and {connections}")
        self.address = address
        self.timeout_s = timeout_s
        self._conns: list[_Connection | None] = [None] * connections
        self._opening: list[asyncio.Task[_Connection] | None] = [None] * connections
        self._next = 0
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float, connections: int = 1) -> "RedisClient":
        return cls(RedisAddress.from_url(url), timeout_s=timeout_s, connections=connections)

    @property
    def connections(self) -> int:
        return len(self._conns)

    def __repr__(self) -> str:
        return f"RedisClient({self.address}, timeout_s={self.timeout_s}, connections={len(self._conns)})"

    def execute(self, *args: Arg) -> Awaitable[Reply]:
        """One command; its reply (an error reply raises ``RedisReplyError``)."""
        return self._send(_pack(args), 1)

    def pipeline(self, commands: Iterable[Command]) -> Awaitable[list[Reply]]:
        """Several commands in one write (not a transaction); their replies in order."""
        packed = [_pack(tuple(c)) for c in commands]
        if not packed:
            raise ValueError("an empty pipeline")
        return self._send(b"".join(packed), len(packed))

    async def ping(self) -> None:
        reply = await self._send(b"*1\r\n$4\r\nPING\r\n", 1)
        if reply != b"PONG":
            raise RedisProtocolError(f"PING answered {reply!r}")

    def _send(self, data: bytes, expected: int) -> Awaitable[Any]:
        # The hot path returns the connection's future itself: no coroutine frame, no task.
        slot = 0
        if len(self._conns) > 1:
            slot = self._next
            self._next = (slot + 1) % len(self._conns)
        conn = self._conns[slot]
        if conn is None or conn.closed:
            return self._send_connecting(slot, data, expected)
        return conn.send(data, expected)

    async def _send_connecting(self, slot: int, data: bytes, expected: int) -> Any:
        if self._closed:
            raise RedisConnectionError("the redis client is closed")
        opening = self._opening[slot]
        if opening is None:
            opening = self._opening[slot] = asyncio.get_running_loop().create_task(self._open(slot),
                                                                                   name="redis-connect")
        # Shielded: a caller that gives up does not cancel the connection the others wait for.
        conn = await asyncio.shield(opening)
        return await conn.send(data, expected)

    async def _open(self, slot: int) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self.address
        conn = _Connection(loop, self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                if address.path is not None:
                    await loop.create_unix_connection(lambda: conn, address.path)
                elif address.tls:
                    await loop.create_connection(lambda: conn, address.host, address.port,
                                                 ssl=ssl.create_default_context(), server_hostname=address.host)
                else:
                    await loop.create_connection(lambda: conn, address.host, address.port)
                handshake = address.handshake()
                if handshake:
                    await conn.send(b"".join(_pack(tuple(c)) for c in handshake), len(handshake))
        except BaseException as exc:
            conn.fail(RedisConnectionError("connection set-up abandoned"))
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"redis at {address} did not accept a connection within "
                                        f"{self.timeout_s}s") from None
            if isinstance(exc, RedisReplyError):  # AUTH or SELECT refused; the reply never holds the password
                raise RedisConnectionError(f"redis at {address} refused the connection's set-up: {exc}") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"cannot connect to redis at {address}: {exc}") from exc
            raise
        finally:
            self._opening[slot] = None
        if self._closed:
            conn.fail(RedisConnectionError("the redis client is closed"))
            raise RedisConnectionError("the redis client is closed")
        self._conns[slot] = conn
        return conn

    def disconnect(self) -> None:
        """Drop every connection now (their pending calls fail); the next call opens a fresh one."""
        for slot, conn in enumerate(self._conns):
            self._conns[slot] = None
            if conn is not None:
                conn.fail(RedisConnectionError("disconnected by the client"))

    async def aclose(self) -> None:
        """Disconnect and refuse further calls; a connection being opened is abandoned."""
        self._closed = True
        opening = [task for task in self._opening if task is not None]
        for task in opening:
            task.cancel()
        # Their outcome no longer matters (each fails its own connection); gathered so none is left pending.
        await asyncio.gather(*opening, return_exceptions=True)
        self.disconnect()
