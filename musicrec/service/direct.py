"""The hot routes' parameters, read here for a well-formed request: the handler called without Litestar's kwargs machinery.

Why: Litestar extracts a handler's parameters on every request: the query into a multi-dict, the
body through its request stream and a generic JSON decode, then a conversion to the handler's
Struct. Under load that made a Litestar app with fixed answers cost far more CPU per request than
the same routes as raw ASGI handlers: much of what the service may spend beyond the HTTP floor
(benchmarks/README.md, ``--framework-floor``). ``Direct``, the innermost
middleware of the hot routes, does that work itself for the requests clients actually send and
then calls the handler as Litestar would (its ``before_request`` hook first):

- a query of plain ``name=value`` pairs (no escapes, no repeats, only the handler's parameters)
  goes through the handler's own signature model: the same conversion, the same 400s;
- a JSON body (``data``) is decoded straight into the handler's Struct, whose ``Meta`` constraints
  are all of its validation.

Anything else (an escaped or repeated query name, a body the Struct refuses, one over the size
limit) is handed to Litestar untouched, with the body read so far replayed, so it is answered
exactly as it was without this: errors keep one source. A route with guards, response caching or
an ``after_response`` hook, which this does not reproduce, is always left to Litestar.
"""
from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from musicrec.service.errors import ClientDisconnected
from musicrec.service.security import raw_header

_PLAIN_PAIR = re.compile(rb"([A-Za-z_][A-Za-z0-9_]*)=([A-Za-z0-9_.\-]*)")


class Direct:
    """Handler-level middleware of a hot route (``DefineMiddleware(Direct)``); see the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._ready = False
        self._query: frozenset[str] = frozenset()
        self._defaults: dict[str, Any] = {}
        self._decode: Any = None
        self._litestar_only = False

    def _prepare(self, scope: Scope) -> None:
        """What the route's handler takes, read once from its signature: query names, or the body's Struct."""
        handler = scope["route_handler"]
        self._litestar_only = bool(handler.resolve_guards()) or bool(handler.cache) or \
            handler.resolve_after_response() is not None
        parameters = handler.parsed_fn_signature.parameters
        body = parameters.get("data")
        self._decode = msgspec.json.Decoder(body.annotation).decode if body is not None else None
        self._query = frozenset(name for name in parameters if name not in ("request", "data"))
        # Litestar hands the signature model every parameter, a missing one as its default.
        self._defaults = {name: parameters[name].default for name in self._query if parameters[name].has_default}
        self._ready = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._ready:
            self._prepare(scope)
        if self._litestar_only:
            await self.app(scope, receive, send)
            return
        handler = scope["route_handler"]
        query: dict[str, str] | None = None
        if self._decode is None:
            query = _plain_query(scope["query_string"], self._query)
            if query is None:
                await self.app(scope, receive, send)
                return
        request = handler.resolve_request_class()(scope=scope, receive=receive, send=send)
        before = handler.resolve_before_request()  # first, as in Litestar: json_only's 415 comes before the body
        if before is not None and (early := await before(request)) is not None:
            response = await handler.to_response(app=scope["litestar_app"], data=early, request=request)
            await response(scope, receive, send)
            return
        if query is not None:
            kwargs = handler.signature_model.parse_values_from_connection_kwargs(
                connection=request, kwargs={**self._defaults, **query, "request": request})
        else:
            body, read = await _read_body(scope, receive, handler.resolve_request_max_body_size())
            try:
                data = self._decode(body) if body is not None else None
            except msgspec.DecodeError:  # ValidationError too: Litestar answers it, with its own message
                data = None
            if data is None:  # Litestar runs the hook again, then answers from the replayed body
                await self.app(scope, _replay(read, receive), send)
                return
            kwargs = {"request": request, "data": data}
        result = handler.fn(**kwargs) if handler.has_sync_callable else await handler.fn(**kwargs)  # as Litestar calls it
        response = await handler.to_response(app=scope["litestar_app"], data=result, request=request)
        await response(scope, receive, send)


def _plain_query(query_string: bytes, names: frozenset[str]) -> dict[str, str] | None:
    """``name=value`` pairs when every pair is plain and names one of ``names`` once; else None."""
    if not query_string:
        return {}
    found: dict[str, str] = {}
    for pair in query_string.split(b"&"):
        match = _PLAIN_PAIR.fullmatch(pair)
        if match is None:
            return None
        name = match.group(1).decode()
        if name not in names or name in found:
            return None
        found[name] = match.group(2).decode()
    return found


async def _read_body(scope: Scope, receive: Receive, limit: int | None) -> tuple[bytes | None, list[Message]]:
    """(the whole body, or None when it is over ``limit``; the messages read, to replay).

    A client gone before the body's end is ClientDisconnected (a 499), as in ``ServiceRequest.stream``.
    """
    read: list[Message] = []
    if limit is not None:
        declared = raw_header(scope["headers"], b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return None, read
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client disconnected before sending the whole body")
        read.append(message)
        size += len(message.get("body", b""))
        if limit is not None and size > limit:
            return None, read
        if not message.get("more_body", False):
            break
    return b"".join(m.get("body", b"") for m in read), read


def _replay(read: list[Message], receive: Receive) -> Receive:
    """``receive`` with the messages already read given back first, in order."""
    pending = list(reversed(read))

    async def replaying() -> Message:
        return pending.pop() if pending else await receive()

    return replaying
