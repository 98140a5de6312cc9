"""Metrics, logs and request ids as an operator sees them: through ``musicrec serve`` with real workers.

The two-worker test starts the real command (uvicorn, uvloop, two processes) on a free loopback
port against the real Redis, and stops it with SIGTERM; everything is time-bound.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import httpx
import pytest
from litestar.testing import AsyncTestClient

from musicrec import logs
from musicrec.service.main import create_app
from musicrec.service.settings import Settings
from tests.conftest import free_port
from tests.fixtures_artifacts import REPO

HEALTHZ_COUNT = re.compile(r'^musicrec_http_request_duration_seconds_count\{method="GET",path="/healthz",'
                           r'status_code="200"\} (\S+)$', re.M)
RSS = re.compile(r'^process_resident_memory_bytes\{pid="(\d+)"\} \S+$', re.M)


@pytest.fixture
def two_workers(demo_artifacts: Path, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """``musicrec serve --workers 2`` with JSON logs and the access log on; yields (base url, process, metrics dir)."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"a stale file from an earlier run")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "ARTIFACTS_DIR": str(demo_artifacts),
           "REDIS_URL": redis_url, "KAFKA_BOOTSTRAP_SERVERS": "", "RELOAD_POLL_S": "0", "LOG_FORMAT": "json",
           "ACCESS_LOG": "true", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "musicrec", "serve", "--workers", "2", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}: {proc.stderr.read()[-3000:] if proc.stderr else ''}")
            try:
                # Ready means both workers are up: /readyz answers from the first, and a worker's
                # process figures reach the shared metrics only once it has started.
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200 and \
                        len(set(RSS.findall(httpx.get(f"{base}/metrics", timeout=2).text))) == 2:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("two workers did not get ready within 90 s")
            time.sleep(0.2)
        yield base, proc, metrics_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_two_workers_scrapes_agree_and_logs_are_one_json_format(two_workers) -> None:  # type: ignore[no-untyped-def]
    base, proc, _ = two_workers
    pids: set[str] = set()
    for _ in range(10):  # a fresh connection each time, so requests land on both workers
        with httpx.Client(base_url=base, timeout=5) as c:
            assert c.get("/healthz").status_code == 200
    scrapes = []
    for _ in range(4):
        with httpx.Client(base_url=base, timeout=5) as c:
            text = c.get("/metrics").text
        scrapes.append([float(v) for v in HEALTHZ_COUNT.findall(text)])
        pids |= set(RSS.findall(text))
        assert len(set(RSS.findall(text))) == 2, text  # every scrape carries both workers' process figures
    # Each worker counted its own requests; every scrape, whichever worker took it, shows their sum.
    assert scrapes == [[10.0]] * 4
    with httpx.Client(base_url=base, timeout=5) as c:
        answered = c.get("/healthz", headers={"X-Request-Id": "trace-abc.42"})
    assert answered.headers["x-request-id"] == "trace-abc.42"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is one JSON object
    loggers = {r["logger"] for r in records}
    assert {"musicrec.serve", "uvicorn.error", "musicrec.service.main", "musicrec.access"} <= loggers, loggers
    assert sum(r["message"].startswith("ready: model") for r in records) == 2  # both workers, same format
    access = [r for r in records if r["logger"] == "musicrec.access" and r.get("request_id") == "trace-abc.42"]
    assert access and access[0]["path"] == "/healthz" and access[0]["status"] == 200
    assert len(pids) == 2


def test_the_multiprocess_directory_is_emptied_at_start(two_workers) -> None:  # type: ignore[no-untyped-def]
    base, _, metrics_dir = two_workers
    assert not (metrics_dir / "counter_999999.db").exists()  # would have been summed into every scrape
    assert httpx.get(f"{base}/metrics", timeout=5).status_code == 200


# -- in one process ---------------------------------------------------------------------------------

@pytest.fixture
async def client(demo_artifacts: Path) -> AsyncIterator[AsyncTestClient]:
    settings = Settings.from_env({"ARTIFACTS_DIR": str(demo_artifacts), "REDIS_URL": "memory://",
                                  "ACCESS_LOG": "true", "RELOAD_POLL_S": "0"}, env_file=None)
    async with AsyncTestClient(create_app(settings)) as c:
        yield c


@pytest.mark.anyio
async def test_a_request_id_is_kept_when_plain_and_replaced_when_not(client: AsyncTestClient,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="musicrec.access"):
        given = await client.get("/healthz", headers={"X-Request-Id": "from-the-proxy:7"})
        fresh = await client.get("/healthz")
        forged = await client.get("/healthz", headers={"X-Request-Id": "x" * 129})
    assert given.headers["x-request-id"] == "from-the-proxy:7"
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])
    assert fresh.headers["x-request-id"] != forged.headers["x-request-id"]
    lines = [r for r in caplog.records if r.name == "musicrec.access"]
    assert [r.status for r in lines] == [200, 200, 200] and lines[0].path == "/healthz"  # type: ignore[attr-defined]
    assert logs.request_id.get() is None  # the id belongs to the request, not to whoever runs next


@pytest.mark.anyio
async def test_single_process_metrics_include_process_figures(client: AsyncTestClient) -> None:
    text = (await client.get("/metrics")).text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info",
                 "musicrec_events_produced_total", "musicrec_model_info"):
        assert re.search(rf"^{name}[ {{]", text, re.M), name


def test_text_and_json_formats_carry_the_request_id() -> None:
    record = logging.makeLogRecord({"name": "musicrec.x", "levelname": "WARNING", "levelno": 30, "msg": "redis %s",
                                    "args": ("down",)})
    token = logs.request_id.set("rid-1")
    try:
        logs.RequestIdFilter().filter(record)
    finally:
        logs.request_id.reset(token)
    assert logs.TextFormatter().format(record).endswith("WARNING musicrec.x [rid-1]: redis down")
    doc = json.loads(logs.JsonFormatter().format(record))
    assert (doc["level"], doc["logger"], doc["message"], doc["request_id"]) == ("WARNING", "musicrec.x", "redis down",
                                                                               "rid-1")
    plain = logging.makeLogRecord({"name": "musicrec.x", "levelname": "INFO", "msg": "no request"})
    logs.RequestIdFilter().filter(plain)
    assert logs.TextFormatter().format(plain).endswith("INFO musicrec.x: no request")
