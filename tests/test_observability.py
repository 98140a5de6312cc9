"""Logs and request ids as an operator sees them."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from musicrec import logs
from musicrec.service.main import create_app
from musicrec.service.settings import Settings


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


@pytest.mark.anyio
async def test_single_process_metrics_include_process_figures(client: AsyncTestClient) -> None:
    text = (await client.get("/metrics")).text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info",
                 "musicrec_events_produced_total", "musicrec_model_info"):
        assert re.search(rf"^{name}[ {{]", text, re.M), name
