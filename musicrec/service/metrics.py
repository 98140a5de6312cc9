"""Prometheus metrics: per-route request latency, the service's own state, and process metrics.

Two modes, one set of names:

- One process (tests build many apps in one process; ``uvicorn`` run by hand): every metric
  lives in a per-app registry; the service's state (events, degraded dependencies, answer
  cache, model version) is read from the live objects at scrape time, and prometheus_client's
  process, platform and GC collectors are added.
- Several workers (``musicrec serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts):
  each worker has its own memory, so a per-worker registry would show whichever worker took
  the scrape. prometheus_client's multiprocess mode keeps every worker's values in files in
  that directory and ``/metrics`` sums them. The state and process figures cannot be read from
  another process at scrape time, so each worker copies its own into those files every
  ``refresh_s`` and just before it answers a scrape: counters by their increase, gauges as
  ``livesum``/``livemax`` (removed when a worker stops), process figures per ``pid``.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable, Iterable

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
    generate_latest, multiprocess, values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)
State = dict[str, Any]
COUNTERS = {  # state key → (name, help); exposed as <name>_total
    "produced": ("musicrec_events_produced", "events delivered to Kafka"),
    "dropped": ("musicrec_events_dropped", "events dropped because the local buffer was full"),
    "answer_hits": ("musicrec_answer_cache_hits", "session answers served from a worker's answer cache"),
    "answer_misses": ("musicrec_answer_cache_misses", "session answers computed (then kept)"),
    "sessions_evicted": ("musicrec_sessions_evicted", "listeners whose in-process session (memory://, or kept during "
                                                      "a Redis outage) was dropped because the store was full"),
    "session_events_evicted": ("musicrec_session_events_evicted", "session events lost with those listeners"),
    "shed": ("musicrec_requests_shed", "requests answered 503 because MAX_IN_FLIGHT were in flight in a worker"),
    "rate_limited": ("musicrec_requests_rate_limited", "requests answered 429 (over a rate limit)"),
}
GAUGES = {  # state key → (name, help, how workers combine)
    "buffered": ("musicrec_events_buffered", "events waiting in the local buffer", "livesum"),
    "redis_degraded": ("musicrec_redis_degraded", "1 while sessions are served from the in-process fallback", "livemax"),
    "kafka_degraded": ("musicrec_kafka_degraded", "1 while Kafka is configured but unreachable", "livemax"),
    "in_flight": ("musicrec_requests_in_flight", "requests being served now", "livesum"),
}
MODEL_INFO = ("musicrec_model_info", "the artefact version being served")


def multiprocess_enabled() -> bool:
    """True when prometheus_client was imported with PROMETHEUS_MULTIPROC_DIR set (its values go to files)."""
    return values.ValueClass is not values.MutexValue


class _StateCollector(Collector):
    """Reads live counters from the resources at scrape time (no double bookkeeping); one process only."""

    def __init__(self, read: Callable[[], State]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        s = self._read()
        for key, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(s[key]))
        for key, (name, doc, _) in GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=float(s[key]))
        info = GaugeMetricFamily(*MODEL_INFO, labels=["model_version", "demo"])
        info.add_metric([str(s["model_version"]), str(s["demo"]).lower()], 1.0)
        yield info


class _WorkerFigures:
    """Copies one worker's state and process figures into multiprocess metrics (see the module doc)."""

    def __init__(self, read: Callable[[], State]) -> None:
        self._read = read
        self._counters = {key: Counter(name, doc, registry=None) for key, (name, doc) in COUNTERS.items()}
        self._seen = dict.fromkeys(COUNTERS, 0.0)
        self._gauges = {key: Gauge(name, doc, registry=None, multiprocess_mode=mode)
                        for key, (name, doc, mode) in GAUGES.items()}
        self._info = Gauge(*MODEL_INFO, ["model_version", "demo"], registry=None, multiprocess_mode="livemax")
        self._info_labels: tuple[str, str] | None = None
        self._process = ProcessCollector(registry=None)
        self._process_gauges: dict[str, Gauge] = {}

    def refresh(self) -> None:
        s = self._read()
        for key, counter in self._counters.items():
            now = float(s[key])
            if now > self._seen[key]:
                counter.inc(now - self._seen[key])
            self._seen[key] = max(now, self._seen[key])
        for key, gauge in self._gauges.items():
            gauge.set(float(s[key]))
        labels = (str(s["model_version"]), str(s["demo"]).lower())
        if labels != self._info_labels:
            if self._info_labels is not None:
                self._info.labels(*self._info_labels).set(0.0)  # a swap: the old version is no longer served here
            self._info.labels(*labels).set(1.0)
            self._info_labels = labels
        for family in self._process.collect():
            for sample in family.samples:
                gauge = self._process_gauges.get(sample.name)
                if gauge is None:
                    gauge = self._process_gauges[sample.name] = Gauge(
                        sample.name, family.documentation + " (per worker)", registry=None, multiprocess_mode="liveall")
                gauge.set(sample.value)


class ServiceMetrics:
    def __init__(self, *, multiprocess_mode: bool | None = None) -> None:
        self.multiprocess = multiprocess_enabled() if multiprocess_mode is None else multiprocess_mode
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "musicrec_http_request_duration_seconds", "Time from a request's arrival at the app to its last body byte",
            ["method", "path", "status_code"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.recommendation_seconds = Histogram(
            "musicrec_recommendation_seconds", "CPU-side time to score one recommendation request",
            ["kind"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        # The hot routes observe these children directly: ``labels()`` per request costs a lock and a lookup.
        self.session_seconds = self.recommendation_seconds.labels("session")
        self.tracks_seconds = self.recommendation_seconds.labels("tracks")
        self._worker: _WorkerFigures | None = None
        if not self.multiprocess:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)

    def watch(self, read: Callable[[], State]) -> None:
        """Where the service's state is read from (the lifespan's resources)."""
        if self.multiprocess:
            self._worker = _WorkerFigures(read)
            self._worker.refresh()
        else:
            self.registry.register(_StateCollector(read))

    async def refresh_loop(self, every_s: float = 1.0) -> None:
        """Multiprocess mode: keep this worker's figures in the shared files at most ``every_s`` old."""
        while True:
            await asyncio.sleep(every_s)
            if self._worker is not None:
                self._worker.refresh()

    def close(self) -> None:
        """A stopping worker's live gauges leave the sums (its counters and histograms stay: they happened)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        if self._worker is not None:
            self._worker.refresh()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


UNMATCHED = "<unmatched>"
"""The path label of a request no route matched (a 404 or 405): raw paths would be an unbounded label set."""


class RequestMetrics:
    """ASGI middleware: one latency observation per HTTP request, by method, route template and status.

    It wraps the whole app (``app.asgi_handler``), not one route's stack, so requests that no route
    matches are counted too (as ``UNMATCHED``). A client that hangs up mid-body gets 499 from the
    app (``errors.ClientDisconnected``), so it is counted as 499, not as a server error.

    Why not Litestar's PrometheusMiddleware: per request it builds a Request, four label
    dicts and five labelled children (an in-progress gauge, a counter, an error counter and
    the histogram), several times the cost of this one (benchmarks/README.md). The histogram's
    ``_count`` is the request counter and its ``status_code`` label the error counter, so one
    observation, on a child looked up once per label set, says the same.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before starting a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            key = (scope["method"], scope.get("path_template") or UNMATCHED, status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.histogram.labels(*key)
            child.observe(time.perf_counter() - started)
