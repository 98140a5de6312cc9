"""Domain errors and their one mapping to HTTP status: JSON under the API, pages under the web UI.

``describe`` is the mapping (a domain error, one of Litestar's, anything else); ``from_spotify``
turns the Spotify client's errors into domain errors. The JSON handlers here and the web UI's
page handler (musicrec/web/handlers.py) both render what ``describe`` says. Every answer of 500
or above is logged with its traceback (``log_server_error``), whichever path raised it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from musicrec.data.spotify import SpotifyAuthError, SpotifyError, SpotifyNotFound, SpotifyRateLimited, SpotifyUnavailable

log = logging.getLogger(__name__)


class DomainError(Exception):
    status_code = 400
    title = "Something is wrong with this request"
    """The heading of the web UI's error page."""
    logged_each = True
    """False where the raiser logs a summary instead (shedding load must not also flood the log)."""

    def __init__(self, detail: str, *, title: str | None = None, headers: Mapping[str, str] | None = None,
                 **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or None
        if title is not None:
            self.title = title
        self.headers = dict(headers or {})


class BadRequest(DomainError):
    status_code = 400


class Unauthorized(DomainError):
    status_code = 401


class Forbidden(DomainError):
    status_code = 403


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    """The request was understood but the service's state refuses it (e.g. a broken artefact version)."""

    status_code = 409


class UnsupportedMediaType(DomainError):
    """A body the route cannot read as JSON (its Content-Type says something else)."""

    status_code = 415


class TooManyRequests(DomainError):
    """The caller is over its rate limit; ``Retry-After`` says when its window ends."""

    status_code = 429
    title = "Too many requests"


class ClientDisconnected(DomainError):
    """The client hung up before its request was complete: nginx's 499, never a server error."""

    status_code = 499


class Overloaded(DomainError):
    """This worker is shedding load (too many requests in flight); the client should retry shortly."""

    status_code = 503
    title = "The service is busy"
    logged_each = False  # the in-flight limiter logs how many it shed, at most every few seconds


class Unavailable(DomainError):
    """A dependency this request cannot do without did not answer (Spotify, for a song outside the catalog)."""

    status_code = 503


class BadGateway(DomainError):
    """A dependency answered with an error of its own."""

    status_code = 502


def _json(status: int, detail: str, extra: object | None = None) -> Response:
    body: dict[str, object] = {"status_code": status, "detail": detail}
    if extra:
        body["extra"] = extra
    return Response(body, status_code=status, media_type=MediaType.JSON)


def log_server_error(request: Request, exc: Exception) -> None:
    """One ERROR line with the traceback for every 5xx answer; 4xx are the client's business."""
    status = exc.status_code if isinstance(exc, (DomainError, HTTPException)) else HTTP_500_INTERNAL_SERVER_ERROR
    if status >= 500 and getattr(exc, "logged_each", True):
        log.error("%d on %s %s", status, request.method, request.url.path, exc_info=exc)


def domain_error_handler(request: Request, exc: DomainError) -> Response:
    log_server_error(request, exc)
    response = _json(exc.status_code, exc.detail, exc.extra)
    response.headers.update(exc.headers)
    return response


def http_error_handler(request: Request, exc: HTTPException) -> Response:
    """Litestar's own HTTP exceptions (validation, 404 route, 405, 413, its 500s) as the same JSON shape."""
    log_server_error(request, exc)
    response = _json(exc.status_code, exc.detail, exc.extra)
    response.headers.update(exc.headers or {})
    return response


def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _json(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


EXCEPTION_HANDLERS = {
    DomainError: domain_error_handler,
    HTTPException: http_error_handler,
    Exception: unexpected_error_handler,
}


# -- the mapping, for the web UI's pages too -------------------------------------------------------

@dataclass(frozen=True)
class ErrorView:
    """What a caller is told: status, a heading (pages), the detail, extra data (JSON) and headers."""

    status: int
    title: str
    detail: str
    extra: object | None = None
    headers: dict[str, str] = field(default_factory=dict)


def describe(exc: Exception) -> ErrorView:
    """The one mapping from an exception to what the caller sees; an unexpected one is a 500 that tells nothing."""
    if isinstance(exc, DomainError):
        return ErrorView(exc.status_code, exc.title, exc.detail, exc.extra, exc.headers)
    if isinstance(exc, HTTPException):
        title = "Page not found" if exc.status_code == 404 else "Something is wrong with this request"
        return ErrorView(exc.status_code, title, str(exc.detail), exc.extra, dict(exc.headers or {}))
    return ErrorView(HTTP_500_INTERNAL_SERVER_ERROR, "Something went wrong", "internal error")


def from_spotify(exc: SpotifyError, track_id: str) -> DomainError:
    """A Spotify failure while looking up a song outside the catalog, as the listener should hear it."""
    if isinstance(exc, SpotifyNotFound):
        return NotFound(f"Neither this catalog nor Spotify has a song with the id “{track_id}”.", title="Song not found")
    if isinstance(exc, SpotifyRateLimited):
        wait = int(math.ceil(exc.retry_after_s or 30))
        return Unavailable(f"Spotify asked us to slow down. Try this song again in about {wait} seconds.",
                           title="Spotify is busy", headers={"Retry-After": str(wait)})
    if isinstance(exc, SpotifyUnavailable):
        return Unavailable("This song is not in the local catalog and Spotify did not answer. Try again shortly.",
                           title="Spotify could not be reached", headers={"Retry-After": "30"})
    if isinstance(exc, SpotifyAuthError):
        log.error("online mode: %s", exc)
        return Unavailable("The service's Spotify credentials were refused, so songs outside the catalog cannot be "
                           "shown.", title="Spotify is not available")
    log.warning("online lookup of %s failed: %s", track_id, exc)
    return BadGateway("Spotify could not describe this song right now.", title="Spotify answered with an error")
