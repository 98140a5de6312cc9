"""The service's Redis client (musicrec.service.resp) against real redis-servers, on asyncio and uvloop.

What the session store's outage tests cannot show one by one: every concurrent caller gets its
own reply on a shared connection, pipelines and error replies keep the reply order, a hung
(SIGSTOPped) Redis fails every pending call within the timeout while a merely busy event loop
does not, a restarted Redis is reconnected to, and the URL's password and database are used.
"""
from __future__ import annotations

import ast
import asyncio
import subprocess
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from musicrec.service.resp import (RedisAddress, RedisClient, RedisConnectionError, RedisReplyError,
                                   RedisTimeoutError)
from tests.conftest import RedisServer

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[pytest.param(("asyncio", {}), id="asyncio"),
                        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Both loops: production runs uvloop, whose timers run before its I/O in each iteration."""
    return request.param


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    c = RedisClient.from_url(redis_url, timeout_s=2.0)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def key(redis_url: str) -> Iterator[str]:
    name = f"musicrec-test:resp:{uuid.uuid4().hex}"
    yield name
    import redis  # the inspection client, to clean up independently of the client under test

    with redis.Redis.from_url(redis_url) as inspect:
        inspect.delete(name, name + ":list")


def private_redis(tmp_path: Path, *extra: str) -> RedisServer:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
    server = RedisServer(tmp_path, *extra)
    server.start()
    return server


# -- pipelining ---------------------------------------------------------------------------------

async def test_concurrent_callers_each_get_their_own_reply_in_the_order_sent(client: RedisClient, key: str) -> None:
    # INCR on one key: Redis runs them in the order they were written, so the i-th caller must get i.
    replies = await asyncio.gather(*(client.execute("INCR", key) for _ in range(500)))
    assert replies == list(range(1, 501))
    echoes = await asyncio.gather(*(client.execute("ECHO", f"caller-{i}") for i in range(500)))
    assert echoes == [f"caller-{i}".encode() for i in range(500)]


async def test_many_callers_share_one_connection(tmp_path: Path) -> None:
    server = private_redis(tmp_path)
    c = RedisClient.from_url(server.url, timeout_s=2.0)
    try:
        await asyncio.gather(*(c.execute("SET", f"k{i}", i) for i in range(300)))
        info = await c.execute("INFO", "clients")
        assert b"connected_clients:1\r\n" in info
    finally:
        await c.aclose()
        server.kill()


async def test_a_pipeline_answers_each_command_in_order_interleaved_with_other_callers(
        client: RedisClient, key: str) -> None:
    async def pipe(i: int) -> list[object]:
        return await client.pipeline([("RPUSH", key + ":list", i), ("ECHO", f"p{i}"), ("EXPIRE", key + ":list", 60)])

    async def single(i: int) -> object:
        return await client.execute("ECHO", f"s{i}")

    results = await asyncio.gather(*(pipe(i) if i % 2 else single(i) for i in range(200)))
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, list) and result[1:] == [f"p{i}".encode(), 1] and isinstance(result[0], int)
        else:
            assert result == f"s{i}".encode()
    assert await client.execute("LRANGE", key + ":list", 0, -1) == [str(i).encode() for i in range(1, 200, 2)]


async def test_a_cancelled_callers_reply_reaches_no_one(client: RedisClient) -> None:
    async def ask() -> object:
        return await client.execute("ECHO", "for the cancelled caller")

    gone = asyncio.get_running_loop().create_task(ask())
    await asyncio.sleep(0)  # written, not yet answered
    gone.cancel()
    assert await client.execute("ECHO", "mine") == b"mine"
    with pytest.raises(asyncio.CancelledError):
        await gone


# -- error replies ------------------------------------------------------------------------------

async def test_an_error_reply_raises_and_the_connection_stays_in_step(client: RedisClient, key: str) -> None:
    await client.execute("SET", key, "a string")
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        await client.execute("LPUSH", key, "x")
    with pytest.raises(RedisReplyError, match="unknown command"):
        await client.execute("NO-SUCH-COMMAND")
    assert await client.execute("GET", key) == b"a string"


async def test_a_pipeline_with_an_error_raises_it_after_running_every_command(client: RedisClient, key: str) -> None:
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        await client.pipeline([("SET", key, "v"), ("LPUSH", key, "x"), ("SET", key + ":list", "after")])
    assert await client.pipeline([("GET", key), ("GET", key + ":list")]) == [b"v", b"after"]


# -- timeouts and lost connections --------------------------------------------------------------

async def test_a_frozen_redis_fails_every_pending_call_within_the_timeout(tmp_path: Path) -> None:
    server = private_redis(tmp_path)
    timeout_s = 0.2
    c = RedisClient.from_url(server.url, timeout_s=timeout_s)
    try:
        await c.ping()
        server.freeze()
        started = time.monotonic()
        calls = [c.execute("ECHO", i) for i in range(50)] + [c.pipeline([("PING",), ("PING",)])]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert timeout_s * 0.9 <= elapsed < timeout_s + 0.3
        # A new connection to the frozen server is bounded too (the kernel accepts it; AUTH/PING never answer).
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await c.ping()
        assert time.monotonic() - started < timeout_s + 0.3
        server.thaw()
        await c.ping()  # a fresh connection: none of the frozen one's late replies is read as this one's
        assert await c.execute("ECHO", "after") == b"after"
    finally:
        server.thaw()
        await c.aclose()
        server.kill()


async def test_a_busy_event_loop_is_not_mistaken_for_a_slow_redis(client: RedisClient) -> None:
    c = RedisClient(client.address, timeout_s=0.1)
    try:
        await c.ping()
        pending = c.execute("ECHO", "late but answered")
        time.sleep(0.3)  # the loop is blocked past the timeout; the reply waits in the socket meanwhile
        assert await pending == b"late but answered"
    finally:
        await c.aclose()


async def test_a_restarted_redis_is_reconnected_to(tmp_path: Path) -> None:
    server = private_redis(tmp_path)
    c = RedisClient.from_url(server.url, timeout_s=0.5)
    try:
        await c.execute("SET", "before", 1)
        pending = [c.execute("ECHO", i) for i in range(5)]
        server.kill()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, (bytes, RedisConnectionError)) for r in results), results
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            for _ in range(3):  # the first may still be written to the dead socket
                await c.ping()
        assert time.monotonic() - started < 1.0
        server.start()
        await c.ping()
        assert await c.execute("GET", "before") is None  # a new server (no persistence): the call went there
    finally:
        await c.aclose()
        server.kill()


async def test_a_closed_client_refuses_calls(redis_url: str) -> None:
    c = RedisClient.from_url(redis_url, timeout_s=1.0)
    await c.ping()
    await c.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await c.ping()


async def test_a_refused_connection_fails_at_once(closed_port: int) -> None:
    c = RedisClient.from_url(f"redis://127.0.0.1:{closed_port}/0", timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{closed_port}"):
        await c.ping()
    assert time.monotonic() - started < 1.0
    await c.aclose()


# -- what the URL says: password, user, database, unix socket -----------------------------------

async def test_auth_and_select_come_from_the_url_and_a_wrong_password_is_never_shown(tmp_path: Path) -> None:
    server = private_redis(tmp_path, "--requirepass", "s3cret-pass")
    base = f"127.0.0.1:{server.port}"
    clients: list[RedisClient] = []

    def make(url: str) -> RedisClient:
        clients.append(RedisClient.from_url(url, timeout_s=1.0))
        return clients[-1]

    try:
        with pytest.raises(RedisReplyError, match="NOAUTH"):
            await make(f"redis://{base}/0").ping()
        with pytest.raises(RedisConnectionError, match="refused the connection's set-up") as info:
            await make(f"redis://:wrong-pass@{base}/0").ping()
        assert "wrong-pass" not in str(info.value) and "wrong-pass" not in repr(clients[-1])
        db3 = make(f"redis://:s3cret-pass@{base}/3")
        await db3.execute("SET", "where", "three")
        db0 = make(f"redis://default:s3cret-pass@{base}")   # user and password: AUTH default s3cret-pass
        lone = make(f"redis://s3cret-pass@{base}/0?db=3")   # a lone part is the password; ?db= wins
        assert await db0.execute("GET", "where") is None
        assert await lone.execute("GET", "where") == b"three"
        assert b" db=3 " in await db3.execute("CLIENT", "INFO") and b" db=0 " in await db0.execute("CLIENT", "INFO")
    finally:
        for c in clients:
            await c.aclose()
        server.kill()


async def test_a_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = private_redis(tmp_path, "--unixsocket", str(sock), "--unixsocketperm", "700")
    c = RedisClient.from_url(f"unix://{sock}?db=2", timeout_s=1.0)
    try:
        await c.execute("SET", "via", "unix")
        assert await c.execute("GET", "via") == b"unix"
        assert b" db=2 " in await c.execute("CLIENT", "INFO")
    finally:
        await c.aclose()
        server.kill()


@pytest.mark.parametrize(("url", "address"), [
    ("redis://cache", RedisAddress("cache", 6379)),
    ("redis://cache:6380/4", RedisAddress("cache", 6380, db=4)),
    ("rediss://:p%40ss@cache/1", RedisAddress("cache", 6379, db=1, password="p@ss", tls=True)),
    ("redis://app:pw@cache?db=2", RedisAddress("cache", 6379, db=2, username="app", password="pw")),
    ("redis://pw@cache", RedisAddress("cache", 6379, password="pw")),
    ("unix:///run/redis.sock?db=5", RedisAddress(path="/run/redis.sock", db=5)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_urls_give_the_address_credentials_and_database(url: str, address: RedisAddress) -> None:
    assert RedisAddress.from_url(url) == address


@pytest.mark.parametrize("url", ["http://cache", "redis://cache:port", "redis://cache/zero",
                                 "redis://cache/0?ssl_cert_reqs=none", "unix://", "redis://cache/-1"])
def test_urls_the_client_cannot_honour_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        RedisAddress.from_url(url)


def test_the_password_is_not_in_the_address_repr_or_str() -> None:
    address = RedisAddress.from_url("redis://app:hunter2-pw@cache:6379/1")
    assert "hunter2" not in repr(address) and "hunter2" not in str(address)
    assert address.handshake() == [("AUTH", "app", "hunter2-pw"), ("SELECT", 1)]



def test_no_musicrec_module_imports_redis_py() -> None:
    """One Redis mechanism. (spotipy, which the service imports, still loads redis-py for a cache
    handler of its own that is never used here, so this reads the source rather than sys.modules.)"""
    offenders = []
    for path in sorted((REPO / "musicrec").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n == "redis" or n.startswith("redis.")]
    assert offenders == []
