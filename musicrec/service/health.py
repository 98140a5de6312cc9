"""Liveness, readiness (what is degraded and why) and Prometheus metrics."""
from __future__ import annotations

from litestar import Request, Response, get
from litestar.datastructures import State

from musicrec.service.admin import admin_token_ok, authorise_admin
from musicrec.service.deps import EngineDep, EventsDep, MetricsDep, SessionsDep
from musicrec.index.engine import Engine
from musicrec.service.events import EventSink
from musicrec.service.online import OnlineService
from musicrec.service.openapi import documented
from musicrec.service.sessions import SessionStore
from musicrec.service.settings import Settings


@get("/healthz", summary="The process is alive", **documented("operations", errors=(), example={"status": "ok"}))
async def healthz() -> dict[str, str]:
    """Always 200 while the worker's event loop runs: for a liveness probe, not for routing traffic."""
    return {"status": "ok"}


def readiness(engine: Engine, sessions: SessionStore, events: EventSink,
              online: OnlineService | None = None) -> dict[str, object]:
    manifest = engine.artifacts.manifest
    degraded = [name for name, status in (("redis", sessions.status), ("kafka", events.status)) if status == "degraded"]
    out: dict[str, object] = {
        "status": "degraded" if degraded else "ok",
        "degraded": degraded,
        "artifacts": {"loaded": True, "model_version": manifest.model_version, "n_tracks": manifest.n_tracks,
                      "index_type": manifest.index_type, "demo": manifest.demo, "path": str(engine.artifacts.path)},
        "model_version": manifest.model_version,
        "demo": manifest.demo,
        "redis": sessions.status,
        "kafka": events.status,
        "events": {"produced": events.produced, "buffered": events.buffered, "dropped": events.dropped},
    }
    if online is not None:  # MODE=online: its track cache shares the worker's Redis link (and its outages)
        out["online"] = {"cache": online.cache.status}
    return out


def _details_allowed(request: Request, settings: Settings) -> bool:
    """``OPS_DETAILS=public``: everyone; ``private``: a caller presenting the admin token."""
    return settings.ops_details == "public" or admin_token_ok(request, settings.admin_token)


@get("/readyz", summary="Serving? Artefacts loaded; redis and kafka ok, degraded, memory or disabled",
     **documented("operations", errors=(), example={"status": "ok", "degraded": [], "model_version": "20261201T093345Z-e5d67f7b",
                                                    "demo": False, "redis": "ok", "kafka": "ok"}))
async def readyz(request: Request, engine: EngineDep, sessions: SessionsDep, events: EventsDep,
                 state: State) -> dict[str, object]:
    """200 whenever a version is loaded; a degraded dependency is named in ``degraded`` (the service still
    answers from its fallbacks), so a probe may route traffic on ``status`` alone. With ``OPS_DETAILS=private``
    only ``status`` is shown, unless the admin token is presented."""
    # Degraded dependencies still serve (fallbacks), so readiness stays 200 and says which.
    ready = readiness(engine, sessions, events, state.get("online"))
    if not _details_allowed(request, state.settings):
        return {"status": ready["status"]}  # what a load balancer needs; versions, paths and counts stay private
    return ready


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4; charset=utf-8",
     **documented("operations", errors=(401, 403)))
async def metrics_endpoint(request: Request, state: State, metrics: MetricsDep) -> Response[bytes]:
    """Request latency by route and status, scoring time, event and cache counters, degraded flags, the model
    version, and process figures; with several workers, the sum over all of them. With ``OPS_DETAILS=private``
    it needs the admin token."""
    if not _details_allowed(request, state.settings):
        authorise_admin(request, state.settings.admin_token)  # raises: 403 without a token configured, else 401
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


ROUTES = [healthz, readyz, metrics_endpoint]
