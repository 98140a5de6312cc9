"""Markers for what handlers get injected (the providers are registered in ``musicrec.service.main``).

Why markers: Litestar 2.23+ warns that name-inferred dependencies stop working in 3.0, and it
validates an injected value against its annotation, which fails outright for a Protocol such
as ``SessionStore``. These are our own objects, so validating them per request only costs CPU.
"""
from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency
from litestar.params import SkipValidation

from musicrec.index.engine import Engine
from musicrec.service.events import EventSink
from musicrec.service.metrics import ServiceMetrics
from musicrec.service.sessions import SessionStore

EngineDep: TypeAlias = NamedDependency[SkipValidation[Engine]]
SessionsDep: TypeAlias = NamedDependency[SkipValidation[SessionStore]]
EventsDep: TypeAlias = NamedDependency[SkipValidation[EventSink]]
MetricsDep: TypeAlias = NamedDependency[SkipValidation[ServiceMetrics]]
