"""uvicorn's httptools protocol with two limits it lacks: the size of a request head, and its time.

Why here and not in the app: by the time an ASGI app sees a request, the server has already read
and parsed its whole head. uvicorn's httptools protocol has no limit on that (its
``h11_max_incomplete_event_size`` only applies to h11): a 16 MB header was answered 200, and a
128 MB one cost 19 s of a worker's CPU while ``/healthz`` waited 4 s behind it. Nor does it time
out a client that never finishes a request: 3,000 half-sent requests stayed open for a minute.

So, per connection: at most ``max_head_bytes`` of request line and headers are fed to the parser
(more is a 431 and the connection is closed), and a request must arrive whole (head and body)
within ``request_timeout_s`` of its first byte, or of the connection's opening (else 408 and close).
The waits between requests on a kept-alive connection stay uvicorn's (``timeout_keep_alive``).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from musicrec.service.settings import Settings


@dataclass(frozen=True)
class Limits:
    max_head_bytes: int = 16 * 1024
    request_timeout_s: float = 10.0


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = msgspec.json.encode({"status_code": status, "detail": detail})
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.run(http="musicrec.service.protocol:GuardedHttpToolsProtocol")``; ``configure`` sets the limits.

    The limits are class-wide because uvicorn builds one protocol per connection from its own config;
    each worker sets them once, from its Settings, when the app factory runs (before any connection).
    """

    limits: ClassVar[Limits] = Limits()

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.limits = Limits(settings.max_header_bytes, settings.request_timeout_s)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True     # reading a request line and headers (or waiting for the first byte)
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None  # armed from a request's first byte to its last

    # -- the deadline -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # the first request's deadline runs from the connection: one that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.limits.request_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self.transport.write(_raw_response(408, "Request Timeout",
                                               f"the request did not arrive within {self.limits.request_timeout_s:g} s"))
        self.transport.close()

    # -- the head's size ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_head and not self.transport.is_closing():
            room = self.limits.max_head_bytes - self._head_bytes
            if len(data) > room:
                # Feed only what fits: if the head ends inside it, the rest is body (or the next request).
                head, data = data[:room], data[room:]
                self._head_bytes += len(head)
                if head:
                    super().data_received(head)
                if self._in_head and not self.transport.is_closing():
                    self._reject_head()
                    return
                if self.transport.is_closing():
                    return
            else:
                self._head_bytes += len(data)
        super().data_received(data)

    def _reject_head(self) -> None:
        self._disarm()
        self.transport.write(_raw_response(431, "Request Header Fields Too Large",
                                           f"request line and headers exceed {self.limits.max_head_bytes} bytes"))
        self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection: its own deadline
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head, self._head_bytes = True, 0
