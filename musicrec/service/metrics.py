"""Prometheus metrics: per-route request latency and the service's own.

All of them live in a per-app registry (tests build many apps in one process), rendered
by /metrics.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class _StateCollector(Collector):
    """Reads live counters from the resources at scrape time (no double bookkeeping)."""

    def __init__(self, read: Callable[[], dict[str, float | str]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        s = self._read()
        yield CounterMetricFamily("musicrec_events_produced", "events delivered to Kafka", value=float(s["produced"]))
        yield CounterMetricFamily("musicrec_events_dropped", "events dropped because the local buffer was full",
                                  value=float(s["dropped"]))
        yield GaugeMetricFamily("musicrec_events_buffered", "events waiting in the local buffer", value=float(s["buffered"]))
        yield GaugeMetricFamily("musicrec_redis_degraded", "1 while sessions are served from the in-process fallback",
                                value=float(s["redis_degraded"]))
        yield GaugeMetricFamily("musicrec_kafka_degraded", "1 while Kafka is configured but unreachable",
                                value=float(s["kafka_degraded"]))
        yield CounterMetricFamily("musicrec_answer_cache_hits", "session answers served from this worker's answer cache",
                                  value=float(s["answer_hits"]))
        yield CounterMetricFamily("musicrec_answer_cache_misses", "session answers computed (then kept)",
                                  value=float(s["answer_misses"]))
        info = GaugeMetricFamily("musicrec_model_info", "the artefact version being served",
                                 labels=["model_version", "demo"])
        info.add_metric([str(s["model_version"]), str(s["demo"]).lower()], 1.0)
        yield info


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "musicrec_http_request_duration_seconds", "Time from a request's arrival at the app to its last body byte",
            ["method", "path", "status_code"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.recommendation_seconds = Histogram(
            "musicrec_recommendation_seconds", "CPU-side time to score one recommendation request",
            ["kind"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def watch(self, read: Callable[[], dict[str, float | str]]) -> None:
        self.registry.register(_StateCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: one latency observation per HTTP request, by method, route template and status.

    Why not Litestar's PrometheusMiddleware: per request it builds a Request, four label
    dicts and five labelled children (an in-progress gauge, a counter, an error counter and
    the histogram), about 0.1 ms of CPU, a tenth of a whole recommendation (benchmarks/README.md).
    The histogram's ``_count`` is the request counter and its ``status_code`` label the error
    counter, so one observation, on a child looked up once per label set, says the same.
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
            key = (scope["method"], scope.get("path_template", scope["path"]), status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.histogram.labels(*key)
            child.observe(time.perf_counter() - started)
