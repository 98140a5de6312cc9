"""Prometheus metrics: Litestar's per-route request histograms plus the service's own.

The service's metrics live in a per-app registry (tests build many apps in one
process); /metrics renders the global registry (request metrics) followed by it.
"""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
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
        info = GaugeMetricFamily("musicrec_model_info", "the artefact version being served",
                                 labels=["model_version", "demo"])
        info.add_metric([str(s["model_version"]), str(s["demo"]).lower()], 1.0)
        yield info


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.recommendation_seconds = Histogram(
            "musicrec_recommendation_seconds", "CPU-side time to score one recommendation request",
            ["kind"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def watch(self, read: Callable[[], dict[str, float | str]]) -> None:
        self.registry.register(_StateCollector(read))

    def render(self) -> bytes:
        return generate_latest(REGISTRY) + generate_latest(self.registry)
