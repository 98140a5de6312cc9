"""ASGI middleware: every request gets an id, echoed in ``X-Request-Id`` and carried by its log lines.

A caller's own ``X-Request-Id`` (a proxy's, a client's retry) is kept when it is a plain token,
so one id follows a request through several services; anything else (too long, spaces,
control characters that could forge log lines) is replaced by a fresh one. The id is put in
``musicrec.logs.request_id`` for the task handling the request, so every record logged while
handling it (an error, a degraded dependency) names it. With ``ACCESS_LOG`` on, one line per
request says method, path, status, duration and the id.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Final

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from musicrec.logs import request_id
from musicrec.service.clients import random_id
from musicrec.service.security import raw_header

HEADER: Final = b"x-request-id"
_TOKEN: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
access = logging.getLogger("musicrec.access")


def incoming_id(scope: Scope) -> str:
    """The caller's X-Request-Id when it is a plain token (1–128 of ``A-Za-z0-9._:-``), else a fresh random one."""
    value = raw_header(scope["headers"], HEADER)
    if value is not None and _TOKEN.fullmatch(value):
        return value.decode("ascii")
    return random_id()


class RequestId:
    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_id(scope)
        token = request_id.set(rid)
        encoded = rid.encode("ascii")
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, encoded)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                elapsed_ms = (time.perf_counter() - started) * 1000
                access.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, elapsed_ms,
                            extra={"method": scope["method"], "path": scope["path"], "status": status,
                                   "duration_ms": round(elapsed_ms, 3)})
            request_id.reset(token)
