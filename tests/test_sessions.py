"""Session stores against the real Redis: order, length cap, TTL, clear, and surviving an outage."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import AsyncIterator, Callable

import msgspec
import pytest
import redis.asyncio as aioredis

from musicrec.service.resp import RedisClient, RedisConnectionError
from musicrec.service.sessions import MemorySessionStore, RedisSessionStore, SessionEvent, SessionStore, open_session_store
from musicrec.service.settings import Settings

pytestmark = pytest.mark.anyio
MAX_LEN = 5
TTL_S = 120


def ev(i: int, kind: str = "track_view") -> SessionEvent:
    return SessionEvent(type=kind, track_id=f"t{i}", ts=1_700_000_000.0 + i)


@pytest.fixture
async def redis_store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisSessionStore]:
    client = RedisClient.from_url(redis_url, timeout_s=0.25)
    store = RedisSessionStore(client, max_len=MAX_LEN, ttl_s=TTL_S, prefix=redis_prefix)
    await store.start()
    try:
        yield store
    finally:
        await store.close()
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, anyio_backend: str) -> SessionStore:
    """Both implementations must pass the same contract."""
    if request.param == "memory":
        return MemorySessionStore(MAX_LEN, TTL_S)
    return request.getfixturevalue("redis_store")


async def test_recent_is_newest_first_and_capped(store: SessionStore) -> None:
    assert await store.recent("alice") == []
    for i in range(8):
        await store.append("alice", ev(i, ["track_view", "skip", "like"][i % 3]))
    recent = await store.recent("alice")
    assert [e.track_id for e in recent] == ["t7", "t6", "t5", "t4", "t3"]
    assert recent[0] == ev(7, "skip")


async def test_append_recent_is_append_then_recent_in_one_call(store: SessionStore) -> None:
    for i in range(3):
        await store.append("alice", ev(i))
    assert [e.track_id for e in await store.append_recent("alice", ev(3, "skip"))] == ["t3", "t2", "t1", "t0"]
    for i in range(4, 8):
        last = await store.append_recent("alice", ev(i))
    assert last == await store.recent("alice") and [e.track_id for e in last] == ["t7", "t6", "t5", "t4", "t3"]
    assert await store.append_recent("bob", ev(9)) == [ev(9)]


async def test_clients_are_isolated_and_clear_forgets_one(store: SessionStore) -> None:
    await store.append("alice", ev(1))
    await store.append("bob", ev(2))
    await store.clear("alice")
    assert await store.recent("alice") == []
    assert await store.recent("bob") == [ev(2)]
    await store.clear("nobody")  # clearing an unknown client is fine


async def test_redis_keeps_a_trimmed_list_with_a_ttl_in_compact_form(redis_store: RedisSessionStore,
                                                                      redis_url: str) -> None:
    assert redis_store.status == "ok"
    for i in range(MAX_LEN + 3):
        await redis_store.append("carol", ev(i))
    raw = aioredis.from_url(redis_url)
    try:
        key = redis_store.key("carol")
        assert key == f"{redis_store.prefix}session:carol"
        assert await raw.llen(key) == MAX_LEN
        assert TTL_S - 5 < await raw.ttl(key) <= TTL_S
        newest = await raw.lindex(key, 0)
        assert msgspec.msgpack.decode(newest) == ["track_view", f"t{MAX_LEN + 2}", ev(MAX_LEN + 2).ts]
        await raw.expire(key, 10)
        await redis_store.append("carol", ev(99))  # a write refreshes the TTL, like the memory store
        assert await raw.ttl(key) > 10
    finally:
        await raw.aclose()


async def test_an_undecodable_entry_is_skipped_not_fatal(redis_store: RedisSessionStore, redis_url: str) -> None:
    await redis_store.append("dan", ev(1))
    raw = aioredis.from_url(redis_url)
    try:
        await raw.lpush(redis_store.key("dan"), b"not msgpack \xc1")
    finally:
        await raw.aclose()
    assert await redis_store.recent("dan") == [ev(1)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_sessions_expire_after_the_ttl_refreshed_by_writes() -> None:
    clock = FakeClock()
    store = MemorySessionStore(MAX_LEN, ttl_s=10, clock=clock)
    await store.append("alice", ev(1))
    clock.now += 8
    await store.append("alice", ev(2))  # refreshes the TTL
    clock.now += 8
    assert [e.track_id for e in await store.recent("alice")] == ["t2", "t1"]
    clock.now += 3
    assert await store.recent("alice") == []
    await store.append("alice", ev(3))  # an expired session starts afresh
    assert await store.recent("alice") == [ev(3)]


async def test_memory_store_holds_a_bounded_number_of_clients_evicting_the_least_recent() -> None:
    store = MemorySessionStore(MAX_LEN, TTL_S, max_clients=3)
    for name in ("a", "b", "c"):
        await store.append(name, ev(1))
    await store.recent("a")  # a read is a use: "b" is now the least recent
    await store.append("d", ev(2))
    assert len(store) == 3
    assert await store.recent("b") == []
    assert all([await store.recent(n) for n in ("a", "c", "d")])


async def test_memory_url_gives_the_memory_store(redis_url: str) -> None:
    settings = Settings.from_env({"REDIS_URL": "memory://", "SESSION_LEN": "3"}, env_file=None)
    async with open_session_store(settings) as store:
        assert store.status == "memory"
        for i in range(5):
            await store.append("x", ev(i))
        assert len(await store.recent("x")) == 3


async def test_redis_down_at_start_serves_from_memory_and_reports_degraded(
        closed_port: int, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"}, env_file=None)
    caplog.set_level(logging.WARNING, logger="musicrec.service.sessions")
    started = time.perf_counter()
    async with open_session_store(settings) as store:
        assert store.status == "degraded"
        for i in range(30):
            await store.append("eve", ev(i))
            assert (await store.recent("eve"))[0] == ev(i)
        assert (await store.append_recent("eve", ev(30)))[:2] == [ev(30), ev(29)]
        await store.clear("eve")
        assert await store.recent("eve") == []
    assert time.perf_counter() - started < 2.0
    assert sum("redis unreachable" in r.getMessage() for r in caplog.records) == 1  # once per outage


class SwitchableProxy:
    """A TCP front for the real Redis that refuses (accept + close) until switched to forwarding.

    It counts connections, which shows that a degraded store leaves Redis alone between probes.
    While ``stalled`` it holds Redis's replies back, and delivers them late when released.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.forwarding = False
        self.stalled = False
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> "SwitchableProxy":
        self.sock.listen()
        self.server = await asyncio.start_server(self._handle, sock=self.sock)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if not self.forwarding:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await src.read(65536):
                    while replies and self.stalled:
                        await asyncio.sleep(0.01)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                return
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


