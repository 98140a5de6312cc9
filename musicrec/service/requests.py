"""The request class the app uses: a JSON body nested sanely, from a client still there.

Litestar decodes a ``JSONBody`` parameter generically (``msgspec.json.decode`` without a type)
before it converts the result to the handler's Struct, so a body nested a thousand deep (2 KB)
raised RecursionError there: a 500 with a traceback per request. Here it is a 400, and a client
that hangs up mid-body is told apart from a server failure. (A body that is not declared JSON is
refused before this, by the routes' ``json_only`` hook.)
"""
from __future__ import annotations

from typing import Any, AsyncGenerator

from litestar import Request
from litestar.exceptions import SerializationException
from litestar.types import Message

from musicrec.service.errors import ClientDisconnected


class ServiceRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            # Litestar turns a SerializationException raised while reading parameters into a 400.
            raise SerializationException("JSON body nested too deeply") from None

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The body, raising ClientDisconnected (499, not a 500) when the client goes away before its end."""
        receive = self.receive

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("the client disconnected before sending the whole body")
            return message

        self.receive = watched  # type: ignore[assignment]
        try:
            async for chunk in super().stream():
                yield chunk
        finally:
            self.receive = receive
