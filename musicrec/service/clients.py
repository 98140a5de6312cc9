"""Who is listening: the client id from header, cookie or event body, or a fresh one."""
from __future__ import annotations

import re
import uuid
from typing import TypeVar

from litestar import Request, Response
from litestar.datastructures import Cookie

from musicrec.service.errors import BadRequest

CLIENT_HEADER = "x-client-id"
CLIENT_COOKIE = "client_id"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
_VALID = re.compile(r"[A-Za-z0-9_-]{1,64}")
R = TypeVar("R", bound=Response)


def _checked(value: str, where: str) -> str:
    if not _VALID.fullmatch(value):
        raise BadRequest(f"invalid client id in {where}: expected 1–64 characters of [A-Za-z0-9_-]")
    return value


def client_id(request: Request, body_client_id: str | None = None) -> tuple[str, bool]:
    """(client id, is_new). Header beats cookie beats body; a malformed one is a 400, never ignored."""
    header = request.headers.get(CLIENT_HEADER)
    if header is not None:
        return _checked(header, f"header {CLIENT_HEADER}"), False
    cookie = request.cookies.get(CLIENT_COOKIE)
    if cookie is not None:
        return _checked(cookie, f"cookie {CLIENT_COOKIE}"), False
    if body_client_id is not None:
        return _checked(body_client_id, "body client_id"), False
    return uuid.uuid4().hex, True


def remember(response: R, client: str, is_new: bool) -> R:
    """Set the cookie for a listener we just named, so their next request is the same session."""
    if is_new:
        response.cookies.append(Cookie(key=CLIENT_COOKIE, value=client, max_age=COOKIE_MAX_AGE_S, path="/",
                                       samesite="lax", httponly=False))
    return response
