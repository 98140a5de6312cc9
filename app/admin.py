"""Operator routes: ``POST /admin/reload`` swaps in the version ``current`` points at."""
from __future__ import annotations

import hmac

from litestar import Request, post
from litestar.datastructures import State

from app.errors import DomainError
from app.reload import ReloadResult


class Unauthorized(DomainError):
    status_code = 401


class Forbidden(DomainError):
    status_code = 403


class ReloadFailed(DomainError):
    status_code = 409


def _authorise(request: Request, token: str) -> None:
    if not token:
        raise Forbidden("the admin API is disabled: set ADMIN_TOKEN to enable it")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("missing or wrong admin token (Authorization: Bearer <ADMIN_TOKEN>)")


@post("/admin/reload", status_code=200, summary="Load the artefact version `current` points at (token required)")
async def admin_reload(request: Request, state: State) -> dict[str, object]:
    _authorise(request, state.settings.admin_token)
    result: ReloadResult = await state.reloader.check(force=True)
    if result.error:
        raise ReloadFailed(f"new version refused, still serving {result.model_version}: {result.error}")
    return {"swapped": result.swapped, "model_version": result.model_version, "path": result.path}


ROUTES = [admin_reload]
