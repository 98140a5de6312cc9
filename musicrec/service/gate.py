"""The gate every request passes before its route: shed load, check the API key, count against rate limits.

One ASGI middleware, in the app's middleware stack (so what it raises becomes the route's own
JSON or HTML error). Per request it does no more than a scan of the raw headers, at most one
SHA-256 of a presented key, and a count in a dict (Redis only every so many requests).

Why not Litestar's ``RateLimitMiddleware``: it keeps every request's timestamp of the window in
one JSON list that it reads, decodes, extends, encodes and writes back per request, under one lock
per worker. At 6,000 requests a minute per key that is a 66 KB value and ~250 µs of CPU per request
(more than a whole cached recommendation), serialised on two Redis round trips. A fixed-window
count answers the same question in O(1), shared by every worker and replica (``WindowCounters``).

Limits, per window of ``WINDOW_S``:
* a caller with a valid API key: ``API_KEY_RATE_LIMIT_PER_MIN`` per key;
* anyone else (browsers, keyless callers): ``RATE_LIMIT_PER_MIN`` per client address;
* ``/admin/*`` (and a token presented to ``/metrics``/``/readyz`` when their details are private):
  ``ADMIN_RATE_LIMIT_PER_MIN`` per client address, so a token cannot be guessed at speed.
Over a limit: 429 with ``Retry-After`` (seconds to the window's end). More than ``MAX_IN_FLIGHT``
requests in flight in one worker: 503 with ``Retry-After``, before latency collapses.
``/healthz`` is never limited; ``/readyz``, ``/metrics`` and ``/static/*`` are not shed or counted.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Final

from litestar.types import ASGIApp, Receive, Scope, Send

from musicrec.service.clients import signed_cookie
from musicrec.service.errors import Overloaded, TooManyRequests, Unauthorized
from musicrec.service.security import API_KEY_STATE, Security, presented_key
from musicrec.service.sessions import DEFAULT_PREFIX, REDIS_DOWN, RedisLink
from musicrec.service.settings import Settings

log = logging.getLogger(__name__)

WINDOW_S: Final = 60
API, ADMIN, OPS, PAGE = "api", "admin", "ops", "page"


def area_of(path: str) -> str | None:
    """Which rules apply to ``path``; None: none (liveness and static assets)."""
    if path.startswith("/api/") or path == "/events":
        return API
    if path.startswith("/admin/"):
        return ADMIN
    if path in ("/readyz", "/metrics"):
        return OPS
    if path == "/healthz" or path.startswith("/static/"):
        return None
    return PAGE


@dataclass(slots=True)
class _Count:
    window: int
    synced: int = 0   # the shared (Redis) count at the last sync: every worker's requests
    pending: int = 0  # this worker's requests not yet added to it
    sending: int = 0  # being added right now


class WindowCounters:
    """Requests per (bucket, identity) in the current window, shared through Redis, counted locally in between.

    Each worker counts every request at once in-process and adds its count to the shared one in
    Redis (INCRBY, one round trip) every ``1/SYNC_FRACTION`` of the limit: a Redis round trip per
    request cost more CPU than a cached recommendation here (the kernel's loopback send). So a limit
    can be overshot by less than that fraction per worker; a limit of 64 or less syncs every request
    (admin attempts are counted exactly). While Redis is down (the worker's one ``RedisLink`` decides,
    so the limits fall back with the sessions) each worker counts alone. The in-process table is
    bounded: past ``local_max`` identities it keeps only this window's, and afresh if still too many.
    """

    SYNC_FRACTION: Final = 64

    def __init__(self, link: RedisLink | None, *, prefix: str = DEFAULT_PREFIX, window_s: int = WINDOW_S,
                 local_max: int = 100_000) -> None:
        self.link = link
        self.prefix = prefix
        self.window_s = window_s
        self.local_max = local_max
        self._local: dict[tuple[str, str], _Count] = {}

    async def hit(self, bucket: str, identity: str, limit: int) -> tuple[int, float]:
        """Count one request; (requests in this window so far, as best known; seconds until the window ends)."""
        now = time.time()
        window = int(now // self.window_s)
        left = self.window_s - now % self.window_s
        count = self._entry(bucket, identity, window)
        count.pending += 1
        link = self.link
        if link is not None and link.up and count.pending >= max(1, limit // self.SYNC_FRACTION):
            amount, count.pending = count.pending, 0
            count.sending += amount
            key = f"{self.prefix}rate:{bucket}:{identity}:{window}"
            try:
                total, _ = await link.client.pipeline(((b"INCRBY", key, amount), (b"EXPIRE", key, self.window_s + 1)))
                count.synced = max(count.synced, int(total) - count.sending + amount)
            except REDIS_DOWN as exc:
                count.pending += amount  # counted here still; added to Redis once it answers again
                link.mark_down(exc)
            finally:
                count.sending -= amount
        return count.synced + count.sending + count.pending, left

    def _entry(self, bucket: str, identity: str, window: int) -> _Count:
        count = self._local.get((bucket, identity))
        if count is not None and count.window == window:
            return count
        if count is None and len(self._local) >= self.local_max:
            self._local = {k: v for k, v in self._local.items() if v.window == window}
            if len(self._local) >= self.local_max:
                log.warning("rate limiter: more than %d identities this window; starting the count afresh",
                            self.local_max)
                self._local.clear()
        count = self._local[(bucket, identity)] = _Count(window)
        return count


class Guard:
    """The gate's state and rules, shared by every request of one app (one worker)."""

    def __init__(self, settings: Settings, security: Security, shed_log_interval_s: float = 10.0) -> None:
        self.settings = settings
        self.security = security
        self.counters: WindowCounters | None = None
        """Set by the app's lifespan, once the session store (whose Redis it shares) is open."""
        self.in_flight = 0
        self.shed = 0
        """Requests answered 503 because ``max_in_flight`` were already in flight."""
        self.limited = 0
        """Requests answered 429 (over a rate limit)."""
        self._private_ops = settings.ops_details == "private"
        self._shed_log_interval_s = shed_log_interval_s
        self._last_shed_log = float("-inf")

    def check_load(self) -> None:
        limit = self.settings.max_in_flight
        if limit and self.in_flight >= limit:
            self.shed += 1
            now = time.monotonic()
            if now - self._last_shed_log >= self._shed_log_interval_s:
                self._last_shed_log = now
                log.warning("overloaded: %d requests in flight (MAX_IN_FLIGHT); answering 503, %d shed so far",
                            self.in_flight, self.shed)
            raise Overloaded(f"this worker has {self.in_flight} requests in flight; try again shortly",
                             headers={"Retry-After": "1"})

    def authenticate(self, scope: Scope) -> str | None:
        """For /api/* and /events: the id of the caller's valid API key, None for a browser with its cookie."""
        keys = self.security.api_keys
        if not keys.enabled:
            return None
        presented = presented_key(scope["headers"])
        if presented is not None:
            kid = keys.identify(presented)
            if kid is None:
                raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
            scope["state"][API_KEY_STATE] = kid
            return kid
        if signed_cookie(scope["headers"], self.security) is not None:
            return None
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-Api-Key: <key>); browsers use "
                           "the session cookie the web pages set", headers={"WWW-Authenticate": "Bearer"})

    async def count(self, area: str, scope: Scope, kid: str | None) -> None:
        address = scope["client"][0] if scope.get("client") else "unknown"
        s = self.settings
        if area == ADMIN or (area == OPS and self._private_ops and
                             any(name == b"authorization" for name, _ in scope["headers"])):
            bucket, identity, limit, who = "admin", address, s.admin_rate_limit_per_min, "address on admin routes"
        elif area == OPS:
            return
        elif kid is not None:
            bucket, identity, limit, who = "key", kid, s.api_key_rate_limit_per_min, "API key"
        else:
            bucket, identity, limit, who = "ip", address, s.rate_limit_per_min, "address"
        if not limit or self.counters is None:
            return
        count, left = await self.counters.hit(bucket, identity, limit)
        if count > limit:
            self.limited += 1
            raise TooManyRequests(f"rate limit: {limit} requests per minute per {who}; retry after the window ends",
                                  headers={"Retry-After": str(max(1, math.ceil(left)))})


class Gate:
    """ASGI middleware: ``DefineMiddleware(Gate, guard=guard)``."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        area = area_of(scope["path"]) if scope["type"] == "http" else None
        if area is None:
            await self.app(scope, receive, send)
            return
        guard = self.guard
        if area != OPS:
            guard.check_load()
        guard.in_flight += 1
        try:
            kid = guard.authenticate(scope) if area == API else None
            await guard.count(area, scope, kid)
            await self.app(scope, receive, send)
        finally:
            guard.in_flight -= 1
