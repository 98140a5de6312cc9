"""Markers for what handlers get injected (the providers are registered in ``app.main``).

Why markers: Litestar 2.23+ warns that name-inferred dependencies stop working in 3.0, and it
validates an injected value against its annotation, which fails outright for a Protocol such
as ``SessionStore``. These are our own objects, so validating them per request only costs CPU.
"""
from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency
from litestar.params import SkipValidation

from app.engine import Engine
from app.events import EventSink
from app.metrics import ServiceMetrics
from app.sessions import SessionStore

EngineDep: TypeAlias = NamedDependency[SkipValidation[Engine]]
SessionsDep: TypeAlias = NamedDependency[SkipValidation[SessionStore]]
EventsDep: TypeAlias = NamedDependency[SkipValidation[EventSink]]
MetricsDep: TypeAlias = NamedDependency[SkipValidation[ServiceMetrics]]
