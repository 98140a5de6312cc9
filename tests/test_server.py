"""The service as it really runs: `python -m musicrec.service` (uvicorn + httptools) on a loopback port.

What only a real server shows: how it starts (or refuses to), and what it does with hostile
connections (huge headers, clients that never finish a request). Every wait here is bounded.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def service_env(artifacts: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "API_", "ADMIN_"))}
    return env | {"ARTIFACTS_DIR": str(artifacts), "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": "1",
                  "REDIS_URL": "memory://", "RELOAD_POLL_S": "0", "LOG_LEVEL": "WARNING"} | extra


@contextlib.contextmanager
def running_service(artifacts: Path, tmp_path: Path, **extra: str) -> Iterator[str]:
    """Start the service, wait (bounded) until /healthz answers, yield its base URL; stop it after."""
    port = free_port()
    log = tmp_path / f"service-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "musicrec.service"], cwd=tmp_path,
                                env=service_env(artifacts, port, **extra), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the service exited with {proc.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the service did not answer within 60 s: {log.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- start-up ------------------------------------------------------------------------------------

def test_a_version_with_bad_contents_is_refused_at_start_with_one_line(demo_artifacts: Path, tmp_path: Path) -> None:
    """Out-of-range neighbours with a valid checksum used to start fine and answer every recommendation with a 500."""
    import json

    from musicrec.index.artifacts import MANIFEST, NEIGHBOURS, sha256_file

    bad = tmp_path / "bad"
    shutil.copytree(demo_artifacts, bad)
    table = np.load(bad / NEIGHBOURS)
    table[5, 3] = len(table) + 1
    np.save(bad / NEIGHBOURS, table)
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["checksums"][NEIGHBOURS] = sha256_file(bad / NEIGHBOURS)
    (bad / MANIFEST).write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-m", "musicrec.service"], cwd=tmp_path, capture_output=True, text=True,
                          env=service_env(bad, free_port()), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "neighbours.npy holds values" in errors[0], done.stderr


def test_workers_skip_hashing_the_version_serve_verified_and_only_that_one(demo_artifacts: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from litestar.testing import TestClient

    from musicrec.index import artifacts
    from musicrec.service.main import create_app
    from musicrec.service.settings import Settings

    hashed: list[str] = []
    real_sha = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda path, *a: hashed.append(Path(path).name) or real_sha(path, *a))
    copy = tmp_path / "v"
    shutil.copytree(demo_artifacts, copy)
    settings = Settings.from_env({"ARTIFACTS_DIR": str(copy), "REDIS_URL": "memory://", "RELOAD_POLL_S": "0"},
                                 env_file=None)
    verified = artifacts.fingerprint(copy)
    with TestClient(create_app(settings, verified=verified)) as client:
        assert client.get("/readyz").status_code == 200
    assert hashed == []  # the fingerprint matched: the files were not hashed again
    manifest = copy / artifacts.MANIFEST
    manifest.write_bytes(manifest.read_bytes() + b"\n")  # the same version dir, another manifest: not the one verified
    with TestClient(create_app(settings, verified=verified)) as client:
        assert client.get("/readyz").status_code == 200
    assert artifacts.EMBEDDINGS in hashed


def test_bad_settings_are_refused_at_start_with_one_line(demo_artifacts: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "musicrec.service"], cwd=tmp_path, capture_output=True, text=True,
                          env=service_env(demo_artifacts, free_port(), SESSION_LEN="many"), timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: invalid settings: SESSION_LEN must be an integer in 1..1000, got 'many'"]


# -- hostile connections ---------------------------------------------------------------------------

def _request_head(header_bytes: int) -> bytes:
    return (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * header_bytes + b"\r\n\r\n")


def _exchange(port: int, payload: bytes, timeout_s: float = 10.0) -> bytes:
    """Send ``payload`` (stopping quietly if the server closes), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        with contextlib.suppress(OSError):  # the server may close before taking it all
            s.sendall(payload)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture(scope="module")
