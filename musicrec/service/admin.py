"""Operator routes: ``POST /admin/reload`` swaps in the version ``current`` points at."""
from __future__ import annotations

import hmac

from litestar import Request, post
from litestar.datastructures import State

from musicrec.service.errors import Conflict, Forbidden, Unauthorized
from musicrec.service.openapi import documented
from musicrec.service.reload import ReloadResult


def admin_token_ok(request: Request, token: str) -> bool:
    """Does the request carry ``Authorization: Bearer <ADMIN_TOKEN>``? (Compared in constant time; never with no token.)"""
    given = request.headers.get("authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def authorise_admin(request: Request, token: str) -> None:
    """403 while no ADMIN_TOKEN is configured, 401 without the right one. Attempts are rate limited (gate)."""
    if not token:
        raise Forbidden("the admin API is disabled: set ADMIN_TOKEN to enable it")
    if not admin_token_ok(request, token):
        raise Unauthorized("missing or wrong admin token (Authorization: Bearer <ADMIN_TOKEN>)",
                           headers={"WWW-Authenticate": "Bearer"})


@post("/admin/reload", status_code=200, summary="Load the artefact version `current` points at (token required)",
      **documented("operations", errors=(401, 403, 409, 429, 503), admin=True,
                   example={"swapped": True, "model_version": "20261201T093345Z-e5d67f7b",
                            "path": "artifacts/20261201T093345Z-e5d67f7b"}))
async def admin_reload(request: Request, state: State) -> dict[str, object]:
    """Only the worker that answers swaps at once; the others notice within ``RELOAD_POLL_S``. A version that
    fails to load is refused (409) and the old one keeps serving."""
    authorise_admin(request, state.settings.admin_token)
    result: ReloadResult = await state.reloader.check(force=True)
    if result.error:
        raise Conflict(f"new version refused, still serving {result.model_version}: {result.error}")
    return {"swapped": result.swapped, "model_version": result.model_version, "path": result.path}


ROUTES = [admin_reload]
