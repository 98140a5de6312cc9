"""Domain errors and their one mapping to HTTP status: every error leaves as JSON."""
from __future__ import annotations

import logging

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

log = logging.getLogger(__name__)


class DomainError(Exception):
    status_code = 400

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or None


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


class Overloaded(DomainError):
    status_code = 503


def _json(status: int, detail: str, extra: object | None = None) -> Response:
    body: dict[str, object] = {"status_code": status, "detail": detail}
    if extra:
        body["extra"] = extra
    return Response(body, status_code=status, media_type=MediaType.JSON)


def domain_error_handler(_: Request, exc: DomainError) -> Response:
    return _json(exc.status_code, exc.detail, exc.extra)


def http_error_handler(request: Request, exc: HTTPException) -> Response:
    """Litestar's own 4xx (validation, 404 route, 405, 413) as the same JSON shape."""
    return _json(exc.status_code, exc.detail, exc.extra)


def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _json(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


EXCEPTION_HANDLERS = {
    DomainError: domain_error_handler,
    HTTPException: http_error_handler,
    Exception: unexpected_error_handler,
}
