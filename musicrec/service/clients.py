"""Who is listening: the client id from header, signed cookie or event body, or a fresh one.

Only a caller with a valid API key (or any caller while ``API_KEYS`` is unset) may name a
listener with ``X-Client-Id`` or ``client_id`` in an event; everyone else is the listener their
signed cookie says, or a new one (musicrec.service.security).
"""
from __future__ import annotations

import os
import re
from typing import Iterable, TypeVar

from litestar import Request, Response
from litestar.datastructures import Cookie

from musicrec.service.errors import BadRequest, Unauthorized
from musicrec.service.security import API_KEY_STATE, Security, raw_header

CLIENT_HEADER = "x-client-id"
CLIENT_COOKIE = "client_id"
_HEADER_NAME = CLIENT_HEADER.encode("latin-1")
_COOKIE_PREFIX = CLIENT_COOKIE + "="
COOKIE_MAX_AGE_S = 365 * 24 * 3600
_VALID = re.compile(r"[A-Za-z0-9_-]{1,64}")
R = TypeVar("R", bound=Response)


def _checked(value: str, where: str) -> str:
    if not _VALID.fullmatch(value):
        raise BadRequest(f"invalid client id in {where}: expected 1–64 characters of [A-Za-z0-9_-]")
    return value


def may_name_listeners(request: Request) -> bool:
    """True for a caller with a valid API key, and for every caller while no API key is configured."""
    security: Security = request.app.state.security
    return not security.api_keys.enabled or request.scope["state"].get(API_KEY_STATE) is not None


def random_id() -> str:
    """128 random bits in hex, for new listeners, events and requests: the form ``uuid4().hex`` gave, at a
    fraction of its cost (one of each per request adds up)."""
    return os.urandom(16).hex()


def signed_cookie(headers: Iterable[tuple[bytes, bytes]], security: Security) -> str | None:
    """The listener our signed ``client_id`` cookie names, if the request carries a valid one.

    Read from the raw ASGI headers: the request path needs this one cookie, and building
    Litestar's header and cookie mappings for it cost more than the rest of a cached answer's handler.
    """
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                part = part.strip()
                if part.startswith(_COOKIE_PREFIX):
                    known = security.signer.verify(part[len(_COOKIE_PREFIX):])
                    if known is not None and _VALID.fullmatch(known):
                        return known
    return None


def client_id(request: Request, body_client_id: str | None = None) -> tuple[str, bool]:
    """(client id, is_new). Header beats cookie beats body; a malformed header or body id is a 400.

    A header or body id from a caller that may not name listeners is a 401, not ignored: the
    caller would otherwise think it was writing into that listener's session. A cookie that is
    not ours (forged, unsigned, from another secret) is a new listener.
    """
    headers = request.scope["headers"]
    header = raw_header(headers, _HEADER_NAME)
    if header is not None:
        if not may_name_listeners(request):
            raise Unauthorized(f"{CLIENT_HEADER} is honoured only with a valid API key "
                               "(Authorization: Bearer <key> or X-Api-Key)", headers={"WWW-Authenticate": "Bearer"})
        return _checked(header.decode("latin-1"), f"header {CLIENT_HEADER}"), False
    known = signed_cookie(headers, request.app.state.security)
    if known is not None:
        return known, False
    if body_client_id is not None:
        if not may_name_listeners(request):
            raise Unauthorized("client_id in an event is honoured only with a valid API key",
                               headers={"WWW-Authenticate": "Bearer"})
        return _checked(body_client_id, "body client_id"), False
    return random_id(), True


def listener_cookie(request: Request, client: str) -> Cookie:
    """The signed cookie that makes a listener we just named the same session on their next request."""
    security: Security = request.app.state.security
    return Cookie(key=CLIENT_COOKIE, value=security.signer.sign(client), max_age=COOKIE_MAX_AGE_S, path="/",
                  samesite="lax", httponly=True, secure=request.scope["scheme"] == "https")


def remember(request: Request, response: R, client: str, is_new: bool) -> R:
    """Set the signed cookie on ``response`` for a listener we just named."""
    if is_new:
        response.cookies.append(listener_cookie(request, client))
    return response
