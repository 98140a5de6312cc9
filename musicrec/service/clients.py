"""Who is listening: the client id from header, signed cookie or event body, or a fresh one.

Only a caller with a valid API key (or any caller while ``API_KEYS`` is unset) may name a
listener with ``X-Client-Id`` or ``client_id`` in an event; everyone else is the listener their
signed cookie says, or a new one (musicrec.service.security).
"""
from __future__ import annotations

import re
import uuid
from typing import TypeVar

from litestar import Request, Response
from litestar.datastructures import Cookie

from musicrec.service.errors import BadRequest, Unauthorized
from musicrec.service.security import API_KEY_STATE, Security

CLIENT_HEADER = "x-client-id"
CLIENT_COOKIE = "client_id"
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


def client_id(request: Request, body_client_id: str | None = None) -> tuple[str, bool]:
    """(client id, is_new). Header beats cookie beats body; a malformed header or body id is a 400.

    A header or body id from a caller that may not name listeners is a 401, not ignored: the
    caller would otherwise think it was writing into that listener's session. A cookie that is
    not ours (forged, unsigned, from another secret) is a new listener.
    """
    trusted = may_name_listeners(request)
    header = request.headers.get(CLIENT_HEADER)
    if header is not None:
        if not trusted:
            raise Unauthorized(f"{CLIENT_HEADER} is honoured only with a valid API key "
                               "(Authorization: Bearer <key> or X-Api-Key)", headers={"WWW-Authenticate": "Bearer"})
        return _checked(header, f"header {CLIENT_HEADER}"), False
    cookie = request.cookies.get(CLIENT_COOKIE)
    if cookie is not None:
        security: Security = request.app.state.security
        known = security.signer.verify(cookie)
        if known is not None and _VALID.fullmatch(known):
            return known, False
    if body_client_id is not None:
        if not trusted:
            raise Unauthorized("client_id in an event is honoured only with a valid API key",
                               headers={"WWW-Authenticate": "Bearer"})
        return _checked(body_client_id, "body client_id"), False
    return uuid.uuid4().hex, True


def remember(request: Request, response: R, client: str, is_new: bool) -> R:
    """Set the signed cookie for a listener we just named, so their next request is the same session."""
    if is_new:
        security: Security = request.app.state.security
        response.cookies.append(Cookie(key=CLIENT_COOKIE, value=security.signer.sign(client), max_age=COOKIE_MAX_AGE_S,
                                       path="/", samesite="lax", httponly=True,
                                       secure=request.scope["scheme"] == "https"))
    return response