def guarded_service(demo_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_service(demo_artifacts, tmp_path_factory.mktemp("guarded"), MAX_HEADER_BYTES="16384",
                         REQUEST_TIMEOUT_S="1") as base:
        yield base


def test_a_request_head_over_the_limit_is_a_431(guarded_service: str) -> None:
    port = int(guarded_service.rsplit(":", 1)[1])
    assert _exchange(port, _request_head(8 * 1024)).startswith(b"HTTP/1.1 200")  # under the limit: served
    for size in (20 * 1024, 1 << 20):
        reply = _exchange(port, _request_head(size))
        assert reply.startswith(b"HTTP/1.1 431 "), (size, reply[:200])
        assert b'"status_code":431' in reply
    # The limit counts the head only: a body bigger than it (well within the body limit) is fine.
    body = b'{"track_ids": ["' + b"x" * 60_000 + b'"]}'
    head = (b"POST /api/recommendations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    assert _exchange(port, head + body).split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request"  # validated, not 431


def test_a_huge_header_costs_no_worker_time(guarded_service: str) -> None:
    """A 64 MB header used to be read whole (a 128 MB one took 19 s of a worker); now the server hangs up at 16 KB."""
    import threading

    port = int(guarded_service.rsplit(":", 1)[1])
    megabytes_sent = 0

    def flood() -> None:
        nonlocal megabytes_sent
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            with contextlib.suppress(OSError):
                s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
                chunk = b"a" * (1 << 20)
                for _ in range(64):
                    s.sendall(chunk)
                    megabytes_sent += 1

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while thread.is_alive() and megabytes_sent < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert httpx.get(f"{guarded_service}/healthz", timeout=10).status_code == 200
    assert time.monotonic() - started < 2.0
    thread.join(timeout=30)
    # Only what the kernel's socket buffers took before the server closed the connection got out.
    assert not thread.is_alive() and megabytes_sent < 16, megabytes_sent


def test_clients_that_never_finish_a_request_are_timed_out(guarded_service: str) -> None:
    """Half-sent requests (and silent connections) stayed open for good; now 408 and closed after the timeout."""
    port = int(guarded_service.rsplit(":", 1)[1])
    half_sent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(30)]
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    slow_body = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        for s in half_sent:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # the head never ends
        slow_body.sendall(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"type\": ")  # nor this body
        started = time.monotonic()
        for s in [*half_sent, *silent, slow_body]:
            reply = b"".join(iter(lambda s=s: s.recv(4096), b""))  # until the server closes (else socket.timeout)
            assert reply.startswith(b"HTTP/1.1 408 Request Timeout"), reply[:100]
        assert time.monotonic() - started < 8.0
        assert httpx.get(f"{guarded_service}/healthz", timeout=5).status_code == 200  # and the service still answers
    finally:
        for s in [*half_sent, *silent, slow_body]:
            s.close()


def test_a_kept_alive_connection_serves_request_after_request(guarded_service: str) -> None:
    """The deadline is per request: a client that keeps its connection and asks again is served each time."""
    with httpx.Client(base_url=guarded_service, timeout=5) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(0.6)  # within uvicorn's keep-alive (5 s); the three requests together outlast the 1 s deadline


def test_one_random_cookie_secret_is_shared_by_every_worker(demo_artifacts: Path, tmp_path: Path,
                                                           redis_url: str) -> None:
    """Without COOKIE_SECRET each worker would make its own, and a cookie signed by one be a stranger to the others."""
    with running_service(demo_artifacts, tmp_path, WORKERS="2", REDIS_URL=redis_url, RATE_LIMIT_PER_MIN="0") as base:
        cookie = httpx.get(f"{base}/", timeout=10).cookies["client_id"]
        renamed = 0
        for _ in range(20):  # a new connection each time: the two workers take turns accepting them
            with httpx.Client(base_url=base, timeout=10, cookies={"client_id": cookie}) as client:
                renamed += "set-cookie" in client.get("/").headers
        assert renamed == 0