async def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_outage_then_recovery_without_probing_redis_on_every_request(
        redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    target = aioredis.from_url(redis_url)
    port = target.connection_pool.connection_kwargs.get("port", 6379)
    await target.aclose()
    caplog.set_level(logging.INFO, logger="musicrec.service.sessions")
    async with SwitchableProxy(port) as proxy:
        client = RedisClient.from_url(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=0.25)
        store = RedisSessionStore(client, max_len=MAX_LEN, ttl_s=TTL_S, prefix=redis_prefix,
                                  backoff_initial_s=0.5, backoff_max_s=0.5)
        try:
            await store.start()
            assert store.status == "degraded" and proxy.connections == 1
            for i in range(50):  # well inside the first 0.5 s backoff
                await store.append("fay", ev(i))
                await store.recent("fay")
            assert proxy.connections == 1, "a degraded store must not try Redis per request"
            proxy.forwarding = True
            assert await wait_for(lambda: store.status == "ok", 5.0)
            await store.append("fay", ev(100))
            # Served by Redis again, with the outage's events written into it, and none left in memory.
            assert await store.recent("fay") == [ev(100), ev(49), ev(48), ev(47), ev(46)]
            assert len(store.fallback) == 0
            assert any("reachable again" in r.getMessage() for r in caplog.records)
        finally:
            await store.close()
            await client.aclose()


async def test_a_stalled_redis_counts_as_down_within_the_timeout_and_its_late_replies_reach_no_one(
        redis_url: str, redis_prefix: str) -> None:
    """The client's timeout (its watchdog) must catch a Redis that takes commands but does not
    answer, and a reply that arrives after its call gave up must not be read as the answer to a
    later call on the same connection."""
    target = aioredis.from_url(redis_url)
    port = target.connection_pool.connection_kwargs.get("port", 6379)
    await target.aclose()
    async with SwitchableProxy(port) as proxy:
        proxy.forwarding = True
        client = RedisClient.from_url(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=0.25)
        store = RedisSessionStore(client, max_len=MAX_LEN, ttl_s=TTL_S, prefix=redis_prefix,
                                  backoff_initial_s=0.3, backoff_max_s=0.3)
        try:
            await store.start()
            await store.append("kim", ev(1))
            proxy.stalled = True
            started = time.monotonic()
            assert await asyncio.wait_for(store.recent("kim"), 2.0) == []  # no answer in time: memory, empty
            assert time.monotonic() - started < 1.0 and store.status == "degraded"
            await store.append("kim", ev(2))
            await asyncio.sleep(0.5)  # a probe or two time out as well
            proxy.stalled = False     # every held reply is delivered now, late
            assert await wait_for(lambda: store.status == "ok", 5.0)
            assert await store.recent("kim") == [ev(2), ev(1)]
            assert await store.recent("lee") == []
            await store.append("lee", ev(3))
            assert await store.recent("lee") == [ev(3)] and await store.recent("kim") == [ev(2), ev(1)]
        finally:
            await store.close()
            await client.aclose()


@pytest.mark.parametrize("connections", [1, 4])
async def test_more_concurrent_calls_than_connections_share_them_instead_of_failing_over(
        redis_url: str, redis_prefix: str, connections: int) -> None:
    """A burst (here 300 calls on 1 or 4 pipelined connections) is local load, not a Redis outage.

    redis-py's default pool raised "Too many connections" past 100 at once, which sent the store
    to its memory fallback mid-burst (and back): sessions flapped under load.
    """
    client = RedisClient.from_url(redis_url, timeout_s=2.0, connections=connections)
    store = RedisSessionStore(client, max_len=MAX_LEN, ttl_s=TTL_S, prefix=redis_prefix)
    await store.start()
    try:
        await asyncio.gather(*(store.append(f"burst-{i % 30}", ev(i)) for i in range(300)))
        sessions = await asyncio.gather(*(store.recent(f"burst-{c}") for c in range(30)))
        assert store.status == "ok" and len(store.fallback) == 0
        assert all(len(s) == MAX_LEN for s in sessions)
    finally:
        await store.close()
        await client.aclose()


async def test_recovery_writes_the_outage_events_and_clears_into_redis(redis_store: RedisSessionStore) -> None:
    """What listeners did while Redis was away reaches Redis when it is back: nothing is lost.

    An outage is declared by hand (the proxy test above covers detecting a real one); the
    probe then finds the real Redis answering and takes back what memory collected.
    """
    store = redis_store
    store.link.backoff_initial_s = 0.2
    for i in range(3):
        await store.append("gus", ev(i))           # before the outage: in Redis
    await store.append("hal", ev(0))
    store.link.mark_down(ConnectionError("test outage"))
    assert store.status == "degraded"
    await store.append("gus", ev(3, "like"))        # during it: in memory only
    await store.append("gus", ev(4, "skip"))
    await store.append("ivy", ev(7))
    await store.clear("hal")                        # a clear during the outage must reach Redis too
    await store.append("hal", ev(9))
    assert await store.recent("gus") == [ev(4, "skip"), ev(3, "like")]  # partial, from memory
    assert await wait_for(lambda: store.status == "ok", 5.0)
    assert await store.recent("gus") == [ev(4, "skip"), ev(3, "like"), ev(2), ev(1), ev(0)]
    assert await store.recent("ivy") == [ev(7)]
    assert await store.recent("hal") == [ev(9)]
    ttl = await store.client.execute("TTL", store.key("ivy"))
    assert 0 < ttl <= TTL_S
    assert len(store.fallback) == 0


async def test_a_failed_recovery_keeps_the_outage_events_for_the_next_attempt(
        redis_store: RedisSessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store = redis_store
    store.link.backoff_initial_s = store.link.backoff_max_s = 0.1
    real_pipeline, failures = store.client.pipeline, [1]

    def flaky_pipeline(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if failures:
            failures.pop()
            raise RedisConnectionError("dropped during recovery")
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(store.client, "pipeline", flaky_pipeline)
    store.link.mark_down(ConnectionError("test outage"))
    await store.append("jo", ev(1))
    await store.append("jo", ev(2))
    assert await wait_for(lambda: store.status == "ok", 5.0)
    assert not failures, "the first recovery attempt should have failed"
    assert await store.recent("jo") == [ev(2), ev(1)]


def test_memory_drain_and_restore_keep_order_ttl_and_length() -> None:
    now = [100.0]
    mem = MemorySessionStore(3, 60, clock=lambda: now[0])
    for i in range(4):
        mem.append_now("kim", ev(i))
    mem.append_now("old", ev(9))
    now[0] += 30
    mem.append_now("lee", ev(5))
    now[0] += 40  # "old" and "kim" expired; "lee" has 20 s left
    assert [(c, e, ttl) for c, e, ttl in mem.drain()] == [("lee", [ev(5)], 20.0)]
    assert len(mem) == 0
    mem.append_now("lee", ev(6))                     # newer than what was drained
    mem.restore("lee", [ev(5), ev(4), ev(3)], 20.0)  # older ones go behind, up to the cap
    assert mem.recent_now("lee") == [ev(6), ev(5), ev(4)]
    mem.restore("may", [ev(1)], 10.0)
    now[0] += 11
    assert mem.recent_now("may") == []


# -- what an outage can lose, and recovery without flapping (issue 13) ---------------------------

async def test_an_outage_beyond_the_memory_bound_counts_and_logs_every_dropped_listener(
        own_redis, musicrec_logs: list) -> None:
    """With Redis down, listeners past the bound used to vanish without a log line or a metric."""
    client = RedisClient.from_url(own_redis.url, timeout_s=0.25)
    store = RedisSessionStore(client, max_len=MAX_LEN, ttl_s=TTL_S, fallback=MemorySessionStore(MAX_LEN, TTL_S, 100),
                              backoff_initial_s=0.05, backoff_max_s=0.1)
    await store.start()
    try:
        own_redis.kill()
        for i in range(130):  # 130 listeners, 2 events each, into a store that keeps 100
            await store.append(f"listener-{i}", ev(i))
            await store.append(f"listener-{i}", ev(i + 1000, "like"))
        assert store.status == "degraded"
        assert store.evictions == (30, 60)
        drops = [r for r in musicrec_logs if "session store full" in r.getMessage()]
        assert drops and drops[0].levelname == "WARNING"
        own_redis.start()
        assert await wait_for(lambda: store.status == "ok", 10.0)
        kept = [len(await store.recent(f"listener-{i}")) for i in range(130)]
        # Nothing beyond what was counted is missing: 100 listeners written back whole, 30 counted as dropped.
        assert kept == [0] * 30 + [2] * 100
        assert sum(kept) + store.evictions[1] == 260
    finally:
        await store.close()
        await client.aclose()


@pytest.mark.parametrize("connections", [1, 8])
async def test_recovery_drops_the_old_connections_so_redis_does_not_flap(own_redis, musicrec_logs: list,
                                                                        connections: int) -> None:
    """Connections opened before the outage were dead after it: each failed once, and the store flapped back."""
    client = RedisClient.from_url(own_redis.url, timeout_s=0.25, connections=connections)
    store = RedisSessionStore(client, max_len=MAX_LEN, ttl_s=TTL_S, backoff_initial_s=0.05, backoff_max_s=0.1)
    await store.start()
    try:
        await asyncio.gather(*(store.append(f"c{i}", ev(i)) for i in range(40)))  # every connection opened
        own_redis.kill()
        await store.append("during", ev(1))
        assert store.status == "degraded"
        own_redis.start()
        assert await wait_for(lambda: store.status == "ok", 10.0)
        for _ in range(5):  # bursts that use every connection at once
            await asyncio.gather(*(store.append(f"c{i}", ev(i)) for i in range(40)))
            await asyncio.gather(*(store.recent(f"c{i}") for i in range(40)))
        assert store.status == "ok"
        assert len([r for r in musicrec_logs if "redis unreachable" in r.getMessage()]) == 1  # one outage, no flap
        assert store.link.outages == 1
    finally:
        await store.close()
        await client.aclose()


async def test_the_store_opens_the_configured_pipelined_connections_bounded_or_not(redis_url: str) -> None:
    for max_in_flight, connections in (("16", "1"), ("0", "3")):
        settings = Settings.from_env({"REDIS_URL": redis_url, "MAX_IN_FLIGHT": max_in_flight,
                                      "REDIS_CONNECTIONS": connections}, env_file=None)
        async with open_session_store(settings) as store:
            assert isinstance(store, RedisSessionStore) and store.client.connections == settings.redis_connections
            await asyncio.gather(*(store.append(f"open-{i}", ev(i)) for i in range(20)))
            assert store.status == "ok" and len(store.fallback) == 0
            await asyncio.gather(*(store.clear(f"open-{i}") for i in range(20)))
