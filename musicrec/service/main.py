"""The application factory: ``create_app(settings, *, resources=None)``.

Resources (artefacts, session store, event sink) are opened in the lifespan and closed
in ``finally``, unless the caller passes its own (tests, embedding apps), which it then owns.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import anyio
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

from musicrec.service import admin, api, health
from musicrec.web import handlers as web
from musicrec.web.assets import static_files_router
from musicrec.service.answers import AnswerCache
from musicrec.index.artifacts import fingerprint
from musicrec.index.engine import Engine, EngineHolder, configure_faiss_threads
from musicrec.service.errors import EXCEPTION_HANDLERS
from musicrec.service.events import EventSink, open_event_sink
from musicrec.service.metrics import RequestMetrics, ServiceMetrics
from musicrec.service.openapi import REQUEST_ID_HEADER, docs_assets_router, openapi_config
from musicrec.service.reload import Reloader, watcher_done
from musicrec.service.request_id import RequestId
from musicrec.service.online import online_service
from musicrec.service.requests import ServiceRequest
from musicrec.service.security import Security
from musicrec.service.gate import Gate, Guard, WindowCounters
from musicrec.service.sessions import SessionStore, open_redis_link, open_session_store
from musicrec.service.settings import Settings

if TYPE_CHECKING:
    from musicrec.data.spotify import SpotifyClient

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20  # the largest legitimate body (100 ids + 1,000 exclusions) is ~70 KB
WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # templates and static assets


@dataclass
class Resources:
    """External resources a caller may inject; anything left None is opened from settings."""

    engine: Engine | None = None
    sessions: SessionStore | None = None
    events: EventSink | None = None
    spotify: "SpotifyClient | None" = None
    """Online mode's Spotify client (a test's points at a fake); None: one from settings."""


def _load_engine(path: Path, verified: str | None) -> Engine:
    return Engine.load(path, verify=verified is None or verified != fingerprint(path))


def create_app(settings: Settings | None = None, *, resources: Resources | None = None,
               verified: str | None = None) -> Litestar:
    """The app; ``verified``: the fingerprint of a version the caller has verified (``musicrec serve``), loaded
    without hashing its files again when it is still the one ``settings`` name."""
    settings = settings or Settings.from_env()
    given = resources or Resources()
    metrics = ServiceMetrics()
    security = Security.from_settings(settings)  # key digests and the cookie key, once, off the request path
    guard = Guard(settings, security)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            configure_faiss_threads(settings.faiss_threads)
            # `is None`, not `or`: a given resource may be falsy (an empty MemorySessionStore has len 0).
            engine = given.engine if given.engine is not None else \
                await anyio.to_thread.run_sync(_load_engine, settings.artifacts_dir, verified)
            # One Redis client and outage state per worker, for the sessions and the online-track cache alike.
            needs_redis = given.sessions is None or settings.mode == "online"
            link = await stack.enter_async_context(open_redis_link(settings)) if needs_redis else None
            sessions = given.sessions if given.sessions is not None else \
                await stack.enter_async_context(open_session_store(settings, link=link))
            events = given.events if given.events is not None else \
                await stack.enter_async_context(open_event_sink(settings))
            guard.counters = WindowCounters(link)  # rate limits count in the worker's Redis, in-process while it is down
            holder = EngineHolder(engine)
            reloader = Reloader(settings.artifacts_dir, holder)
            app.state.holder, app.state.sessions, app.state.events = holder, sessions, events
            answers = AnswerCache(settings.answer_cache_size)
            app.state.reloader = reloader
            app.state.online = online_service(settings, link, given.spotify)
            app.state.serving = api.Serving(holder, sessions, events, metrics, answers)  # the hot routes' (api.serving_of)
            if settings.reload_poll_s > 0:
                watcher = asyncio.create_task(reloader.watch(settings.reload_poll_s), name="artifact-watcher")
                watcher.add_done_callback(watcher_done)
                stack.callback(watcher.cancel)
            if engine.artifacts.manifest.demo:
                log.warning("serving the SYNTHETIC DEMO catalog (%s): build with --csv for real tracks",
                            engine.model_version)
            stack.callback(metrics.close)
            metrics.watch(lambda: {
                "produced": events.produced, "dropped": events.dropped, "buffered": events.buffered,
                "redis_degraded": sessions.status == "degraded", "kafka_degraded": events.status == "degraded",
                "model_version": holder.current.model_version, "demo": holder.current.artifacts.manifest.demo,
                "answer_hits": answers.hits, "answer_misses": answers.misses,
                "sessions_evicted": sessions.evictions[0], "session_events_evicted": sessions.evictions[1],
                "shed": guard.shed, "rate_limited": guard.limited, "in_flight": guard.in_flight,
            })
            if metrics.multiprocess:  # several workers: keep this one's figures in the shared files fresh
                refresher = asyncio.create_task(metrics.refresh_loop(), name="metrics-refresh")
                stack.callback(refresher.cancel)
            log.info("ready: model %s, sessions %s, events %s", engine.model_version, sessions.status, events.status)
            yield

    def provide_engine(state: State) -> Engine:
        return state.holder.current

    def provide_sessions(state: State) -> SessionStore:
        return state.sessions

    def provide_events(state: State) -> EventSink:
        return state.events

    def provide_metrics() -> ServiceMetrics:
        return metrics

    app = Litestar(
        route_handlers=[*api.ROUTES, *health.ROUTES, *admin.ROUTES, *web.ROUTES,
                        static_files_router("/static", [WEB_DIR / "static"]), docs_assets_router()],
        template_config=TemplateConfig(directory=WEB_DIR / "templates", engine=JinjaTemplateEngine),
        dependencies={
            "engine": Provide(provide_engine, sync_to_thread=False),
            "sessions": Provide(provide_sessions, sync_to_thread=False),
            "events": Provide(provide_events, sync_to_thread=False),
            "metrics": Provide(provide_metrics, sync_to_thread=False),
        },
        lifespan=[lifespan],
        logging_config=None,  # logging is the process's (musicrec/logs.py), one format for uvicorn and us
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[DefineMiddleware(RequestId, access_log=settings.access_log), DefineMiddleware(Gate, guard=guard)],
        request_max_body_size=MAX_BODY_BYTES,
        request_class=ServiceRequest,
        openapi_config=openapi_config(),
        response_headers=[REQUEST_ID_HEADER],
        state=State({"settings": settings, "security": security, "guard": guard}),
    )
    # Around the whole app, not in ``middleware=`` (a per-route stack): a request no route matches is counted too.
    app.asgi_handler = RequestMetrics(app.asgi_handler, histogram=metrics.request_seconds)
    return app
